//! What every backend takes and gives: load options, prompts, requests, results, the
//! cancel flag; and the rules both backends share (what a prompt's tokens are, how a chat
//! is rendered, how an adapter argument reads).

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use super::sampler::SamplingParams;
use crate::error::{EngineError, Error, Result};
use crate::tokenizer::{ChatTemplate, TokenizerError};

/// How to load a model.
#[derive(Debug, Clone)]
pub struct RuntimeOptions {
    /// CPU threads for llama.cpp (prompt and generation).
    pub threads: usize,
    /// Context length in tokens.
    pub n_ctx: u32,
    /// Tokens per llama_decode call when processing a prompt.
    pub n_batch: u32,
    /// Map the model file instead of reading it into memory.
    pub use_mmap: bool,
    /// Keep the KV cache between requests with the same adapter set.
    pub prompt_cache: bool,
    /// Keep keys and values in F32 instead of llama.cpp's default F16: twice the cache
    /// memory, no rounding of K/V (parity checks against float references use it).
    pub f32_kv_cache: bool,
    /// Flash attention: `None` lets llama.cpp decide (on for CPU). Its CPU kernel rounds
    /// Q to F16; parity checks against float references turn it off.
    pub flash_attention: Option<bool>,
}

impl Default for RuntimeOptions {
    fn default() -> Self {
        RuntimeOptions {
            threads: std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1),
            n_ctx: 2048,
            n_batch: 512,
            use_mmap: true,
            prompt_cache: true,
            f32_kv_cache: false,
            flash_attention: None,
        }
    }
}

/// A chat turn.
#[derive(Debug, Clone, PartialEq)]
pub struct ChatMessage {
    pub role: String,
    pub content: String,
}

impl ChatMessage {
    pub fn new(role: impl Into<String>, content: impl Into<String>) -> Self {
        ChatMessage { role: role.into(), content: content.into() }
    }
}

/// What to feed the model.
#[derive(Debug, Clone, PartialEq)]
pub enum Prompt {
    /// Plain text; special tokens written in it (`<|im_start|>`) are parsed as such.
    Text(String),
    /// Messages rendered with the model's chat template, ending with the assistant's turn.
    Chat(Vec<ChatMessage>),
    /// Token ids as they are.
    Tokens(Vec<i32>),
}

/// A shared flag that cancels a running request (checked between tokens and between
/// prompt chunks).
#[derive(Debug, Clone, Default)]
pub struct CancelFlag(Arc<AtomicBool>);

impl CancelFlag {
    pub fn new() -> Self {
        Self::default()
    }
    pub fn cancel(&self) {
        self.0.store(true, Ordering::SeqCst)
    }
    pub fn is_cancelled(&self) -> bool {
        self.0.load(Ordering::SeqCst)
    }
    pub fn reset(&self) {
        self.0.store(false, Ordering::SeqCst)
    }
}

/// One generation request.
#[derive(Debug, Clone)]
pub struct GenerateRequest {
    pub prompt: Prompt,
    /// Adapters by registry name with their scales; empty = the base model.
    pub adapters: Vec<(String, f32)>,
    pub sampling: SamplingParams,
    pub max_tokens: usize,
    /// Generation ends before the first occurrence of any of these.
    pub stop: Vec<String>,
    /// Keep generating past end-of-generation tokens (benchmarks).
    pub ignore_eog: bool,
    pub cancel: Option<CancelFlag>,
}

impl GenerateRequest {
    pub fn new(prompt: Prompt) -> Self {
        GenerateRequest { prompt, adapters: Vec::new(), sampling: SamplingParams::default(), max_tokens: 128, stop: Vec::new(), ignore_eog: false, cancel: None }
    }
}

/// Why generation ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopReason {
    MaxTokens,
    /// The model produced an end-of-generation token.
    EndOfGeneration,
    StopString,
    Cancelled,
    /// The context is full.
    ContextFull,
}

/// A finished request.
#[derive(Debug, Clone)]
pub struct Generation {
    pub text: String,
    /// Generated token ids (the end-of-generation token excluded).
    pub tokens: Vec<i32>,
    pub n_prompt: usize,
    /// Prompt tokens whose KV came from the cache rather than being computed.
    pub n_prompt_cached: usize,
    pub stop_reason: StopReason,
    /// Seconds spent on the prompt (up to the first token's logits).
    pub prompt_secs: f64,
    /// Seconds spent generating after the first token's logits.
    pub gen_secs: f64,
}

impl Generation {
    /// Nothing generated yet for a prompt of `n_prompt` tokens (`n_prompt_cached` of them
    /// from the cache); the stop reason stays `Cancelled` until decoding sets another.
    pub fn started(n_prompt: usize, n_prompt_cached: usize) -> Generation {
        Generation { text: String::new(), tokens: Vec::new(), n_prompt, n_prompt_cached, stop_reason: StopReason::Cancelled, prompt_secs: 0.0, gen_secs: 0.0 }
    }
}

/// Parses `PATH[:SCALE]` (scale defaults to 1). A trailing `:x` that is not a number is
/// taken as part of the path.
pub fn parse_adapter_arg(arg: &str) -> Result<(PathBuf, f32), Error> {
    // An empty argument used to come back as Ok with an empty path (found by
    // fuzz/fuzz_targets/adapter_arg.rs): it names no adapter.
    if arg.is_empty() {
        return Err(EngineError::BadOption("adapter argument is empty (expected PATH[:SCALE])".into()).into());
    }
    if let Some((path, scale)) = arg.rsplit_once(':') {
        if let Ok(s) = scale.parse::<f32>() {
            if !s.is_finite() {
                return Err(EngineError::BadScale { name: path.into(), scale: s }.into());
            }
            if path.is_empty() {
                return Err(EngineError::BadOption(format!("adapter argument {arg:?} has no path")).into());
            }
            return Ok((PathBuf::from(path), s));
        }
    }
    Ok((PathBuf::from(arg), 1.0))
}

/// What a prompt means on either backend: text tokenized with BOS and special tokens
/// parsed (`text`), chat rendered (`chat`) then tokenized the same way, tokens as they
/// are; refused when empty or when a token is outside the `n_vocab` vocabulary.
pub(super) fn prompt_tokens(prompt: &Prompt, n_vocab: usize, text: &dyn Fn(&str) -> Result<Vec<i32>>, chat: &dyn Fn(&[ChatMessage]) -> Result<String>) -> Result<Vec<i32>> {
    let tokens = match prompt {
        Prompt::Text(t) => text(t)?,
        Prompt::Chat(m) => text(&chat(m)?)?,
        Prompt::Tokens(t) => t.clone(),
    };
    if tokens.is_empty() {
        return Err(EngineError::EmptyPrompt.into());
    }
    if let Some(&bad) = tokens.iter().find(|&&t| t < 0 || t as usize >= n_vocab) {
        return Err(EngineError::BadToken { id: bad.into(), n_vocab }.into());
    }
    Ok(tokens)
}

/// Renders `messages` with `chat`, the model's template (the same Jinja rendering on both
/// backends); a model without one gets [`EngineError::NoChatTemplate`].
pub(super) fn render_chat(chat: Option<&ChatTemplate>, messages: &[ChatMessage], add_assistant: bool) -> Result<String> {
    let chat = chat.ok_or(EngineError::NoChatTemplate)?;
    let msgs: Vec<(&str, &str)> = messages.iter().map(|m| (m.role.as_str(), m.content.as_str())).collect();
    chat.render(&msgs, add_assistant).map_err(|e| match e {
        TokenizerError::ChatTemplate { reason } => EngineError::ChatTemplate(reason).into(),
        other => other.into(),
    })
}
