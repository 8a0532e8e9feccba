//! The native backend behind the engine: edgelora's own transformer (`crate::model`)
//! on CPU or wgpu, with the adapters applied on the fly. Tokenization, detokenization and
//! end-of-generation tokens come from edgelora's own tokenizer ([`Tokenizer`], read from
//! the GGUF's vocabulary), chat prompts are rendered from the model's Jinja chat template
//! (`tokenizer::ChatTemplate`, as the llama.cpp backend renders them); sampling and stop
//! strings are the engine's own. No llama.cpp
//! model or context is created: a vocabulary the tokenizer does not implement is refused
//! at load ([`EngineError::UnsupportedVocab`]) and runs on the llama.cpp backend instead.
//!
//! Prompts mean what they mean on the llama.cpp backend (`Runtime::tokenize`): text is
//! tokenized with BOS/EOS as the vocabulary asks and special tokens written in it parsed;
//! chat messages are rendered with the model's `tokenizer.chat_template` (Jinja, as
//! Hugging Face transformers renders it), then tokenized the same way; a model without a
//! chat template refuses chat prompts ([`EngineError::NoChatTemplate`]); token prompts
//! are taken as they are. Both backends give the same tokens for the same request.
//!
//! Like the llama.cpp backend, the KV cache is reused only for the same adapter set (the
//! same loads: a name reloaded from another file is another adapter) and only for the
//! common token prefix. A request resolves its adapter set once, when it starts: an
//! adapter unloaded meanwhile stays alive (shared) until the request ends.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use super::request::{prompt_tokens, render_chat, CancelFlag, ChatMessage, GenerateRequest, Generation, Prompt};
use super::decode::{decode_loop, Vocab};
use super::sampler::Sampler;
use crate::adapter::{self, LoraAdapter};
use crate::compute::{self, Device};
use crate::error::{EngineError, Error, Result};
use crate::gguf::GgufFile;
use crate::model::{NativeModel, Session};
use crate::tokenizer::{ChatTemplate, Tokenizer, TokenizerError};

/// A loaded adapter: unique load id (for the cache key) and the shared factors.
struct Loaded {
    id: u64,
    adapter: Arc<LoraAdapter>,
}

/// A request's adapters, resolved from their names when it starts.
pub(super) type ActiveSet = Vec<(Arc<LoraAdapter>, f32)>;

struct Cache {
    /// (load id, scale bits), sorted.
    key: Vec<(u64, u32)>,
    tokens: Vec<i32>,
    session: Session,
}

/// A model on the native engine with named adapters.
pub struct NativeRuntime {
    tokenizer: Tokenizer,
    chat: Option<ChatTemplate>,
    pub(super) model: NativeModel,
    adapters: Mutex<(BTreeMap<String, Loaded>, u64)>,
    cache: Mutex<Cache>,
}

impl NativeRuntime {
    /// Opens `path` for the native engine on `device` (the GPU fails with an error when no
    /// adapter exists, or when a weight's format has no device kernel). The model is
    /// checked as `Runtime::load` checks it; its vocabulary is read by edgelora's
    /// tokenizer, and one of a type or pre-tokenizer the tokenizer does not implement is
    /// [`EngineError::UnsupportedVocab`] (the llama.cpp backend reads those llama.cpp knows). `threads` is
    /// unused (the CPU kernels run on rayon's global pool).
    pub fn load(path: impl AsRef<Path>, device: Device, threads: usize) -> Result<NativeRuntime> {
        let _ = threads;
        let path = path.as_ref();
        let gguf = GgufFile::open(path)?;
        if gguf.get("general.type").and_then(|v| v.as_str()) == Some("adapter") {
            return Err(EngineError::ModelLoad { path: path.into(), reason: "this is a LoRA adapter, not a model (pass it with --adapter)".into() }.into());
        }
        crate::model::validate::check_model(&gguf)?;
        let tokenizer = Tokenizer::from_gguf(&gguf).map_err(|e| vocab_error(path, e))?;
        let model = match device {
            Device::Cpu => NativeModel::new(gguf, Box::new(compute::cpu::Cpu))?,
            // The whole forward on the device (weights, KV cache and adapters there).
            Device::Gpu => NativeModel::on_gpu(gguf, compute::gpu::Gpu::new().map_err(|e| EngineError::Backend(e.to_string()))?)?,
        };
        if tokenizer.n_vocab() != model.config.n_vocab {
            let reason = format!("the vocabulary has {} tokens but the model's embedding has {} rows", tokenizer.n_vocab(), model.config.n_vocab);
            return Err(EngineError::ModelLoad { path: path.into(), reason }.into());
        }
        Ok(NativeRuntime { chat: tokenizer.chat(), tokenizer, model, adapters: Mutex::new((BTreeMap::new(), 0)), cache: Mutex::new(Cache { key: Vec::new(), tokens: Vec::new(), session: Session::default() }) })
    }

    pub fn backend_name(&self) -> String {
        self.model.backend_name()
    }

