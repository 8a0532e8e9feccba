//! `extern "C"` entry points. See the module docs of `ffi` for the conventions.

use std::cell::RefCell;
use std::ffi::{c_char, c_void, CStr, CString};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::ptr;

use crate::engine::{load_sdk_engine, CancelFlag, ChatMessage, Engine, GenerateRequest, Prompt, RuntimeOptions, SamplingParams, StopReason};
use crate::error::{AdapterError, EngineError, Error, GgufError, TrainError};

/// Result of every fallible call.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EdgeloraStatus {
    Ok = 0,
    /// A NULL or malformed argument (bad UTF-8, out-of-range option).
    InvalidArgument = 1,
    /// A file could not be opened or read.
    Io = 2,
    /// A file is not a valid GGUF model, GGUF-LoRA or PEFT adapter.
    Format = 3,
    /// The adapter does not fit the model (architecture, tensor names, shapes).
    AdapterMismatch = 4,
    /// No loaded adapter has that name.
    NotFound = 5,
    /// An adapter with that name is already loaded.
    AlreadyExists = 6,
    /// The request does not fit in the context.
    ContextFull = 7,
    /// llama.cpp failed.
    Backend = 8,
    /// A bug: the library panicked (the message says where).
    Panic = 9,
    /// Training stopped by its callback or `edgelora_train_cancel` (the checkpoint is saved).
    Cancelled = 10,
    /// The training job's memory budget is too small for any configuration (the message
    /// states the estimate and the budget).
    MemoryBudget = 11,
}

/// Why a generation ended.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EdgeloraStopReason {
    MaxTokens = 0,
    EndOfGeneration = 1,
    StopString = 2,
    Cancelled = 3,
    ContextFull = 4,
}

/// A loaded model with its adapters (on llama.cpp, or on the native engine in builds
/// without the `llama` feature). Opaque.
pub struct EdgeloraRuntime {
    rt: Box<dyn Engine>,
}

/// A cancellation flag shared between a running request and other threads. Opaque.
pub struct EdgeloraCancel {
    flag: CancelFlag,
}

/// Options for [`edgelora_runtime_open`]; start from [`edgelora_runtime_options_default`].
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct EdgeloraRuntimeOptions {
    /// CPU threads; 0 = all cores.
    pub threads: u32,
    /// Context length in tokens; 0 = 2048.
    pub n_ctx: u32,
}

/// Streaming callback: one piece of UTF-8 text (NUL-terminated, valid during the call).
/// Return false to cancel the request.
pub type EdgeloraTokenCallback = Option<unsafe extern "C" fn(piece: *const c_char, user_data: *mut c_void) -> bool>;

/// One generation request; start from [`edgelora_generate_params_default`].
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct EdgeloraGenerateParams {
    /// UTF-8 prompt (required).
    pub prompt: *const c_char,
    /// Render the prompt as a user message with the model's chat template.
    pub chat: bool,
    /// `n_adapters` adapter names (loaded with `edgelora_adapter_load`) and scales.
    pub adapter_names: *const *const c_char,
    pub adapter_scales: *const f32,
    pub n_adapters: usize,
    pub max_tokens: u32,
    /// 0 = greedy.
    pub temperature: f32,
    pub top_k: u32,
    pub top_p: f32,
    pub min_p: f32,
    pub repeat_penalty: f32,
    pub seed: u64,
    /// Optional cancellation flag (may be NULL).
    pub cancel: *const EdgeloraCancel,
}

/// What a finished request produced. Free `text` with [`edgelora_string_free`].
#[repr(C)]
#[derive(Debug)]
pub struct EdgeloraGenerateResult {
    pub text: *mut c_char,
    pub n_prompt_tokens: u32,
    pub n_generated_tokens: u32,
    pub stop_reason: EdgeloraStopReason,
}

thread_local! {
    static LAST_ERROR: RefCell<CString> = RefCell::new(CString::default());
}

pub(super) fn set_error(msg: String) {
    let c = CString::new(msg.replace('\0', "\\0")).unwrap_or_default();
    LAST_ERROR.with(|e| *e.borrow_mut() = c);
}

