//! A tokenizer of our own, read from a GGUF file's vocabulary (`tokenizer.ggml.*`), that
//! tokenizes and detokenizes exactly as llama.cpp does, so that the native engine needs no
//! llama.cpp.
//!
//! - SentencePiece-style vocabularies (`tokenizer.ggml.model = "llama"`: Llama 2, Phi-3,
//!   Gemma 3, …): a leading space (`add_space_prefix`), spaces as `▁`, merges by score,
//!   `<0xXX>` byte fallback.
//! - BPE vocabularies (`"gpt2"`: GPT-2, Llama 3, Qwen2/2.5/3, SmolLM, StarCoder, …;
//!   `"gemma4"`): the pre-tokenizer named by `tokenizer.ggml.pre` cuts the text into words
//!   (`pretokenize.rs`), words are byte-level encoded and merged by rank.
//! - Special tokens written in the text are recognised as llama.cpp does
//!   (`parse_special`), BOS/EOS are added per the vocabulary's flags (`add_special`).
//! - Chat templates (`tokenizer.chat_template`) are rendered with MiniJinja.
//!
//! ```no_run
//! use edgelora::gguf::GgufFile;
//! use edgelora::tokenizer::Tokenizer;
//! let gguf = GgufFile::open("models/SmolLM2-135M-Instruct.Q4_1.gguf")?;
//! let tok = Tokenizer::from_gguf(&gguf)?;
//! let ids = tok.encode("<|im_start|>user\nHello!", true, true)?;
//! assert_eq!(tok.decode(&ids), "<|im_start|>user\nHello!");
//! # Ok::<(), edgelora::Error>(())
//! ```
//!
//! A [`Tokenizer`] is `Send + Sync` and cheap to clone (the vocabulary is shared).
//! Token ids are `i32`, as in llama.cpp and the engines.

mod bpe;
mod chat;
mod error;
mod pretokenize;
mod special;
mod spm;
mod unicode;
mod vocab;

use std::sync::Arc;

pub use chat::ChatTemplate;
pub use error::TokenizerError;
pub use vocab::{TokenAttr, VocabKind};

use special::Fragment;
use vocab::Vocab;

/// A vocabulary loaded from GGUF metadata, with llama.cpp's tokenization rules.
#[derive(Clone)]
pub struct Tokenizer {
    vocab: Arc<Vocab>,
}

impl std::fmt::Debug for Tokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tokenizer")
            .field("model", &self.vocab.model)
            .field("pre", &self.vocab.pre)
            .field("n_vocab", &self.vocab.n_tokens())
            .finish()
    }
}

/// Text longer than this (in bytes) is refused: token ids and positions are 32-bit.
pub const MAX_TEXT_LEN: usize = i32::MAX as usize;

impl Tokenizer {
    /// Reads the vocabulary of `gguf`. Unknown or unimplemented model types
    /// (`tokenizer.ggml.model`) and pre-tokenizers (`tokenizer.ggml.pre`) are refused by
    /// name, as is any malformed key.
    pub fn from_gguf(gguf: &crate::gguf::GgufFile) -> Result<Tokenizer, TokenizerError> {
        Ok(Tokenizer { vocab: Arc::new(Vocab::from_gguf(gguf)?) })
    }

    /// Text → tokens, as `llama_tokenize`: `add_special` adds BOS (and EOS) where the
    /// vocabulary asks for them; `parse_special` recognises control tokens written in the
    /// text (user-defined tokens are always recognised).
    pub fn encode(&self, text: &str, add_special: bool, parse_special: bool) -> Result<Vec<i32>, TokenizerError> {
        self.vocab.encode(text, add_special, parse_special)
    }