    /// The model under it (for batched forwards: [`NativeModel::forward_batch`]).
    pub fn model(&self) -> &NativeModel {
        &self.model
    }

    /// Which factor copies decoding on the host reads ([`crate::model::DecodeFactors`]);
    /// `Int8` is refused on the GPU.
    pub fn set_decode_factors(&mut self, d: crate::model::DecodeFactors) -> Result<()> {
        self.model.set_decode_factors(d)
    }

    pub fn n_vocab(&self) -> usize {
        self.model.config.n_vocab
    }

    /// The model's hyper-parameters (from its GGUF).
    pub fn model_config(&self) -> &crate::model::config::ModelConfig {
        &self.model.config
    }

    /// The model's vocabulary (edgelora's tokenizer).
    pub fn tokenizer(&self) -> &Tokenizer {
        &self.tokenizer
    }

    /// Renders chat messages with the model's chat template (assistant turn opened), as
    /// `Runtime::render_chat` does.
    pub fn render_chat(&self, messages: &[ChatMessage]) -> Result<String> {
        self.render_chat_with(messages, true)
    }

    /// Renders chat messages; `add_assistant` opens the assistant's turn at the end. The
    /// template is `tokenizer.chat_template` (Jinja); without one,
    /// [`EngineError::NoChatTemplate`].
    pub fn render_chat_with(&self, messages: &[ChatMessage], add_assistant: bool) -> Result<String> {
        render_chat(self.chat.as_ref(), messages, add_assistant)
    }

    /// Tokens of `text` (special tokens in it parsed as such); `add_special` adds the
    /// model's BOS where it uses one. May be empty.
    pub fn tokenize_text(&self, text: &str, add_special: bool) -> Result<Vec<i32>> {
        self.tokenizer.encode(text, add_special, true).map_err(|e| EngineError::Tokenize(e.to_string()).into())
    }

    /// The tokens a prompt turns into, as `Runtime::tokenize`: not empty, every one in
    /// the vocabulary.
    pub fn tokenize(&self, prompt: &Prompt) -> Result<Vec<i32>> {
        prompt_tokens(prompt, self.n_vocab(), &|t| self.tokenize_text(t, true), &|m| self.render_chat(m))
    }

    /// Whether `token` ends generation (EOS, EOT, …).
    pub fn is_eog(&self, token: i32) -> bool {
        self.tokenizer.is_eog(token)
    }

    /// The end-of-generation token the model ends a turn with, if it has one.
    pub fn eos_token(&self) -> Option<i32> {
        self.tokenizer.eos()
    }

    /// The bytes of one generated token (special tokens not rendered).
    pub fn token_piece(&self, token: i32) -> Vec<u8> {
        self.tokenizer.token_bytes(token, false).to_vec()
    }

    /// The text of `tokens` (special tokens rendered).
    pub fn detokenize(&self, tokens: &[i32]) -> String {
        self.tokenizer.decode(tokens)
    }

    /// Reads and validates an adapter (GGUF-LoRA or PEFT) and keeps it under `name`.
    pub fn load_adapter(&self, name: &str, path: impl AsRef<Path>) -> Result<()> {
        self.load_adapter_with(name, path, adapter::ReadOptions::default()).map(|_| ())
    }

    /// [`load_adapter`](Self::load_adapter) with options; returns a lenient read's warnings.
    pub fn load_adapter_with(&self, name: &str, path: impl AsRef<Path>, options: adapter::ReadOptions) -> Result<Vec<String>> {
        let (a, warnings) = adapter::load_with(path.as_ref(), self.model.gguf(), options)?;
        let mut guard = self.adapters.lock().unwrap_or_else(|e| e.into_inner());
        let (map, next_id) = &mut *guard;
        if map.contains_key(name) {
            return Err(EngineError::DuplicateAdapter { name: name.into() }.into());
        }
        *next_id += 1;
        map.insert(name.into(), Loaded { id: *next_id, adapter: Arc::new(a) });
        Ok(warnings)
    }

    /// Unloads `name`; a request already running with it finishes with it.
    pub fn unload_adapter(&self, name: &str) -> Result<()> {
        let mut guard = self.adapters.lock().unwrap_or_else(|e| e.into_inner());
        let map = &mut guard.0;
        map.remove(name).map(|_| ()).ok_or_else(|| unknown(map, name))
    }

    pub fn adapter_names(&self) -> Vec<String> {
        self.adapters.lock().unwrap_or_else(|e| e.into_inner()).0.keys().cloned().collect()
    }

    /// Drops the KV cache.
    pub fn clear_cache(&self) {
        let mut cache = self.cache.lock().unwrap_or_else(|e| e.into_inner());
        cache.tokens.clear();
        cache.session = Session::default();
    }