pub(super) fn status_for(e: &Error) -> EdgeloraStatus {
    match e {
        Error::Gguf(GgufError::Io { .. }) => EdgeloraStatus::Io,
        Error::Gguf(_) => EdgeloraStatus::Format,
        Error::Adapter(AdapterError::Invalid { .. }) => EdgeloraStatus::Format,
        Error::Adapter(AdapterError::Store { .. }) => EdgeloraStatus::Io,
        Error::Adapter(AdapterError::NotInStore { .. }) => EdgeloraStatus::NotFound,
        Error::Adapter(_) => EdgeloraStatus::AdapterMismatch,
        Error::Engine(EngineError::UnknownAdapter { .. }) => EdgeloraStatus::NotFound,
        Error::Engine(EngineError::DuplicateAdapter { .. }) => EdgeloraStatus::AlreadyExists,
        Error::Engine(EngineError::ContextFull { .. }) => EdgeloraStatus::ContextFull,
        Error::Engine(EngineError::ModelLoad { .. } | EngineError::AdapterLoad { .. } | EngineError::UnsupportedVocab { .. }) => EdgeloraStatus::Format,
        Error::Engine(EngineError::Backend(_)) => EdgeloraStatus::Backend,
        Error::Engine(_) => EdgeloraStatus::InvalidArgument,
        Error::Train(TrainError::Record { .. } | TrainError::DataFile { .. } | TrainError::Checkpoint { .. }) => EdgeloraStatus::Format,
        Error::Train(TrainError::Memory { .. }) => EdgeloraStatus::MemoryBudget,
        Error::Train(_) => EdgeloraStatus::InvalidArgument,
        Error::Serve(_) => EdgeloraStatus::InvalidArgument,
        Error::Tokenizer(_) => EdgeloraStatus::Format,
    }
}

/// Runs `f`, turning errors and panics into a status and the thread's last error.
pub(super) fn guard(f: impl FnOnce() -> Result<(), (EdgeloraStatus, String)>) -> EdgeloraStatus {
    match catch_unwind(AssertUnwindSafe(f)) {
        Ok(Ok(())) => {
            set_error(String::new());
            EdgeloraStatus::Ok
        }
        Ok(Err((status, msg))) => {
            set_error(msg);
            status
        }
        Err(panic) => {
            let what = panic
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "unknown panic".into());
            set_error(format!("internal error (panic): {what}"));
            EdgeloraStatus::Panic
        }
    }
}

pub(super) fn lib_err(e: Error) -> (EdgeloraStatus, String) {
    (status_for(&e), e.chain())
}

pub(super) fn arg_err(msg: impl Into<String>) -> (EdgeloraStatus, String) {
    (EdgeloraStatus::InvalidArgument, msg.into())
}

/// # Safety
/// `p` is NULL or a NUL-terminated string valid for the call.
pub(super) unsafe fn str_arg<'a>(p: *const c_char, what: &str) -> Result<&'a str, (EdgeloraStatus, String)> {
    if p.is_null() {
        return Err(arg_err(format!("{what} is NULL")));
    }
    // SAFETY: non-NULL and NUL-terminated by the caller's contract.
    unsafe { CStr::from_ptr(p) }.to_str().map_err(|_| arg_err(format!("{what} is not valid UTF-8")))
}

/// # Safety
/// `p` is NULL or a pointer from `edgelora_runtime_open` not yet closed.
unsafe fn runtime_arg<'a>(p: *const EdgeloraRuntime) -> Result<&'a EdgeloraRuntime, (EdgeloraStatus, String)> {
    // SAFETY: the caller passes a live handle or NULL (checked).
    unsafe { p.as_ref() }.ok_or_else(|| arg_err("runtime is NULL"))
}

/// The message of this thread's last failed call ("" after a success). Valid until the
/// next edgelora call on this thread; never NULL; do not free.
#[no_mangle]
pub extern "C" fn edgelora_last_error() -> *const c_char {
    LAST_ERROR.with(|e| e.borrow().as_ptr())
}

/// The library version, e.g. "0.1.0". Static; do not free.
#[no_mangle]
pub extern "C" fn edgelora_version() -> *const c_char {
    concat!(env!("CARGO_PKG_VERSION"), "\0").as_ptr().cast()
}

