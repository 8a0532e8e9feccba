//! A thin, safe RAII layer over llama.cpp's C API (`llama_cpp_sys_2`) for the llama.cpp
//! backend: model, context, batch and LoRA adapter handles, tokenizer and chat template.
//!
//! The safe `llama-cpp-2` wrapper does not expose its raw handles and applies one adapter
//! at a time; several adapters with scales need `llama_set_adapters_lora` directly, so the
//! backend owns its handles here. llama.cpp reports failures as NULL plus a log line: a log
//! hook keeps the recent error lines so that every error returned here says why.

use std::collections::VecDeque;
use std::ffi::{c_char, c_void, CStr, CString};
use std::path::Path;
use std::ptr::NonNull;
use std::sync::{Mutex, OnceLock};

use llama_cpp_2::llama_backend::LlamaBackend;
use llama_cpp_sys_2 as sys;

use crate::error::EngineError;

pub type Token = i32;

/// llama.cpp's process-wide backend, initialized once.
pub fn backend() -> &'static LlamaBackend {
    static BACKEND: OnceLock<LlamaBackend> = OnceLock::new();
    BACKEND.get_or_init(|| {
        install_log_hook();
        LlamaBackend::init().expect("llama.cpp's backend is initialized only here")
    })
}

// ---------------------------------------------------------------------------------------
// Logging: quiet by default (EDGELORA_LLAMA_LOG=1 prints everything), recent errors kept.

static RECENT_ERRORS: Mutex<VecDeque<String>> = Mutex::new(VecDeque::new());
const KEPT_ERRORS: usize = 8;

fn install_log_hook() {
    let verbose = std::env::var_os("EDGELORA_LLAMA_LOG").is_some_and(|v| v != "0");
    let data = if verbose { 1usize } else { 0usize } as *mut c_void;
    // SAFETY: `log_hook` is a plain function valid for the whole program; `data` is a
    // flag smuggled in the pointer value and never dereferenced.
    unsafe { sys::llama_log_set(Some(log_hook), data) };
}

unsafe extern "C" fn log_hook(level: sys::ggml_log_level, text: *const c_char, data: *mut c_void) {
    if text.is_null() {
        return;
    }
    // SAFETY: llama.cpp passes a NUL-terminated string valid for the call.
    let msg = unsafe { CStr::from_ptr(text) }.to_string_lossy();
    if !data.is_null() {
        eprint!("{msg}");
    }
    if level == sys::GGML_LOG_LEVEL_ERROR || level == sys::GGML_LOG_LEVEL_WARN {
        if let Ok(mut q) = RECENT_ERRORS.lock() {
            let line = msg.trim();
            if !line.is_empty() {
                if q.len() == KEPT_ERRORS {
                    q.pop_front();
                }
                q.push_back(line.to_string());
            }
        }
    }
}

fn clear_recent_errors() {
    if let Ok(mut q) = RECENT_ERRORS.lock() {
        q.clear();
    }
}

/// The error lines llama.cpp logged since the last clear, or a fallback.
fn recent_errors(fallback: &str) -> String {
    let lines: Vec<String> = RECENT_ERRORS.lock().map(|q| q.iter().cloned().collect()).unwrap_or_default();
    if lines.is_empty() {
        fallback.to_string()
    } else {
        lines.join("; ")
    }
}

fn c_path(path: &Path) -> Result<CString, String> {
    let s = path.to_str().ok_or("path is not valid UTF-8")?;
    CString::new(s).map_err(|_| "path contains a NUL byte".to_string())
}

// ---------------------------------------------------------------------------------------

/// An owned `llama_model`.
pub struct Model {
    ptr: NonNull<sys::llama_model>,
}

// SAFETY: llama.cpp's model is immutable after load except when adapters are added or
// removed; the runtime serializes those (and every decode) behind one mutex.
unsafe impl Send for Model {}
// SAFETY: shared access only reads (vocabulary, metadata), which llama.cpp allows.
unsafe impl Sync for Model {}

thread_local! {
    static MODEL_LOADS: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
}

/// How many times this thread has asked llama.cpp to load a model ([`Model::load`], which
/// every llama.cpp context comes from). Per thread, so that a test can tell whether a call
/// (e.g. `NativeRuntime::load`, which must not touch llama.cpp) loaded one while other
/// tests run beside it.
pub fn model_loads_on_this_thread() -> usize {
    MODEL_LOADS.with(|n| n.get())
}