    /// The named adapters with their scales, and the set's cache key.
    pub(super) fn resolve(&self, set: &[(String, f32)]) -> Result<(ActiveSet, Vec<(u64, u32)>)> {
        let guard = self.adapters.lock().unwrap_or_else(|e| e.into_inner());
        let map = &guard.0;
        let mut active = Vec::with_capacity(set.len());
        let mut key = Vec::with_capacity(set.len());
        for (name, scale) in set {
            if !scale.is_finite() {
                return Err(EngineError::BadScale { name: name.clone(), scale: *scale }.into());
            }
            let l = map.get(name).ok_or_else(|| unknown(map, name))?;
            active.push((Arc::clone(&l.adapter), *scale));
            key.push((l.id, scale.to_bits()));
        }
        key.sort();
        Ok((active, key))
    }

    fn eval(&self, tokens: &[i32], set: &(ActiveSet, Vec<(u64, u32)>), all: bool, cancel: Option<&CancelFlag>) -> Result<Option<Vec<Vec<f32>>>> {
        let (held, key) = set;
        let active: Vec<(&LoraAdapter, f32)> = held.iter().map(|(a, s)| (a.as_ref(), *s)).collect();
        let key = key.clone();
        let mut cache = self.cache.lock().unwrap_or_else(|e| e.into_inner());
        // Reuse the cached prefix only under the same adapter set (and never for `all`,
        // which needs every position's logits).
        let keep = if cache.key == key && !all { cache.tokens.iter().zip(tokens).take_while(|(a, b)| a == b).count().min(tokens.len() - 1) } else { 0 };
        if keep < cache.tokens.len() {
            if keep == 0 {
                cache.session = Session::default();
            } else {
                cache.session.truncate(keep);
            }
            cache.tokens.truncate(keep);
        }
        cache.key = key;
        if cancel.is_some_and(CancelFlag::is_cancelled) {
            return Ok(None);
        }
        let out = self.model.forward(&mut cache.session, &tokens[keep..], &active, all);
        match out {
            Ok(v) => {
                cache.tokens.extend_from_slice(&tokens[keep..]);
                Ok(Some(v))
            }
            Err(e) => {
                cache.tokens.clear();
                cache.session = Session::default();
                Err(e)
            }
        }
    }

    pub fn logits(&self, tokens: &[i32], set: &[(String, f32)]) -> Result<Vec<f32>> {
        Ok(self.eval(tokens, &self.resolve(set)?, false, None)?.expect("not cancelled").pop().expect("one row"))
    }

    pub fn logits_all(&self, tokens: &[i32], set: &[(String, f32)]) -> Result<Vec<Vec<f32>>> {
        Ok(self.eval(tokens, &self.resolve(set)?, true, None)?.expect("not cancelled"))
    }

    /// As `Runtime::generate`, on the native engine.
    pub fn generate(&self, req: &GenerateRequest, on_text: &mut dyn FnMut(&str) -> bool) -> Result<Generation> {
        let mut tokens = self.tokenize(&req.prompt)?;
        let mut sampler = Sampler::new(req.sampling.clone())?;
        sampler.observe(&tokens);
        let set = self.resolve(&req.adapters)?;
        let t0 = Instant::now();
        let mut gen = Generation::started(tokens.len(), 0);
        let Some(mut logits) = self.eval(&tokens, &set, false, req.cancel.as_ref())? else { return Ok(gen) };
        gen.prompt_secs = t0.elapsed().as_secs_f64();
        let t1 = Instant::now();
        let vocab = Vocab { is_eog: &|t| self.is_eog(t), piece: &|t| self.token_piece(t) };
        let first = logits.pop().expect("one row");
        decode_loop(req, &mut sampler, first, &mut gen, vocab, on_text, &mut |token| {
            tokens.push(token);
            Ok(self.eval(&tokens, &set, false, None)?.expect("not cancelled").pop())
        })?;
        gen.gen_secs = t1.elapsed().as_secs_f64();
        Ok(gen)
    }
}

/// A vocabulary the tokenizer refuses: a type or pre-tokenizer it does not implement is
/// [`EngineError::UnsupportedVocab`] (saying whether llama.cpp knows it); a malformed one
/// is the tokenizer's own error (naming the key).
pub(super) fn vocab_error(path: &Path, e: TokenizerError) -> Error {
    match &e {
        TokenizerError::UnsupportedModel { reason, .. } | TokenizerError::UnsupportedPreTokenizer { reason, .. } => {
            // The tokenizer's two reasons: "llama.cpp knows this … but edgelora's tokenizer
            // does not implement it" and "unknown …".
            let llama_cpp_knows = reason.starts_with("llama.cpp knows");
            EngineError::UnsupportedVocab { path: path.into(), llama_cpp_knows, cause: e }.into()
        }
        _ => e.into(),
    }
}

fn unknown(map: &BTreeMap<String, Loaded>, name: &str) -> Error {
    let loaded: Vec<&str> = map.keys().map(String::as_str).collect();
    EngineError::UnknownAdapter { name: name.into(), loaded: if loaded.is_empty() { "none".into() } else { loaded.join(", ") } }.into()
}
