//! A model's vocabulary without its weights: what turning records into tokens needs
//! (training and evaluation data, the data report, the calibration text of a GPTQ merge).
//!
//! It is edgelora's own tokenizer ([`Tokenizer`], equal to llama.cpp's on every vocabulary
//! it implements) with the model's Jinja chat template. In builds with the `llama` feature
//! a vocabulary the tokenizer does not implement (a pre-tokenizer only llama.cpp knows) is
//! read through a small llama.cpp context instead; without the feature it is refused
//! ([`EngineError::UnsupportedVocab`](crate::error::EngineError::UnsupportedVocab)).

use std::path::Path;

use super::request::{render_chat, ChatMessage};
use crate::error::{EngineError, Result};
use crate::gguf::GgufFile;
use crate::tokenizer::{ChatTemplate, Tokenizer};

/// See the module docs.
pub struct Vocabulary {
    inner: Inner,
}

enum Inner {
    Ours { tokenizer: Tokenizer, chat: Option<ChatTemplate> },
    #[cfg(feature = "llama")]
    LlamaCpp(super::Runtime),
}

impl Vocabulary {
    /// Reads the vocabulary of the model at `path` (a GGUF file), checked as every entry
    /// point checks a model (`model::validate::check_model`).
    pub fn open(path: &Path) -> Result<Vocabulary> {
        let gguf = GgufFile::open(path)?;
        if gguf.get("general.type").and_then(|v| v.as_str()) == Some("adapter") {
            return Err(EngineError::ModelLoad { path: path.into(), reason: "this is a LoRA adapter, not a model (pass it with --adapter)".into() }.into());
        }
        crate::model::validate::check_model(&gguf)?;
        match Tokenizer::from_gguf(&gguf) {
            Ok(tokenizer) => Ok(Vocabulary { inner: Inner::Ours { chat: tokenizer.chat(), tokenizer } }),
            Err(e) => {
                let e = super::native::vocab_error(path, e);
                #[cfg(feature = "llama")]
                if let crate::Error::Engine(EngineError::UnsupportedVocab { llama_cpp_knows: true, .. }) = &e {
                    let options = super::RuntimeOptions { n_ctx: 64, n_batch: 64, threads: 1, ..super::RuntimeOptions::default() };
                    return Ok(Vocabulary { inner: Inner::LlamaCpp(super::Runtime::load(path, options)?) });
                }
                Err(e)
            }
        }
    }

    /// Which tokenizer reads it: "edgelora" or "llama.cpp".
    pub fn tokenizer_name(&self) -> &'static str {
        match &self.inner {
            Inner::Ours { .. } => "edgelora",
            #[cfg(feature = "llama")]
            Inner::LlamaCpp(_) => "llama.cpp",
        }
    }

    /// Tokens of `text` (special tokens in it parsed as such); `add_special` adds the
    /// model's BOS where it uses one.
    pub fn tokenize_text(&self, text: &str, add_special: bool) -> Result<Vec<i32>> {
        match &self.inner {
            Inner::Ours { tokenizer, .. } => tokenizer.encode(text, add_special, true).map_err(|e| EngineError::Tokenize(e.to_string()).into()),
            #[cfg(feature = "llama")]
            Inner::LlamaCpp(rt) => rt.tokenize_text(text, add_special),
        }
    }

    /// Renders chat messages with the model's Jinja template; `add_assistant` opens the
    /// assistant's turn at the end.
    pub fn render_chat_with(&self, messages: &[ChatMessage], add_assistant: bool) -> Result<String> {
        match &self.inner {
            Inner::Ours { chat, .. } => render_chat(chat.as_ref(), messages, add_assistant),
            #[cfg(feature = "llama")]
            Inner::LlamaCpp(rt) => rt.render_chat_with(messages, add_assistant),
        }
    }

    /// The text the model's EOS token generates (special tokens not rendered, so a control
    /// token's is empty); "" without an EOS.
    pub fn eos_piece(&self) -> String {
        match &self.inner {
            Inner::Ours { tokenizer, .. } => tokenizer.eos().map(|t| String::from_utf8_lossy(tokenizer.token_bytes(t, false)).into_owned()).unwrap_or_default(),
            #[cfg(feature = "llama")]
            Inner::LlamaCpp(rt) => rt.eos_token().map(|t| String::from_utf8_lossy(&rt.token_piece(t)).into_owned()).unwrap_or_default(),
        }
    }
}