/// Frees a string returned by the library. NULL is ignored.
///
/// # Safety
/// `s` is NULL or a string the library returned and not yet freed.
#[no_mangle]
pub unsafe extern "C" fn edgelora_string_free(s: *mut c_char) {
    if !s.is_null() {
        // SAFETY: allocated by CString::into_raw in this library, freed once.
        drop(unsafe { CString::from_raw(s) });
    }
}

/// Default runtime options.
#[no_mangle]
pub extern "C" fn edgelora_runtime_options_default() -> EdgeloraRuntimeOptions {
    EdgeloraRuntimeOptions { threads: 0, n_ctx: 0 }
}

/// Maps a GGUF model and creates a runtime. On success `*out` holds a handle to close
/// with [`edgelora_runtime_close`]; on failure `*out` is NULL.
///
/// # Safety
/// `model_path` is a NUL-terminated string; `options` is NULL or valid; `out` is valid.
#[no_mangle]
pub unsafe extern "C" fn edgelora_runtime_open(
    model_path: *const c_char,
    options: *const EdgeloraRuntimeOptions,
    out: *mut *mut EdgeloraRuntime,
) -> EdgeloraStatus {
    guard(|| {
        if out.is_null() {
            return Err(arg_err("out is NULL"));
        }
        // SAFETY: checked non-NULL; the caller owns the slot.
        unsafe { *out = ptr::null_mut() };
        // SAFETY: caller contract.
        let path = unsafe { str_arg(model_path, "model_path") }?;
        // SAFETY: NULL or valid by contract.
        let o = unsafe { options.as_ref() }.copied().unwrap_or_else(|| edgelora_runtime_options_default());
        let mut opts = RuntimeOptions::default();
        if o.threads > 0 {
            opts.threads = o.threads as usize;
        }
        if o.n_ctx > 0 {
            opts.n_ctx = o.n_ctx;
        }
        let rt = load_sdk_engine(std::path::Path::new(path), opts).map_err(lib_err)?;
        // SAFETY: as above.
        unsafe { *out = Box::into_raw(Box::new(EdgeloraRuntime { rt })) };
        Ok(())
    })
}

/// Frees a runtime and every adapter loaded on it. NULL is ignored.
///
/// # Safety
/// `rt` is NULL or a handle from `edgelora_runtime_open`, closed once, unused by other
/// threads.
#[no_mangle]
pub unsafe extern "C" fn edgelora_runtime_close(rt: *mut EdgeloraRuntime) {
    if !rt.is_null() {
        let _ = catch_unwind(AssertUnwindSafe(|| {
            // SAFETY: created by Box::into_raw in edgelora_runtime_open, freed once.
            drop(unsafe { Box::from_raw(rt) })
        }));
    }
}

/// Loads an adapter (GGUF-LoRA file or PEFT folder) under `name`; the model is not
/// reloaded. Thread-safe.
///
/// # Safety
/// `rt` is a live runtime; `name` and `path` are NUL-terminated strings.
#[no_mangle]
pub unsafe extern "C" fn edgelora_adapter_load(rt: *const EdgeloraRuntime, name: *const c_char, path: *const c_char) -> EdgeloraStatus {
    guard(|| {
        // SAFETY: caller contract for each argument.
        let (rt, name, path) = unsafe { (runtime_arg(rt)?, str_arg(name, "name")?, str_arg(path, "path")?) };
        rt.rt.load_adapter(name, std::path::Path::new(path), crate::adapter::ReadOptions::default()).map_err(lib_err)?;
        Ok(())
    })
}

/// `edgelora_adapter_load` for a PEFT config whose `target_modules` (or
/// `layers_to_transform`) name modules the model does not have, which
/// `edgelora_adapter_load` refuses: the adapter loads, and on success
/// `edgelora_last_error()` holds the warnings, one per line ("" when there are none).
///
/// # Safety
/// As `edgelora_adapter_load`.
#[no_mangle]
pub unsafe extern "C" fn edgelora_adapter_load_lenient(rt: *const EdgeloraRuntime, name: *const c_char, path: *const c_char) -> EdgeloraStatus {
    let mut warnings = String::new();
    let status = guard(|| {
        // SAFETY: caller contract for each argument.
        let (rt, name, path) = unsafe { (runtime_arg(rt)?, str_arg(name, "name")?, str_arg(path, "path")?) };
        let loaded = rt.rt.load_adapter(name, std::path::Path::new(path), crate::adapter::ReadOptions { lenient: true }).map_err(lib_err)?;
        warnings = loaded.join("\n");
        Ok(())
    });
    if status == EdgeloraStatus::Ok {
        set_error(warnings);
    }
    status
}

