//! The runtime every front end uses: load a model once, load and unload named adapters
//! at any time, and run requests that each name their own adapter set with scales.
//!
//! Generation runs on llama.cpp (`llama_cpp`); sampling and detokenization are ours
//! (`sampler`, `text`) so that every backend behaves alike.

pub mod llama_cpp;
mod registry;
mod runtime;
pub mod sampler;
pub mod text;

pub use registry::AdapterInfo;
pub use runtime::{
    parse_adapter_arg, CancelFlag, ChatMessage, GenerateRequest, Generation, Prompt, Runtime, RuntimeOptions, StopReason,
};
pub use sampler::{argmax, top_k, SamplingParams};