impl Model {
    /// Loads a GGUF model for CPU inference (memory-mapped by llama.cpp).
    pub fn load(path: &Path, use_mmap: bool) -> Result<Model, EngineError> {
        MODEL_LOADS.with(|n| n.set(n.get() + 1));
        let fail = |reason: String| EngineError::ModelLoad { path: path.to_path_buf(), reason };
        let cpath = c_path(path).map_err(fail)?;
        backend();
        // SAFETY: plain-data default parameters.
        let mut params = unsafe { sys::llama_model_default_params() };
        params.n_gpu_layers = 0;
        params.load_mode = if use_mmap { sys::LLAMA_LOAD_MODE_MMAP } else { sys::LLAMA_LOAD_MODE_NONE };
        clear_recent_errors();
        // SAFETY: `cpath` is a valid C string for the call; params are by value.
        let ptr = unsafe { sys::llama_model_load_from_file(cpath.as_ptr(), params) };
        NonNull::new(ptr)
            .map(|ptr| Model { ptr })
            .ok_or_else(|| fail(format!("llama.cpp could not load the model: {}", recent_errors("no reason given"))))
    }

    fn vocab(&self) -> *const sys::llama_vocab {
        // SAFETY: the model is alive; the vocab lives as long as the model.
        unsafe { sys::llama_model_get_vocab(self.ptr.as_ptr()) }
    }

    pub fn n_vocab(&self) -> usize {
        // SAFETY: valid vocab pointer.
        unsafe { sys::llama_vocab_n_tokens(self.vocab()) }.max(0) as usize
    }

    pub fn n_ctx_train(&self) -> usize {
        // SAFETY: valid model pointer.
        unsafe { sys::llama_model_n_ctx_train(self.ptr.as_ptr()) }.max(0) as usize
    }