/// Unloads the adapter `name`. Thread-safe.
///
/// # Safety
/// `rt` is a live runtime; `name` is a NUL-terminated string.
#[no_mangle]
pub unsafe extern "C" fn edgelora_adapter_unload(rt: *const EdgeloraRuntime, name: *const c_char) -> EdgeloraStatus {
    guard(|| {
        // SAFETY: caller contract.
        let (rt, name) = unsafe { (runtime_arg(rt)?, str_arg(name, "name")?) };
        rt.rt.unload_adapter(name).map_err(lib_err)
    })
}

/// Creates a cancellation flag; free with [`edgelora_cancel_free`].
#[no_mangle]
pub extern "C" fn edgelora_cancel_new() -> *mut EdgeloraCancel {
    Box::into_raw(Box::new(EdgeloraCancel { flag: CancelFlag::new() }))
}

/// Raises the flag: a request using it stops at its next token. Any thread.
///
/// # Safety
/// `c` is NULL or a live flag.
#[no_mangle]
pub unsafe extern "C" fn edgelora_cancel_trigger(c: *const EdgeloraCancel) {
    // SAFETY: NULL or live by contract.
    if let Some(c) = unsafe { c.as_ref() } {
        c.flag.cancel();
    }
}

/// Lowers the flag so it can be reused.
///
/// # Safety
/// `c` is NULL or a live flag.
#[no_mangle]
pub unsafe extern "C" fn edgelora_cancel_reset(c: *const EdgeloraCancel) {
    // SAFETY: NULL or live by contract.
    if let Some(c) = unsafe { c.as_ref() } {
        c.flag.reset();
    }
}

/// Frees a flag. NULL is ignored.
///
/// # Safety
/// `c` is NULL or a flag from `edgelora_cancel_new`, not used by a running request.
#[no_mangle]
pub unsafe extern "C" fn edgelora_cancel_free(c: *mut EdgeloraCancel) {
    if !c.is_null() {
        // SAFETY: created by Box::into_raw, freed once.
        drop(unsafe { Box::from_raw(c) });
    }
}

/// Defaults: greedy, 128 tokens, no adapters.
#[no_mangle]
pub extern "C" fn edgelora_generate_params_default() -> EdgeloraGenerateParams {
    let s = SamplingParams::default();
    EdgeloraGenerateParams {
        prompt: ptr::null(),
        chat: false,
        adapter_names: ptr::null(),
        adapter_scales: ptr::null(),
        n_adapters: 0,
        max_tokens: 128,
        temperature: s.temperature,
        top_k: s.top_k as u32,
        top_p: s.top_p,
        min_p: s.min_p,
        repeat_penalty: s.repeat_penalty,
        seed: s.seed,
        cancel: ptr::null(),
    }
}

