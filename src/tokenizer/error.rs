//! The tokenizer's errors: a vocabulary that cannot be read (each naming the file and the
//! GGUF key at fault), text that cannot be encoded, a chat template that cannot be rendered.

use std::path::PathBuf;

/// Everything [`Tokenizer`](super::Tokenizer) can refuse.
#[derive(Debug, thiserror::Error)]
pub enum TokenizerError {
    #[error("{}: metadata {key:?} is missing", path.display())]
    MissingKey { path: PathBuf, key: String },
    #[error("{}: metadata {key:?}: expected {expected}, found {found}", path.display())]
    WrongType { path: PathBuf, key: String, expected: String, found: String },
    #[error("{}: metadata {key:?} = {value:?}: {reason}", path.display())]
    UnsupportedModel { path: PathBuf, key: String, value: String, reason: String },
    #[error("{}: metadata {key:?} = {value:?}: {reason}", path.display())]
    UnsupportedPreTokenizer { path: PathBuf, key: String, value: String, reason: String },
    #[error("{}: metadata {key:?}[{index}]: {reason}", path.display())]
    BadEntry { path: PathBuf, key: String, index: usize, reason: String },
    #[error("{}: metadata {key:?}: token id {id} is outside the vocabulary (0..{n_vocab})", path.display())]
    TokenIdOutOfRange { path: PathBuf, key: String, id: u64, n_vocab: usize },
    #[error("{}: metadata {key:?} has {len} entries, fewer than the {n_tokens} tokens", path.display())]
    TooShort { path: PathBuf, key: String, len: usize, n_tokens: usize },
    #[error("{}: metadata {key:?}: {reason}", path.display())]
    BadVocab { path: PathBuf, key: String, reason: String },
    #[error("cannot add the {which} token: the vocabulary asks for it but has none")]
    MissingSpecialToken { which: &'static str },
    #[error("byte 0x{byte:02X} has no token (no <0x{byte:02X}> nor a one-byte token) in this SentencePiece vocabulary")]
    NoByteToken { byte: u8 },
    #[error("the text is {len} bytes; at most {max} can be tokenized")]
    TextTooLong { len: usize, max: usize },
    #[error("the vocabulary has no chat template (metadata tokenizer.chat_template)")]
    NoChatTemplate,
    #[error("chat template: {reason}")]
    ChatTemplate { reason: String },
}