    /// Tokens → text with special tokens rendered: the concatenation of every token's
    /// piece (as the llama.cpp engine's `detokenize`), invalid UTF-8 replaced. Ids outside
    /// the vocabulary have no text.
    pub fn decode(&self, tokens: &[i32]) -> String {
        let bytes: Vec<u8> = tokens.iter().flat_map(|&t| self.token_bytes(t, true).iter().copied()).collect();
        String::from_utf8_lossy(&bytes).into_owned()
    }

    /// One token's bytes with special tokens rendered (`llama_token_to_piece` with
    /// `special = true`); empty for an id outside the vocabulary.
    pub fn piece(&self, token: i32) -> Vec<u8> {
        self.token_bytes(token, true).to_vec()
    }

    /// One token's bytes (`llama_token_to_piece`, no left strip): control and unknown
    /// tokens are empty unless `special`. Empty for an id outside the vocabulary.
    pub fn token_bytes(&self, token: i32, special: bool) -> &[u8] {
        let v = &*self.vocab;
        let Some(piece) = usize::try_from(token).ok().and_then(|i| v.pieces.get(i)) else {
            return &[];
        };
        if !special && v.attr(token).intersects(TokenAttr::CONTROL | TokenAttr::UNKNOWN) {
            return &[];
        }
        piece
    }

    /// `llama_detokenize`: pieces joined, the leading space the tokenizer added removed,
    /// BOS/EOS dropped with `remove_special`, special tokens rendered with
    /// `unparse_special`, and the vocabulary's clean-up of spaces before punctuation.
    pub fn detokenize(&self, tokens: &[i32], remove_special: bool, unparse_special: bool) -> Vec<u8> {
        self.vocab.detokenize(tokens, remove_special, unparse_special)
    }

    pub fn n_vocab(&self) -> usize {
        self.vocab.n_tokens()
    }
    pub fn kind(&self) -> VocabKind {
        self.vocab.kind
    }
    /// `tokenizer.ggml.model`.
    pub fn model(&self) -> &str {
        &self.vocab.model
    }
    /// `tokenizer.ggml.pre` (empty when absent).
    pub fn pre(&self) -> &str {
        &self.vocab.pre
    }
    /// A token's text as stored in the vocabulary (`Ġ`/`▁` forms).
    pub fn token_text(&self, token: i32) -> Option<&str> {
        usize::try_from(token).ok().and_then(|i| self.vocab.texts.get(i)).map(|s| &**s)
    }
    pub fn token_score(&self, token: i32) -> Option<f32> {
        usize::try_from(token).ok().and_then(|i| self.vocab.scores.get(i)).copied()
    }
    /// The attributes llama.cpp gives the token (after its corrections by token text).
    pub fn token_attr(&self, token: i32) -> TokenAttr {
        self.vocab.attr(token)
    }
    /// The id of the token with exactly this text.
    pub fn token_id(&self, text: &str) -> Option<i32> {
        self.vocab.lookup(text)
    }
    pub fn bos(&self) -> Option<i32> {
        self.vocab.ids.bos
    }
    pub fn eos(&self) -> Option<i32> {
        self.vocab.ids.eos
    }
    pub fn eot(&self) -> Option<i32> {
        self.vocab.ids.eot
    }
    pub fn unk(&self) -> Option<i32> {
        self.vocab.ids.unk
    }
    pub fn pad(&self) -> Option<i32> {
        self.vocab.ids.pad
    }
    /// The token of a line break.
    pub fn linefeed(&self) -> Option<i32> {
        self.vocab.linefeed
    }
    /// Whether `encode(…, add_special = true, …)` starts with BOS.
    pub fn add_bos(&self) -> bool {
        self.vocab.add_bos
    }
    /// Whether `encode(…, add_special = true, …)` ends with EOS.
    pub fn add_eos(&self) -> bool {
        self.vocab.add_eos
    }
    /// Whether `token` ends generation (EOS, end of turn, …), as `llama_vocab_is_eog`.
    pub fn is_eog(&self, token: i32) -> bool {
        self.vocab.eog.contains(&token)
    }
    /// Every end-of-generation token, ascending.
    pub fn eog_tokens(&self) -> Vec<i32> {
        self.vocab.eog.iter().copied().collect()
    }
    /// `tokenizer.chat_template`, if the file has one.
    pub fn chat_template(&self) -> Option<&str> {
        self.vocab.chat_template.as_deref()
    }

