//! # edgelora
//!
//! An edge runtime for quantized LLMs with LoRA adapters. It memory-maps a quantized GGUF
//! base model, loads GGUF-LoRA adapters by name at any time, and runs requests that each
//! name their own adapter set with scales (several at once), on its native engine (CPU or
//! wgpu) or, in builds with the `llama` feature (the default), on llama.cpp
//! (`engine::Runtime`, the same calls).
//!
//! ```no_run
//! use edgelora::compute::Device;
//! use edgelora::engine::{GenerateRequest, NativeRuntime, Prompt};
//! let rt = NativeRuntime::load("models/SmolLM2-135M-Instruct.Q4_1.gguf", Device::Cpu, 2)?;
//! rt.load_adapter("finance", "finance.gguf")?;
//! let mut req = GenerateRequest::new(Prompt::Text("The capital of France is".into()));
//! req.adapters = vec![("finance".into(), 0.7)];
//! let out = rt.generate(&req, &mut |piece| { print!("{piece}"); true })?;
//! println!("\n{} tokens", out.tokens.len());
//! # Ok::<(), edgelora::Error>(())
//! ```
//!
//! The library never panics on input: every failure is an [`Error`] naming the file,
//! field or tensor at fault.

pub mod adapter;
pub mod compute;
pub mod convert;
pub mod engine;
pub mod error;
pub mod ffi;
mod fsutil;
pub mod gguf;
pub mod merge;
pub mod model;
pub mod quant;
#[cfg(feature = "serve")]
pub mod serve;
pub mod tokenizer;
pub mod train;

pub use engine::{GenerateRequest, Prompt, RuntimeOptions};
#[cfg(feature = "llama")]
pub use engine::Runtime;
pub use error::{AdapterError, EngineError, Error, GgufError, Result, ServeError, TrainError};
