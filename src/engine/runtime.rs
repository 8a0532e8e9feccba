//! `Runtime`: one model, named adapters, per-request adapter sets.
//!
//! All llama.cpp calls that touch the context or the model's adapter list run under one
//! mutex, so a `Runtime` can be shared between threads (requests are serialized).
//!
//! The prompt cache (the KV cache kept between requests) is reused only when the next
//! request has exactly the same adapter set — same adapters, same scales, same order —
//! and only for the common token prefix. Any other request starts from an empty cache:
//! keys and values computed under one adapter set are never attended to under another
//! (llama.cpp's server reuses them across adapter sets, its issue #26207).

use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};
use std::time::Instant;

use super::llama_cpp::{Context, Model, Token};
use super::registry::{AdapterInfo, AdapterRegistry};
use super::decode::{decode_loop, Vocab};
use super::request::{prompt_tokens, render_chat, CancelFlag, ChatMessage, GenerateRequest, Generation, Prompt, RuntimeOptions};
use super::sampler::Sampler;
use crate::error::{EngineError, Result};
use crate::tokenizer::ChatTemplate;
use crate::gguf::GgufFile;

struct Inner {
    ctx: Context,
    registry: AdapterRegistry,
    /// Adapter set active in the context: (adapter id, scale bits) in request order.
    active: Vec<(u64, u32)>,
    /// Tokens whose keys/values are in the context's memory, computed under `active`.
    cached: Vec<Token>,
}

/// A loaded model with its adapters. See the module docs.
pub struct Runtime {
    // Field order is drop order: the context and adapters go before the model.
    inner: Mutex<Inner>,
    model: Model,
    gguf: GgufFile,
    path: PathBuf,
    options: RuntimeOptions,
    /// `tokenizer.chat_template` with the BOS/EOS texts, rendered by our Jinja renderer as
    /// on the native backend (not llama.cpp's built-in formats).
    chat: Option<ChatTemplate>,
}

impl Runtime {
    /// Maps `model` (a GGUF file) and creates a context.
    pub fn load(model: impl AsRef<Path>, options: RuntimeOptions) -> Result<Runtime> {
        let path = model.as_ref().to_path_buf();
        if options.threads == 0 || options.n_ctx == 0 || options.n_batch == 0 {
            return Err(EngineError::BadOption("threads, n_ctx and n_batch must be at least 1".into()).into());
        }
        let gguf = GgufFile::open(&path)?;
        if gguf.get("general.type").and_then(|v| v.as_str()) == Some("adapter") {
            return Err(EngineError::ModelLoad { path, reason: "this is a LoRA adapter, not a model (pass it with --adapter)".into() }.into());
        }
        // Nothing reaches llama.cpp before its hyper-parameters and tensors are checked.
        crate::model::validate::check_model(&gguf)?;
        let model = Model::load(&path, options.use_mmap)?;
        let ctx = model.new_context(options.n_ctx, options.n_batch.min(options.n_ctx), options.threads as i32, options.f32_kv_cache, options.flash_attention)?;
        let inner = Inner { ctx, registry: AdapterRegistry::default(), active: Vec::new(), cached: Vec::new() };
        let text = |t: Option<Token>| t.map(|t| String::from_utf8_lossy(&model.token_bytes(t, true)).into_owned()).unwrap_or_default();
        let chat = gguf.get("tokenizer.chat_template").and_then(|v| v.as_str()).map(|t| ChatTemplate::new(t, text(model.bos_token()), text(model.eos_token())));
        Ok(Runtime { inner: Mutex::new(inner), model, gguf, path, options, chat })
    }