/// Runs a request, streaming text pieces to `callback` (may be NULL). On success
/// `*result` holds the whole text (free `result->text` with `edgelora_string_free`); a
/// cancelled request succeeds with `stop_reason` CANCELLED and the text so far.
/// Thread-safe (requests on one runtime run one at a time).
///
/// # Safety
/// `rt` is live; `params` and `result` are valid; `params` arrays hold `n_adapters`
/// entries; `callback` is NULL or callable with `user_data`.
#[no_mangle]
pub unsafe extern "C" fn edgelora_runtime_generate(
    rt: *const EdgeloraRuntime,
    params: *const EdgeloraGenerateParams,
    callback: EdgeloraTokenCallback,
    user_data: *mut c_void,
    result: *mut EdgeloraGenerateResult,
) -> EdgeloraStatus {
    guard(|| {
        if result.is_null() {
            return Err(arg_err("result is NULL"));
        }
        // SAFETY: checked non-NULL.
        unsafe {
            *result = EdgeloraGenerateResult { text: ptr::null_mut(), n_prompt_tokens: 0, n_generated_tokens: 0, stop_reason: EdgeloraStopReason::MaxTokens }
        };
        // SAFETY: caller contract.
        let rt = unsafe { runtime_arg(rt) }?;
        // SAFETY: caller contract (NULL checked).
        let p = unsafe { params.as_ref() }.ok_or_else(|| arg_err("params is NULL"))?;
        // SAFETY: caller contract.
        let prompt = unsafe { str_arg(p.prompt, "params.prompt") }?;
        let mut adapters = Vec::with_capacity(p.n_adapters);
        if p.n_adapters > 0 {
            if p.adapter_names.is_null() || p.adapter_scales.is_null() {
                return Err(arg_err("params.adapter_names/adapter_scales are NULL but n_adapters > 0"));
            }
            for i in 0..p.n_adapters {
                // SAFETY: arrays hold n_adapters entries by contract.
                let (name, scale) = unsafe { (*p.adapter_names.add(i), *p.adapter_scales.add(i)) };
                // SAFETY: each name is a C string by contract.
                adapters.push((unsafe { str_arg(name, "params.adapter_names[i]") }?.to_string(), scale));
            }
        }
        let mut req = GenerateRequest::new(if p.chat {
            Prompt::Chat(vec![ChatMessage::new("user", prompt)])
        } else {
            Prompt::Text(prompt.to_string())
        });
        req.adapters = adapters;
        req.max_tokens = p.max_tokens as usize;
        req.sampling = SamplingParams {
            temperature: p.temperature,
            top_k: p.top_k as usize,
            top_p: p.top_p,
            min_p: p.min_p,
            repeat_penalty: p.repeat_penalty,
            repeat_last_n: 64,
            seed: p.seed,
        };
        // SAFETY: NULL or a live flag by contract.
        req.cancel = unsafe { p.cancel.as_ref() }.map(|c| c.flag.clone());
        let mut on_text = |piece: &str| -> bool {
            match callback {
                None => true,
                Some(cb) => {
                    let c = CString::new(piece.replace('\0', "")).unwrap_or_default();
                    // SAFETY: the callback and user_data are the caller's; the string
                    // lives for the call.
                    unsafe { cb(c.as_ptr(), user_data) }
                }
            }
        };
        let gen = rt.rt.generate(&req, &mut on_text).map_err(lib_err)?;
        let text = CString::new(gen.text.replace('\0', "")).unwrap_or_default();
        // SAFETY: checked non-NULL above.
        unsafe {
            *result = EdgeloraGenerateResult {
                text: text.into_raw(),
                n_prompt_tokens: gen.n_prompt as u32,
                n_generated_tokens: gen.tokens.len() as u32,
                stop_reason: match gen.stop_reason {
                    StopReason::MaxTokens => EdgeloraStopReason::MaxTokens,
                    StopReason::EndOfGeneration => EdgeloraStopReason::EndOfGeneration,
                    StopReason::StopString => EdgeloraStopReason::StopString,
                    StopReason::Cancelled => EdgeloraStopReason::Cancelled,
                    StopReason::ContextFull => EdgeloraStopReason::ContextFull,
                },
            }
        };
        Ok(())
    })
}

/// How `edgelora_merge_with` writes merged quantized tensors (the CLI's `--quantizer`).
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EdgeloraQuantizer {
    /// Per-block search for the smallest squared error (fast).
    Refit = 0,
    /// ggml's reference quantizer (what llama-quantize writes).
    Ggml = 1,
    /// GPTQ codes and refit grids for the smallest output error on calibration tokens
    /// sampled from the adapted model (Q4_0/Q4_1/Q8_0; the closest to the adapter on the
    /// fly, but it runs the model: about two minutes for a 135M model on two cores). Also
    /// re-codes the attn_output/ffn_down tensors no adapter targets (same type and size) to
    /// take up the merged layers' errors; needs temporary disk beside the output up to the
    /// merged tensors' size.
    Gptq = 2,
    /// The most faithful one the output supports (what `edgelora_merge` uses): gptq when
    /// a merged weight is Q4_0/Q4_1/Q8_0, refit otherwise.
    Auto = 3,
}