    /// The vocabulary's chat template (`tokenizer.chat_template`) with its BOS/EOS texts,
    /// if the file has one.
    pub fn chat(&self) -> Option<ChatTemplate> {
        self.chat_template().map(|t| self.chat_with(t))
    }

    /// `template` with this vocabulary's BOS/EOS texts.
    pub fn chat_with(&self, template: &str) -> ChatTemplate {
        let text = |id: Option<i32>| id.and_then(|t| self.token_text(t)).unwrap_or("").to_string();
        ChatTemplate::new(template, text(self.bos()), text(self.eos()))
    }

    /// Renders `messages` (role, content) with the vocabulary's chat template
    /// (`tokenizer.chat_template`, Jinja, rendered by MiniJinja with `bos_token`,
    /// `eos_token` and `add_generation_prompt = add_assistant`).
    pub fn apply_chat_template<R: AsRef<str>, C: AsRef<str>>(&self, messages: &[(R, C)], add_assistant: bool) -> Result<String, TokenizerError> {
        self.chat().ok_or(TokenizerError::NoChatTemplate)?.render(messages, add_assistant)
    }

    /// As [`apply_chat_template`](Self::apply_chat_template) with another template.
    pub fn apply_chat_template_with<R: AsRef<str>, C: AsRef<str>>(
        &self,
        template: &str,
        messages: &[(R, C)],
        add_assistant: bool,
    ) -> Result<String, TokenizerError> {
        self.chat_with(template).render(messages, add_assistant)
    }
}

impl Vocab {
    pub(crate) fn encode(&self, text: &str, add_special: bool, parse_special: bool) -> Result<Vec<i32>, TokenizerError> {
        if text.len() > MAX_TEXT_LEN {
            return Err(TokenizerError::TextTooLong { len: text.len(), max: MAX_TEXT_LEN });
        }
        let frags = special::partition(self, text, parse_special);
        let mut out = Vec::with_capacity(text.len() / 3 + 2);
        let bos = || self.ids.bos.ok_or(TokenizerError::MissingSpecialToken { which: "BOS" });
        let eos = || self.ids.eos.ok_or(TokenizerError::MissingSpecialToken { which: "EOS" });
        if add_special && self.add_bos {
            out.push(bos()?);
        }
        match self.kind {
            VocabKind::Spm => {
                // A raw fragment at the start or after a special token gets the prefix space.
                let mut after_special = true;
                for frag in &frags {
                    match frag {
                        Fragment::Text(r) => {
                            let mut s = String::with_capacity(r.len() + 3);
                            if self.add_space_prefix && after_special {
                                s.push('▁');
                            }
                            s.push_str(&text[r.clone()].replace(' ', "▁"));
                            spm::encode(self, &s, &mut out)?;
                            after_special = false;
                        }
                        Fragment::Token(id) => {
                            out.push(*id);
                            after_special = true;
                        }
                    }
                }
            }
            VocabKind::Bpe => {
                for frag in &frags {
                    match frag {
                        Fragment::Text(r) => self.encode_bpe_fragment(&text[r.clone()], &mut out),
                        Fragment::Token(id) => out.push(*id),
                    }
                }
            }
        }
        if add_special && self.add_eos {
            out.push(eos()?);
        }
        Ok(out)
    }

    /// Tokens of text without special tokens or BOS/EOS.
    pub(crate) fn encode_plain(&self, text: &str) -> Result<Vec<i32>, TokenizerError> {
        self.encode(text, false, false)
    }

