//! The runtime every front end uses: load a model once, load and unload named adapters
//! at any time, and run requests that each name their own adapter set with scales.
//!
//! Two backends sit behind the [`Engine`] trait: llama.cpp (`Runtime`, `llama_cpp`; only
//! in builds with the `llama` feature, the default) and the native engine
//! ([`NativeRuntime`], `crate::model` on CPU or wgpu, tokenized by `crate::tokenizer`
//! with no llama.cpp in it). Sampling and detokenization are ours (`sampler`, `text`) and
//! chat prompts are rendered alike (the model's Jinja template, `request::render_chat`),
//! so that every backend behaves alike.

pub mod batch;
mod decode;
#[cfg(feature = "llama")]
pub mod llama_cpp;
mod native;
#[cfg(feature = "llama")]
mod registry;
mod request;
#[cfg(feature = "llama")]
mod runtime;
pub mod sampler;
pub mod text;
mod vocabulary;

pub use batch::{BatchOptions, BatchSink, BatchStats, Batcher, FnSink};
pub use native::NativeRuntime;
#[cfg(feature = "llama")]
pub use registry::AdapterInfo;
pub use request::{parse_adapter_arg, CancelFlag, ChatMessage, GenerateRequest, Generation, Prompt, RuntimeOptions, StopReason};
#[cfg(feature = "llama")]
pub use runtime::Runtime;
pub use vocabulary::Vocabulary;
pub use sampler::{argmax, top_k, SamplingParams};

use std::path::Path;

use crate::error::Result;

/// The engine an SDK handle (C ABI, JNI) runs on: llama.cpp in builds with the `llama`
/// feature (the default), the native engine on the CPU in builds without it; `options`
/// gives both their thread count, llama.cpp also its context sizes.
pub fn load_sdk_engine(path: &Path, options: RuntimeOptions) -> Result<Box<dyn Engine>> {
    #[cfg(feature = "llama")]
    {
        Ok(Box::new(Runtime::load(path, options)?))
    }
    #[cfg(not(feature = "llama"))]
    {
        Ok(Box::new(NativeRuntime::load(path, crate::compute::Device::Cpu, options.threads)?))
    }
}

/// What every generation backend offers: the llama.cpp one ([`Runtime`]) and the native
/// engine ([`NativeRuntime`]). Front ends hold a `Box<dyn Engine>` and pick with
/// `--backend`.
pub trait Engine: Send + Sync {
    /// "llama.cpp" or "native (<compute backend>)".
    fn backend_name(&self) -> String;
    fn n_vocab(&self) -> usize;
    fn tokenize(&self, prompt: &Prompt) -> Result<Vec<i32>>;
    /// Raw text (no chat template); `add_special` adds the model's BOS where it uses one.
    fn tokenize_text(&self, text: &str, add_special: bool) -> Result<Vec<i32>>;
    fn detokenize(&self, tokens: &[i32]) -> String;
    /// A GGUF-LoRA file or a PEFT folder, validated against the model; returns what a
    /// lenient read let through.
    fn load_adapter(&self, name: &str, path: &Path, options: crate::adapter::ReadOptions) -> Result<Vec<String>>;
    fn unload_adapter(&self, name: &str) -> Result<()>;
    fn adapter_names(&self) -> Vec<String>;
    fn logits(&self, tokens: &[i32], adapters: &[(String, f32)]) -> Result<Vec<f32>>;
    fn logits_all(&self, tokens: &[i32], adapters: &[(String, f32)]) -> Result<Vec<Vec<f32>>>;
    fn generate(&self, req: &GenerateRequest, on_text: &mut dyn FnMut(&str) -> bool) -> Result<Generation>;
    /// Drops the KV cache (the next request computes its whole prompt).
    fn clear_cache(&self);
}

#[cfg(feature = "llama")]
impl Engine for Runtime {
    fn backend_name(&self) -> String {
        "llama.cpp".into()
    }
    fn n_vocab(&self) -> usize {
        Runtime::n_vocab(self)
    }
    fn tokenize(&self, prompt: &Prompt) -> Result<Vec<i32>> {
        Runtime::tokenize(self, prompt)
    }
    fn tokenize_text(&self, text: &str, add_special: bool) -> Result<Vec<i32>> {
        Runtime::tokenize_text(self, text, add_special)
    }
    fn detokenize(&self, tokens: &[i32]) -> String {
        Runtime::detokenize(self, tokens)
    }
    fn load_adapter(&self, name: &str, path: &Path, options: crate::adapter::ReadOptions) -> Result<Vec<String>> {
        Runtime::load_adapter_with(self, name, path, options).map(|i| i.warnings)
    }
    fn unload_adapter(&self, name: &str) -> Result<()> {
        Runtime::unload_adapter(self, name)
    }
    fn adapter_names(&self) -> Vec<String> {
        self.adapters().into_iter().map(|a| a.name).collect()
    }
    fn logits(&self, tokens: &[i32], adapters: &[(String, f32)]) -> Result<Vec<f32>> {
        Runtime::logits(self, tokens, adapters)
    }
    fn logits_all(&self, tokens: &[i32], adapters: &[(String, f32)]) -> Result<Vec<Vec<f32>>> {
        Runtime::logits_all(self, tokens, adapters)
    }
    fn generate(&self, req: &GenerateRequest, on_text: &mut dyn FnMut(&str) -> bool) -> Result<Generation> {
        Runtime::generate(self, req, on_text)
    }
    fn clear_cache(&self) {
        Runtime::clear_cache(self)
    }
}

impl Engine for NativeRuntime {
    fn backend_name(&self) -> String {
        format!("native ({})", NativeRuntime::backend_name(self))
    }
    fn n_vocab(&self) -> usize {
        NativeRuntime::n_vocab(self)
    }
    fn tokenize(&self, prompt: &Prompt) -> Result<Vec<i32>> {
        NativeRuntime::tokenize(self, prompt)
    }
    fn tokenize_text(&self, text: &str, add_special: bool) -> Result<Vec<i32>> {
        NativeRuntime::tokenize_text(self, text, add_special)
    }
    fn detokenize(&self, tokens: &[i32]) -> String {
        NativeRuntime::detokenize(self, tokens)
    }
    fn load_adapter(&self, name: &str, path: &Path, options: crate::adapter::ReadOptions) -> Result<Vec<String>> {
        NativeRuntime::load_adapter_with(self, name, path, options)
    }
    fn unload_adapter(&self, name: &str) -> Result<()> {
        NativeRuntime::unload_adapter(self, name)
    }
    fn adapter_names(&self) -> Vec<String> {
        NativeRuntime::adapter_names(self)
    }
    fn logits(&self, tokens: &[i32], adapters: &[(String, f32)]) -> Result<Vec<f32>> {
        NativeRuntime::logits(self, tokens, adapters)
    }
    fn logits_all(&self, tokens: &[i32], adapters: &[(String, f32)]) -> Result<Vec<Vec<f32>>> {
        NativeRuntime::logits_all(self, tokens, adapters)
    }
    fn generate(&self, req: &GenerateRequest, on_text: &mut dyn FnMut(&str) -> bool) -> Result<Generation> {
        NativeRuntime::generate(self, req, on_text)
    }
    fn clear_cache(&self) {
        NativeRuntime::clear_cache(self)
    }
}