/// Each C quantizer value and the library's quantizer it names (Auto is resolved
/// against the model).
const QUANTIZERS: [(EdgeloraQuantizer, crate::merge::Quantizer); 3] = [
    (EdgeloraQuantizer::Refit, crate::merge::Quantizer::Refit),
    (EdgeloraQuantizer::Ggml, crate::merge::Quantizer::Ggml),
    (EdgeloraQuantizer::Gptq, crate::merge::Quantizer::Gptq),
];

/// Merges `n` adapters (GGUF-LoRA files or PEFT folders) with `weights` into the model at
/// `model_path`, requantized to its own types, and writes the result to `out_path`
/// atomically (nothing is left under `out_path` on failure). Thread-safe; independent of
/// any runtime. Same as `edgelora_merge_with(…, EDGELORA_QUANTIZER_AUTO)`: the most
/// faithful quantizer the model's types allow (gptq for Q4_0/Q4_1/Q8_0 models, which runs
/// the model: minutes, not seconds; pass EDGELORA_QUANTIZER_REFIT for a fast merge).
///
/// # Safety
/// Paths are NUL-terminated strings; `adapter_paths` and `weights` hold `n` entries.
#[no_mangle]
pub unsafe extern "C" fn edgelora_merge(
    model_path: *const c_char,
    adapter_paths: *const *const c_char,
    weights: *const f32,
    n: usize,
    out_path: *const c_char,
) -> EdgeloraStatus {
    // SAFETY: forwarded caller contract.
    unsafe { edgelora_merge_with(model_path, adapter_paths, weights, n, out_path, EdgeloraQuantizer::Auto as u32) }
}

/// `edgelora_merge` with the quantizer chosen: `quantizer` is an `EdgeloraQuantizer`
/// value (any other is an invalid argument).
///
/// # Safety
/// Paths are NUL-terminated strings; `adapter_paths` and `weights` hold `n` entries.
#[no_mangle]
pub unsafe extern "C" fn edgelora_merge_with(
    model_path: *const c_char,
    adapter_paths: *const *const c_char,
    weights: *const f32,
    n: usize,
    out_path: *const c_char,
    quantizer: u32,
) -> EdgeloraStatus {
    guard(|| {
        // SAFETY: caller contract.
        let (model, out) = unsafe { (str_arg(model_path, "model_path")?, str_arg(out_path, "out_path")?) };
        if n > 0 && (adapter_paths.is_null() || weights.is_null()) {
            return Err(arg_err("adapter_paths/weights are NULL but n > 0"));
        }
        let auto = quantizer == EdgeloraQuantizer::Auto as u32;
        let chosen = QUANTIZERS.iter().find(|(c, _)| *c as u32 == quantizer).map(|&(_, q)| q);
        if chosen.is_none() && !auto {
            let mut known: Vec<String> = QUANTIZERS.iter().map(|(c, q)| format!("{} ({})", *c as u32, q.name())).collect();
            known.push(format!("{} (auto)", EdgeloraQuantizer::Auto as u32));
            return Err(arg_err(format!("quantizer {quantizer}: expected {}", known.join(", "))));
        }
        let mut adapters = Vec::with_capacity(n);
        for i in 0..n {
            // SAFETY: arrays of n entries by contract; each path a C string.
            let (p, w) = unsafe { (str_arg(*adapter_paths.add(i), "adapter_paths[i]")?, *weights.add(i)) };
            adapters.push((std::path::PathBuf::from(p), w));
        }
        let quantizer = match chosen {
            Some(q) => q,
            None => crate::merge::Quantizer::most_faithful(&crate::gguf::GgufFile::open(model).map_err(|e| lib_err(e.into()))?, None, n),
        };
        let opts = crate::merge::MergeOptions { quantizer, ..Default::default() };
        crate::merge::merge_files(model.as_ref(), &adapters, out.as_ref(), &opts, &mut |_, _, _| {}).map_err(lib_err)?;
        Ok(())
    })
}