    pub fn description(&self) -> String {
        let mut buf = vec![0u8; 256];
        // SAFETY: the buffer is writable for its length; llama.cpp NUL-terminates.
        let n = unsafe { sys::llama_model_desc(self.ptr.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
        buf.truncate(n.clamp(0, 255) as usize);
        String::from_utf8_lossy(&buf).into_owned()
    }

    pub fn is_eog(&self, token: Token) -> bool {
        // SAFETY: valid vocab pointer; any token id is accepted.
        unsafe { sys::llama_vocab_is_eog(self.vocab(), token) }
    }

    /// The end-of-sequence token (−1 in llama.cpp when the vocabulary has none).
    pub fn bos_token(&self) -> Option<Token> {
        // SAFETY: valid vocab pointer.
        let t = unsafe { sys::llama_vocab_bos(self.vocab()) };
        (t >= 0).then_some(t)
    }

    pub fn eos_token(&self) -> Option<Token> {
        // SAFETY: valid vocab pointer.
        let t = unsafe { sys::llama_vocab_eos(self.vocab()) };
        (t >= 0).then_some(t)
    }

    /// Text → tokens. `parse_special` turns written special tokens (`<|im_start|>`) into
    /// their ids; `add_special` adds BOS/EOS where the model asks for them.
    pub fn tokenize(&self, text: &str, add_special: bool, parse_special: bool) -> Result<Vec<Token>, EngineError> {
        let len = i32::try_from(text.len()).map_err(|_| EngineError::Tokenize("text longer than 2 GiB".into()))?;
        let mut out: Vec<Token> = vec![0; text.len() + 2];
        for _ in 0..2 {
            // SAFETY: `text` is valid for `len` bytes; `out` is writable for its length.
            let n = unsafe {
                sys::llama_tokenize(self.vocab(), text.as_ptr().cast(), len, out.as_mut_ptr(), out.len() as i32, add_special, parse_special)
            };
            if n >= 0 {
                out.truncate(n as usize);
                return Ok(out);
            }
            if n == i32::MIN {
                break;
            }
            out.resize(n.unsigned_abs() as usize, 0);
        }
        Err(EngineError::Tokenize("llama_tokenize failed".into()))
    }

    /// The bytes of one token (special tokens rendered when `special`).
    pub fn token_bytes(&self, token: Token, special: bool) -> Vec<u8> {
        // llama_token_to_piece throws (and the exception aborts across the C boundary)
        // for an id outside the vocabulary: such an id has no text.
        if token < 0 || token as usize >= self.n_vocab() {
            return Vec::new();
        }
        let mut buf = vec![0u8; 64];
        for _ in 0..2 {
            // SAFETY: the buffer is writable for its length; no NUL is written.
            let n = unsafe {
                sys::llama_token_to_piece(self.vocab(), token, buf.as_mut_ptr().cast(), buf.len() as i32, 0, special)
            };
            if n >= 0 {
                buf.truncate(n as usize);
                return buf;
            }
            buf.resize(n.unsigned_abs() as usize, 0);
        }
        Vec::new()
    }

    /// The model's built-in chat template (`tokenizer.chat_template`), if any.
    pub fn chat_template(&self) -> Option<CString> {
        // SAFETY: valid model; NULL name asks for the default template. The returned
        // string is owned by the model; it is copied before the model can go away.
        let p = unsafe { sys::llama_model_chat_template(self.ptr.as_ptr(), std::ptr::null()) };
        if p.is_null() {
            None
        } else {
            // SAFETY: non-NULL, NUL-terminated, alive as long as the model.
            Some(unsafe { CStr::from_ptr(p) }.to_owned())
        }
    }

    /// Renders chat messages with `template` (llama.cpp's built-in template engine).
    pub fn apply_chat_template(&self, template: &CStr, messages: &[(String, String)], add_assistant: bool) -> Result<String, EngineError> {
        let owned: Vec<(CString, CString)> = messages
            .iter()
            .map(|(r, c)| Ok((CString::new(r.as_str())?, CString::new(c.as_str())?)))
            .collect::<Result<_, std::ffi::NulError>>()
            .map_err(|_| EngineError::ChatTemplate("a message contains a NUL byte".into()))?;
        let msgs: Vec<sys::llama_chat_message> =
            owned.iter().map(|(r, c)| sys::llama_chat_message { role: r.as_ptr(), content: c.as_ptr() }).collect();
        let total: usize = messages.iter().map(|(r, c)| r.len() + c.len()).sum();
        let mut buf = vec![0u8; (total * 2 + 256).min(i32::MAX as usize)];
        for _ in 0..2 {
            // SAFETY: all pointers are valid C strings kept alive by `owned`; the buffer
            // is writable for its length.
            let n = unsafe {
                sys::llama_chat_apply_template(template.as_ptr(), msgs.as_ptr(), msgs.len(), add_assistant, buf.as_mut_ptr().cast(), buf.len() as i32)
            };
            if n < 0 {
                return Err(EngineError::ChatTemplate("llama.cpp does not support this model's chat template".into()));
            }
            if (n as usize) <= buf.len() {
                buf.truncate(n as usize);
                return String::from_utf8(buf).map_err(|_| EngineError::ChatTemplate("rendered prompt is not UTF-8".into()));
            }
            buf.resize(n as usize, 0);
        }
        Err(EngineError::ChatTemplate("template output kept growing".into()))
    }

    /// Loads a GGUF-LoRA adapter onto this model.
    pub fn load_adapter(&self, path: &Path) -> Result<Adapter, EngineError> {
        let fail = |reason: String| EngineError::AdapterLoad { path: path.to_path_buf(), reason };
        let cpath = c_path(path).map_err(fail)?;
        clear_recent_errors();
        // SAFETY: valid model and C string. Callers hold the runtime's mutex, so no decode
        // runs while the model's adapter list changes.
        let ptr = unsafe { sys::llama_adapter_lora_init(self.ptr.as_ptr(), cpath.as_ptr()) };
        NonNull::new(ptr).map(|ptr| Adapter { ptr }).ok_or_else(|| fail(recent_errors("no reason given")))
    }

    /// Loads a GGUF-LoRA image held in memory (read through `fmemopen`, nothing is
    /// written to disk). `label` names it in errors.
    pub fn load_adapter_bytes(&self, bytes: &[u8], label: &Path) -> Result<Adapter, EngineError> {
        let fail = |reason: String| EngineError::AdapterLoad { path: label.to_path_buf(), reason };
        if bytes.is_empty() {
            return Err(fail("empty adapter image".into()));
        }
        // SAFETY: fmemopen reads from `bytes`, which outlives the stream (closed below);
        // mode "rb" never writes to the buffer, so casting away const is sound.
        let file = unsafe { libc::fmemopen(bytes.as_ptr() as *mut c_void, bytes.len(), c"rb".as_ptr()) };
        if file.is_null() {
            return Err(fail(format!("fmemopen failed: {}", std::io::Error::last_os_error())));
        }
        clear_recent_errors();
        // SAFETY: valid model and an open stream; the runtime's mutex is held by callers.
        let ptr = unsafe { sys::llama_adapter_lora_init_from_file_ptr(self.ptr.as_ptr(), file.cast()) };
        // SAFETY: the stream was opened above and is closed exactly once.
        unsafe { libc::fclose(file) };
        NonNull::new(ptr).map(|ptr| Adapter { ptr }).ok_or_else(|| fail(recent_errors("no reason given")))
    }

    /// Creates an inference context.
    pub fn new_context(&self, n_ctx: u32, n_batch: u32, n_threads: i32, f32_kv: bool, flash_attention: Option<bool>) -> Result<Context, EngineError> {
        // SAFETY: plain-data defaults.
        let mut p = unsafe { sys::llama_context_default_params() };
        p.n_ctx = n_ctx;
        p.n_batch = n_batch;
        p.n_ubatch = n_batch;
        p.n_seq_max = 1;
        p.n_threads = n_threads;
        p.n_threads_batch = n_threads;
        p.no_perf = true;
        // Set, not taken from the file: a model marked non-causal would reach
        // llama_decode's GGML_ASSERT(causal_attn || n_ubatch >= n_tokens); no embeddings.
        p.attention_type = sys::LLAMA_ATTENTION_TYPE_CAUSAL;
        p.pooling_type = sys::LLAMA_POOLING_TYPE_NONE;
        p.embeddings = false;
        p.flash_attn_type = match flash_attention {
            None => sys::LLAMA_FLASH_ATTN_TYPE_AUTO,
            Some(true) => sys::LLAMA_FLASH_ATTN_TYPE_ENABLED,
            Some(false) => sys::LLAMA_FLASH_ATTN_TYPE_DISABLED,
        };
        if f32_kv {
            p.type_k = sys::GGML_TYPE_F32;
            p.type_v = sys::GGML_TYPE_F32;
        }
        clear_recent_errors();
        // SAFETY: valid model; params by value.
        let ptr = unsafe { sys::llama_init_from_model(self.ptr.as_ptr(), p) };
        let ptr = NonNull::new(ptr)
            .ok_or_else(|| EngineError::Backend(format!("cannot create a context: {}", recent_errors("no reason given"))))?;
        // SAFETY: n_batch tokens, no embeddings, one sequence id per token.
        let batch = unsafe { sys::llama_batch_init(n_batch as i32, 0, 1) };
        // SAFETY: valid context.
        let n_ctx = unsafe { sys::llama_n_ctx(ptr.as_ptr()) } as usize;
        Ok(Context { ptr, batch, n_batch: n_batch as usize, n_ctx, n_vocab: self.n_vocab() })
    }
}

impl Drop for Model {
    fn drop(&mut self) {
        // SAFETY: owned pointer, freed once. Contexts and adapters are dropped first by
        // the runtime that owns all three.
        unsafe { sys::llama_model_free(self.ptr.as_ptr()) }
    }
}

/// An owned `llama_adapter_lora`. Must be dropped before its model.
pub struct Adapter {
    ptr: NonNull<sys::llama_adapter_lora>,
}

// SAFETY: the handle is only used under the runtime's mutex.
unsafe impl Send for Adapter {}
// SAFETY: as above; no method mutates through a shared reference.
unsafe impl Sync for Adapter {}

impl Adapter {
    /// A metadata string of the adapter (scalars only), if present.
    pub fn meta(&self, key: &str) -> Option<String> {
        let key = CString::new(key).ok()?;
        let mut buf = vec![0u8; 256];
        // SAFETY: valid handle, C string and writable buffer.
        let n = unsafe { sys::llama_adapter_meta_val_str(self.ptr.as_ptr(), key.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
        if n < 0 {
            return None;
        }
        buf.truncate((n as usize).min(255));
        Some(String::from_utf8_lossy(&buf).into_owned())
    }
}

impl Drop for Adapter {
    fn drop(&mut self) {
        // SAFETY: owned, freed once, and (by the runtime) never while a context still
        // has it set.
        unsafe { sys::llama_adapter_lora_free(self.ptr.as_ptr()) }
    }
}

/// An owned `llama_context` with its token batch. Must be dropped before its model.
pub struct Context {
    ptr: NonNull<sys::llama_context>,
    batch: sys::llama_batch,
    n_batch: usize,
    n_ctx: usize,
    n_vocab: usize,
}

// SAFETY: used only under the runtime's mutex.
unsafe impl Send for Context {}

impl Context {
    pub fn n_ctx(&self) -> usize {
        self.n_ctx
    }

    pub fn n_batch(&self) -> usize {
        self.n_batch
    }

    /// Sets the active adapters with their scales (an empty list clears them).
    pub fn set_adapters(&mut self, adapters: &[(&Adapter, f32)]) -> Result<(), EngineError> {
        let mut ptrs: Vec<*mut sys::llama_adapter_lora> = adapters.iter().map(|(a, _)| a.ptr.as_ptr()).collect();
        let mut scales: Vec<f32> = adapters.iter().map(|(_, s)| *s).collect();
        let (pp, sp) = if ptrs.is_empty() {
            (std::ptr::null_mut(), std::ptr::null_mut())
        } else {
            (ptrs.as_mut_ptr(), scales.as_mut_ptr())
        };
        clear_recent_errors();
        // SAFETY: valid context; arrays of equal length alive for the call; every
        // adapter belongs to this context's model.
        let rc = unsafe { sys::llama_set_adapters_lora(self.ptr.as_ptr(), pp, ptrs.len(), sp) };
        if rc != 0 {
            return Err(EngineError::Backend(format!("setting adapters failed ({rc}): {}", recent_errors("no reason given"))));
        }
        Ok(())
    }

    /// Forgets every cached position. Only the cells' metadata is cleared: stale keys and
    /// values stay in the buffers but are masked out, and zeroing a 2048-token cache
    /// would cost about half a millisecond per adapter switch.
    pub fn clear_memory(&mut self) {
        // SAFETY: valid context; its memory handle lives as long as it does.
        unsafe { sys::llama_memory_clear(sys::llama_get_memory(self.ptr.as_ptr()), false) }
    }

    /// Drops cached positions `from..`; false when llama.cpp cannot do so partially.
    pub fn truncate_memory(&mut self, from: usize) -> bool {
        // SAFETY: valid context and memory.
        unsafe { sys::llama_memory_seq_rm(sys::llama_get_memory(self.ptr.as_ptr()), 0, from as i32, -1) }
    }

    /// Decodes `tokens` at positions `start..`, in chunks of at most `n_batch`. Returns
    /// logits for the last token, or for every token when `all_logits`, each `n_vocab`
    /// long. `cancelled` is polled between chunks.
    pub fn decode(
        &mut self,
        tokens: &[Token],
        start: usize,
        all_logits: bool,
        cancelled: &dyn Fn() -> bool,
    ) -> Result<Option<Vec<Vec<f32>>>, EngineError> {
        if start + tokens.len() > self.n_ctx {
            return Err(EngineError::ContextFull { needed: start + tokens.len(), n_ctx: self.n_ctx });
        }
        for &t in tokens {
            if t < 0 || t as usize >= self.n_vocab {
                return Err(EngineError::BadToken { id: t.into(), n_vocab: self.n_vocab });
            }
        }
        let mut out = Vec::new();
        let n_chunks = tokens.len().div_ceil(self.n_batch);
        for (ci, chunk) in tokens.chunks(self.n_batch).enumerate() {
            if cancelled() {
                return Ok(None);
            }
            let last_chunk = ci + 1 == n_chunks;
            let pos0 = start + ci * self.n_batch;
            // SAFETY: the batch was allocated for n_batch tokens with one seq id each;
            // `chunk.len() <= n_batch`.
            unsafe {
                let b = &mut self.batch;
                for (i, &t) in chunk.iter().enumerate() {
                    *b.token.add(i) = t;
                    *b.pos.add(i) = (pos0 + i) as i32;
                    *b.n_seq_id.add(i) = 1;
                    **b.seq_id.add(i) = 0;
                    *b.logits.add(i) = i8::from(all_logits || (last_chunk && i + 1 == chunk.len()));
                }
                b.n_tokens = chunk.len() as i32;
            }
            clear_recent_errors();
            // SAFETY: valid context and a batch filled above.
            let rc = unsafe { sys::llama_decode(self.ptr.as_ptr(), self.batch) };
            if rc != 0 {
                return Err(EngineError::Backend(format!("llama_decode returned {rc}: {}", recent_errors("no reason given"))));
            }
            for i in 0..chunk.len() {
                if all_logits || (last_chunk && i + 1 == chunk.len()) {
                    // SAFETY: logits were requested for output i of this batch; llama.cpp
                    // returns n_vocab floats valid until the next decode (copied now).
                    let p = unsafe { sys::llama_get_logits_ith(self.ptr.as_ptr(), i as i32) };
                    if p.is_null() {
                        return Err(EngineError::Backend(format!("no logits for batch position {i}")));
                    }
                    // SAFETY: as above.
                    out.push(unsafe { std::slice::from_raw_parts(p, self.n_vocab) }.to_vec());
                }
            }
        }
        Ok(Some(out))
    }
}

impl Drop for Context {
    fn drop(&mut self) {
        // SAFETY: owned batch and context, each freed once.
        unsafe {
            sys::llama_batch_free(self.batch);
            sys::llama_free(self.ptr.as_ptr());
        }
    }
}
