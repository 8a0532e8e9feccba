//! The library's error type, grouped by area. Every variant names the file, field or
//! tensor at fault and what was expected; the CLI prints the cause chain.

use std::path::PathBuf;

/// Convenience alias used across the crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Every error the library returns.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Gguf(#[from] GgufError),
    #[error(transparent)]
    Engine(#[from] EngineError),
    #[error(transparent)]
    Adapter(#[from] AdapterError),
    #[error(transparent)]
    Train(#[from] TrainError),
    #[error(transparent)]
    Serve(#[from] ServeError),
    #[error(transparent)]
    Tokenizer(#[from] crate::tokenizer::TokenizerError),
}

impl Error {
    /// The message with its causes, `: `-separated.
    pub fn chain(&self) -> String {
        let mut msg = self.to_string();
        let mut src = std::error::Error::source(self);
        while let Some(s) = src {
            msg.push_str(": ");
            msg.push_str(&s.to_string());
            src = s.source();
        }
        msg
    }
}

/// The server (`edgelora serve`): its router file and sockets.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("router {}: {reason}", path.display())]
    Router { path: PathBuf, reason: String },
    #[error("{what}: {reason}")]
    Io { what: String, reason: String },
}

/// Reading or writing a GGUF file.
#[derive(Debug, thiserror::Error)]
pub enum GgufError {
    #[error("{}: {action}", path.display())]
    Io {
        path: PathBuf,
        action: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("{}: not a GGUF file: magic is {found:?}, expected \"GGUF\"", path.display())]
    BadMagic { path: PathBuf, found: [u8; 4] },
    #[error("{}: GGUF version {found} is not supported (expected 2 or 3{hint})", path.display())]
    UnsupportedVersion { path: PathBuf, found: u32, hint: &'static str },
    #[error("{}: truncated: {what} at byte {offset} needs {needed} bytes, only {available} remain", path.display())]
    Truncated { path: PathBuf, what: String, offset: u64, needed: u64, available: u64 },
    #[error("{}: {what} count {count} is impossible: even at {min_size} bytes each they need more than the {available} bytes left in the file", path.display())]
    AbsurdCount { path: PathBuf, what: String, count: u64, min_size: u64, available: u64 },
    #[error("{}: metadata {key:?}: unknown value type {found} (expected 0..=12)", path.display())]
    UnknownValueType { path: PathBuf, key: String, found: u32 },
    #[error("{}: metadata {key:?}: arrays nested deeper than {max} levels", path.display())]
    NestingTooDeep { path: PathBuf, key: String, max: usize },
    #[error("{}: {what} is not valid UTF-8", path.display())]
    InvalidUtf8 { path: PathBuf, what: String },
    #[error("{}: duplicate metadata key {key:?}", path.display())]
    DuplicateKey { path: PathBuf, key: String },
    #[error("{}: duplicate tensor name {name:?}", path.display())]
    DuplicateTensor { path: PathBuf, name: String },
    #[error("{}: tensor {name:?}: unknown ggml type {found}", path.display())]
    UnknownTensorType { path: PathBuf, name: String, found: u32 },
    #[error("{}: tensor {name:?}: {reason}", path.display())]
    BadTensor { path: PathBuf, name: String, reason: String },
    #[error("{}: tensor {name:?}: data bytes {start}..{end} lie outside the data section (file is {file_len} bytes)", path.display())]
    TensorOutOfBounds { path: PathBuf, name: String, start: u64, end: u64, file_len: u64 },
    #[error("{}: metadata {key:?} is missing", path.display())]
    MissingKey { path: PathBuf, key: String },
    #[error("{}: metadata {key:?}: expected {expected}, found {found}", path.display())]
    WrongValue { path: PathBuf, key: String, expected: String, found: String },
    #[error("{}: tensor {name:?} not found", path.display())]
    MissingTensor { path: PathBuf, name: String },
    #[error("{}: writing tensor {name:?}: {reason}", path.display())]
    WriteOrder { path: PathBuf, name: String, reason: String },
}

/// Loading models and adapters into the generation backend, and running requests.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error("{}: {reason}", path.display())]
    ModelLoad { path: PathBuf, reason: String },
    /// The native engine's tokenizer does not implement the model's vocabulary type or
    /// pre-tokenizer (`cause` names the file, the key and the value).
    #[error("the native engine cannot tokenize for this model: {cause}; {}", if *llama_cpp_knows { "the llama.cpp backend (--backend llama) can run it" } else { "llama.cpp does not know this vocabulary either" })]
    UnsupportedVocab { path: PathBuf, llama_cpp_knows: bool, cause: crate::tokenizer::TokenizerError },
    #[error("{}: llama.cpp could not load the adapter: {reason}", path.display())]
    AdapterLoad { path: PathBuf, reason: String },
    #[error("adapter {name:?} is not loaded (loaded: {loaded})")]
    UnknownAdapter { name: String, loaded: String },
    #[error("an adapter named {name:?} is already loaded")]
    DuplicateAdapter { name: String },
    #[error("adapter {name:?}: scale {scale} is not a finite number")]
    BadScale { name: String, scale: f32 },
    #[error("llama.cpp: {0}")]
    Backend(String),
    #[error("tokenizing the prompt failed: {0}")]
    Tokenize(String),
    #[error("token id {id} is outside the vocabulary (0..{n_vocab})")]
    BadToken { id: i64, n_vocab: usize },
    #[error("the prompt is empty: at least one token is needed")]
    EmptyPrompt,
    #[error("the request needs {needed} tokens of context but the context holds {n_ctx} (raise --ctx)")]
    ContextFull { needed: usize, n_ctx: usize },
    #[error("the request needs {needed_mib:.1} MiB of KV cache ({positions} positions: prompt + max_tokens), more than the whole pool of {pool_mib:.1} MiB (raise --kv-memory-mb or lower max_tokens)")]
    KvPool { needed_mib: f64, positions: usize, pool_mib: f64 },
    #[error("the model has no chat template (metadata tokenizer.chat_template); use a plain prompt")]
    NoChatTemplate,
    #[error("applying the chat template failed: {0}")]
    ChatTemplate(String),
    #[error("bad sampling option {field}: {reason}")]
    BadSampling { field: &'static str, reason: String },
    #[error("{0}")]
    BadOption(String),
}

/// Adapter files: their layout and their fit to a base model.
#[derive(Debug, thiserror::Error)]
pub enum AdapterError {
    #[error("{}: {reason}", path.display())]
    Invalid { path: PathBuf, reason: String },
    #[error("{}: adapter is for architecture {found:?} but the model is {expected:?}", path.display())]
    WrongArchitecture { path: PathBuf, expected: String, found: String },
    #[error("{}: tensor {tensor:?}: {reason}", path.display())]
    BadTensor { path: PathBuf, tensor: String, reason: String },
    /// The on-device adapter store (its folder, index or a version in it).
    #[error("adapter store {}: {reason}", path.display())]
    Store { path: PathBuf, reason: String },
    #[error("adapter store: no {what}")]
    NotInStore { what: String },
}

/// Training: its data, options and checkpoints.
#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    #[error("{}:{line}: field {field:?}: {reason}", path.display())]
    Record { path: PathBuf, line: usize, field: String, reason: String },
    #[error("{}: {reason}", path.display())]
    DataFile { path: PathBuf, reason: String },
    #[error("option {option}: {reason}")]
    BadOption { option: String, reason: String },
    #[error("checkpoint {}: {reason}", path.display())]
    Checkpoint { path: PathBuf, reason: String },
    #[error("loss is {loss} at step {step} (diverged); lower --lr")]
    Diverged { step: usize, loss: f64 },
    #[error("memory budget {budget_mb:.0} MiB is too small: {reason}")]
    Memory { estimate_mb: f64, budget_mb: f64, reason: String },
}