    pub fn model_path(&self) -> &Path {
        &self.path
    }
    /// The model's GGUF header (metadata, tensor infos), memory-mapped.
    pub fn gguf(&self) -> &GgufFile {
        &self.gguf
    }
    pub fn options(&self) -> &RuntimeOptions {
        &self.options
    }
    pub fn n_vocab(&self) -> usize {
        self.model.n_vocab()
    }
    pub fn n_ctx(&self) -> usize {
        self.lock().ctx.n_ctx()
    }
    /// llama.cpp's one-line description (architecture, size, type).
    pub fn description(&self) -> String {
        self.model.description()
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic while holding the lock cannot leave llama.cpp state half-changed in a
        // way later calls would misread: the cache is reset on the next request anyway.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Validates and loads an adapter — a GGUF-LoRA file or a PEFT folder (converted in
    /// memory) — under `name`; the model is not reloaded.
    pub fn load_adapter(&self, name: &str, path: impl AsRef<Path>) -> Result<AdapterInfo> {
        self.load_adapter_with(name, path, crate::adapter::ReadOptions::default())
    }

    /// [`load_adapter`](Self::load_adapter) with options (e.g. lenient PEFT targets,
    /// whose warnings come back in [`AdapterInfo::warnings`]).
    pub fn load_adapter_with(&self, name: &str, path: impl AsRef<Path>, options: crate::adapter::ReadOptions) -> Result<AdapterInfo> {
        let mut inner = self.lock();
        inner.registry.load(&self.model, &self.gguf, name, path.as_ref(), options)
    }

    /// Validates an adapter held in memory (e.g. just composed or trained) and loads it
    /// under `name`; nothing is written to disk.
    pub fn load_adapter_in_memory(&self, name: &str, adapter: &crate::adapter::LoraAdapter) -> Result<AdapterInfo> {
        let mut inner = self.lock();
        inner.registry.load_in_memory(&self.model, &self.gguf, name, adapter)
    }

    /// Unloads an adapter; if the context was using it, the context is reset first.
    pub fn unload_adapter(&self, name: &str) -> Result<()> {
        let mut inner = self.lock();
        let id = inner.registry.get(name)?.id;
        if inner.active.iter().any(|(a, _)| *a == id) {
            inner.ctx.set_adapters(&[])?;
            inner.active.clear();
            inner.ctx.clear_memory();
            inner.cached.clear();
        }
        drop(inner.registry.remove(name)?);
        Ok(())
    }

    /// Loaded adapters, by name.
    pub fn adapters(&self) -> Vec<AdapterInfo> {
        self.lock().registry.infos()
    }

    /// Renders chat messages with the model's own template (assistant turn opened).
    pub fn render_chat(&self, messages: &[ChatMessage]) -> Result<String> {
        self.render_chat_with(messages, true)
    }

    /// Renders chat messages with the model's Jinja template (`tokenizer.chat_template`);
    /// `add_assistant` opens the assistant's turn at the end.
    pub fn render_chat_with(&self, messages: &[ChatMessage], add_assistant: bool) -> Result<String> {
        render_chat(self.chat.as_ref(), messages, add_assistant)
    }

    /// Tokens of `text` (special tokens in it parsed as such); `add_special` adds the
    /// model's BOS where it uses one. May be empty.
    pub fn tokenize_text(&self, text: &str, add_special: bool) -> Result<Vec<i32>> {
        Ok(self.model.tokenize(text, add_special, true)?)
    }

    /// The end-of-generation token the model ends a turn with, if it has one.
    pub fn eos_token(&self) -> Option<i32> {
        self.model.eos_token()
    }

    /// The tokens a prompt turns into.
    pub fn tokenize(&self, prompt: &Prompt) -> Result<Vec<i32>> {
        prompt_tokens(prompt, self.n_vocab(), &|t| Ok(self.model.tokenize(t, true, true)?), &|m| self.render_chat(m))
    }

    /// Whether `token` ends generation (EOS, EOT, …).
    pub fn is_eog(&self, token: i32) -> bool {
        self.model.is_eog(token)
    }

    /// The bytes of one generated token (special tokens not rendered).
    pub fn token_piece(&self, token: i32) -> Vec<u8> {
        self.model.token_bytes(token, false)
    }

    /// The text of `tokens` (special tokens rendered).
    pub fn detokenize(&self, tokens: &[i32]) -> String {
        let bytes: Vec<u8> = tokens.iter().flat_map(|&t| self.model.token_bytes(t, true)).collect();
        String::from_utf8_lossy(&bytes).into_owned()
    }

    /// Last-position logits of `tokens` under `adapters`.
    pub fn logits(&self, tokens: &[i32], adapters: &[(String, f32)]) -> Result<Vec<f32>> {
        let mut all = self.eval(tokens, adapters, false)?;
        Ok(all.pop().expect("decode returns the last logits"))
    }

    /// Logits at every position of `tokens` (teacher forcing), computed from an empty cache.
    pub fn logits_all(&self, tokens: &[i32], adapters: &[(String, f32)]) -> Result<Vec<Vec<f32>>> {
        self.eval(tokens, adapters, true)
    }

    fn eval(&self, tokens: &[i32], adapters: &[(String, f32)], all: bool) -> Result<Vec<Vec<f32>>> {
        let tokens = self.tokenize(&Prompt::Tokens(tokens.to_vec()))?;
        let mut inner = self.lock();
        self.select_adapters(&mut inner, adapters)?;
        let start = if all { self.reset_cache(&mut inner) } else { self.reuse_prefix(&mut inner, &tokens) };
        let out = inner.ctx.decode(&tokens[start..], start, all, &|| false);
        self.finish_decode(&mut inner, &tokens, start, out).map(|o| o.expect("never cancelled"))
    }

    /// Makes `adapters` the context's active set; a different set drops the cache.
    ///
    /// Sets are compared as sets: the order a request lists its adapters in does not
    /// matter (llama.cpp keeps the active adapters in a hash map and sums their deltas
    /// in its own order either way).
    fn select_adapters(&self, inner: &mut Inner, adapters: &[(String, f32)]) -> Result<()> {
        let mut key = Vec::with_capacity(adapters.len());
        for (i, (name, scale)) in adapters.iter().enumerate() {
            if !scale.is_finite() {
                return Err(EngineError::BadScale { name: name.clone(), scale: *scale }.into());
            }
            if adapters[..i].iter().any(|(n, _)| n == name) {
                return Err(EngineError::BadOption(format!("adapter {name:?} is named twice in one request")).into());
            }
            key.push((inner.registry.get(name)?.id, scale.to_bits(), i));
        }
        key.sort_unstable();
        let ids: Vec<(u64, u32)> = key.iter().map(|&(id, bits, _)| (id, bits)).collect();
        if ids != inner.active {
            // Forget the cache first: whatever happens below, nothing computed under the
            // previous set can be reused.
            inner.cached.clear();
            inner.active.clear();
            let Inner { ctx, registry, .. } = &mut *inner;
            let handles = key
                .iter()
                .map(|&(_, _, i)| Ok((&registry.get(&adapters[i].0)?.handle, adapters[i].1)))
                .collect::<Result<Vec<_>, EngineError>>()?;
            ctx.set_adapters(&handles)?;
            ctx.clear_memory();
            inner.active = ids;
        }
        Ok(())
    }

    /// Makes `adapters` the active set now (what a request naming them would do first),
    /// so the next request with this set starts without the switch. Returns nothing;
    /// benches time it as the adapter-switch cost.
    pub fn activate(&self, adapters: &[(String, f32)]) -> Result<()> {
        let mut inner = self.lock();
        self.select_adapters(&mut inner, adapters)
    }

    /// Empties the prompt cache (the next request computes its whole prompt).
    pub fn clear_cache(&self) {
        let mut inner = self.lock();
        self.reset_cache(&mut inner);
    }

    fn reset_cache(&self, inner: &mut Inner) -> usize {
        inner.ctx.clear_memory();
        inner.cached.clear();
        0
    }

    /// Keeps the cached prefix shared with `tokens` (same adapter set assured by
    /// `select_adapters`); returns where decoding must start. At least the last token is
    /// always decoded so that its logits exist.
    fn reuse_prefix(&self, inner: &mut Inner, tokens: &[Token]) -> usize {
        if !self.options.prompt_cache {
            return self.reset_cache(inner);
        }
        let common = inner.cached.iter().zip(tokens).take_while(|(a, b)| a == b).count();
        let keep = common.min(tokens.len() - 1);
        if keep == 0 || !inner.ctx.truncate_memory(keep) {
            return self.reset_cache(inner);
        }
        inner.cached.truncate(keep);
        keep
    }

    fn finish_decode<T>(
        &self,
        inner: &mut Inner,
        tokens: &[Token],
        start: usize,
        out: Result<Option<T>, EngineError>,
    ) -> Result<Option<T>> {
        match out {
            Ok(Some(v)) => {
                inner.cached.extend_from_slice(&tokens[start..]);
                Ok(Some(v))
            }
            Ok(None) => {
                // Cancelled mid-prompt: part of the prompt may be in memory.
                self.reset_cache(inner);
                Ok(None)
            }
            Err(e) => {
                self.reset_cache(inner);
                Err(e.into())
            }
        }
    }

    /// Runs a request, calling `on_text` with each piece of final text as it is
    /// produced; `on_text` returning false cancels.
    pub fn generate(&self, req: &GenerateRequest, on_text: &mut dyn FnMut(&str) -> bool) -> Result<Generation> {
        let tokens = self.tokenize(&req.prompt)?;
        let mut sampler = Sampler::new(req.sampling.clone())?;
        sampler.observe(&tokens);
        let cancelled = || req.cancel.as_ref().is_some_and(CancelFlag::is_cancelled);
        let mut inner = self.lock();
        self.select_adapters(&mut inner, &req.adapters)?;

        let t0 = Instant::now();
        let start = self.reuse_prefix(&mut inner, &tokens);
        let out = inner.ctx.decode(&tokens[start..], start, false, &cancelled);
        let mut gen = Generation::started(tokens.len(), start);
        let Some(mut logits) = self.finish_decode(&mut inner, &tokens, start, out)? else {
            return Ok(gen);
        };
        gen.prompt_secs = t0.elapsed().as_secs_f64();
        let t1 = Instant::now();
        let mut pos = tokens.len();
        let model = &self.model;
        let vocab = Vocab { is_eog: &|t| model.is_eog(t), piece: &|t| model.token_bytes(t, false) };
        let first = logits.pop().expect("one row of logits");
        decode_loop(req, &mut sampler, first, &mut gen, vocab, on_text, &mut |token| {
            if pos + 1 > inner.ctx.n_ctx() {
                return Ok(None);
            }
            let out = inner.ctx.decode(&[token], pos, false, &|| false);
            let mut next = self.finish_decode(&mut inner, &[token], 0, out)?.expect("never cancelled");
            pos += 1;
            Ok(next.pop())
        })?;
        gen.gen_secs = t1.elapsed().as_secs_f64();
        Ok(gen)
    }
}

impl Drop for Runtime {
    fn drop(&mut self) {
        // Adapters are freed explicitly before the model; the context drops with `inner`.
        let inner = self.inner.get_mut().unwrap_or_else(|e| e.into_inner());
        let _ = inner.ctx.set_adapters(&[]);
        inner.registry.clear();
    }
}