    fn encode_bpe_fragment(&self, text: &str, out: &mut Vec<i32>) {
        let escaped;
        let text = if self.escape_whitespaces {
            escaped = text.replace(' ', "▁");
            &escaped
        } else {
            text
        };
        let cpts: Vec<char> = text.chars().collect();
        let lens = pretokenize::split(&cpts, &self.stages);
        let map = unicode::byte_to_char_table();
        let mut word = String::new();
        let mut start = 0;
        for len in lens {
            word.clear();
            for &c in &cpts[start..start + len] {
                if self.byte_encode {
                    let mut buf = [0u8; 4];
                    for &b in c.encode_utf8(&mut buf).as_bytes() {
                        word.push(map[b as usize]);
                    }
                } else {
                    word.push(c);
                }
            }
            bpe::encode_word(self, &word, out);
            start += len;
        }
    }

    fn detokenize(&self, tokens: &[i32], remove_special: bool, unparse_special: bool) -> Vec<u8> {
        let mut tokens = tokens;
        let mut remove_space = self.add_space_prefix;
        if remove_special && self.add_bos && tokens.first().is_some_and(|&t| Some(t) == self.ids.bos) {
            remove_space = false;
            tokens = &tokens[1..];
        }
        if remove_special && self.add_eos && tokens.last().is_some_and(|&t| Some(t) == self.ids.eos) {
            tokens = &tokens[..tokens.len() - 1];
        }
        let mut text = Vec::new();
        for &t in tokens {
            let Some(piece) = usize::try_from(t).ok().and_then(|i| self.pieces.get(i)) else {
                remove_space = false;
                continue;
            };
            let piece: &[u8] =
                if !unparse_special && self.attr(t).intersects(TokenAttr::CONTROL | TokenAttr::UNKNOWN) { &[] } else { piece };
            let piece = if remove_space { piece.strip_prefix(b" ").unwrap_or(piece) } else { piece };
            remove_space = false;
            text.extend_from_slice(piece);
        }
        if self.clean_spaces {
            text = clean_spaces(&text);
        }
        text
    }
}

/// llama.cpp's clean-up after detokenization: no space before `? ! . ,`, a lone `'`
/// between spaces loses them, and `'s 'm 're 've` join the previous word.
fn clean_spaces(src: &[u8]) -> Vec<u8> {
    if src.is_empty() {
        return Vec::new();
    }
    // Pass 1: " ?", " !", " .", " ,".
    let mut a = Vec::with_capacity(src.len());
    a.push(src[0]);
    for i in 1..src.len() {
        let x = src[i];
        if src[i - 1] == b' ' && matches!(x, b'?' | b'!' | b'.' | b',') {
            a.pop();
        }
        a.push(x);
    }
    // Pass 2: " ' " → "'". llama.cpp overwrites the skipped space with NUL in its buffer,
    // so a later look-back sees NUL there.
    let mut src2 = a;
    let mut b = Vec::with_capacity(src2.len());
    b.push(src2[0]);
    let mut i = 1;
    while i < src2.len() {
        let x = src2[i];
        if x == b'\'' && i + 1 < src2.len() && src2[i - 1] == b' ' && src2[i + 1] == b' ' {
            b.pop();
            i += 1;
            src2[i] = 0;
        }
        b.push(x);
        i += 1;
    }
    // Pass 3: " 's", " 'm", " 're", " 've".
    let mut c = Vec::with_capacity(b.len());
    c.push(b[0]);
    for i in 1..b.len() {
        let x = b[i];
        if b[i - 1] == b' ' && x == b'\'' && i + 1 < b.len() {
            let x1 = b[i + 1];
            let join = match x1 {
                b's' | b'm' => true,
                b't' | b'd' => false,
                _ => i + 2 < b.len() && matches!((x1, b[i + 2]), (b'r', b'e') | (b'v', b'e')),
            };
            if join {
                c.pop();
            }
        }
        c.push(x);
    }
    c
}
