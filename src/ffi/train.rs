//! `extern "C"` entry points for on-device training (`edgelora_train_*`, over
//! [`crate::train::TrainJob`]) and the adapter store (`edgelora_store_*`, over
//! [`crate::adapter::AdapterStore`]). Conventions as in `capi`.
//!
//! Thread safety: a job is used by one thread at a time, except
//! `edgelora_train_cancel`, which any thread may call while `edgelora_train_run` runs;
//! another call on a job whose run is in progress (from a second thread or from inside
//! the progress callback) fails with INVALID_ARGUMENT instead of waiting. A store handle
//! is used by one thread at a time; one process writes a store folder at a time.

use std::ffi::{c_char, c_void, CString};
use std::path::PathBuf;
use std::ptr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, TryLockError};

use super::capi::{arg_err, guard, lib_err, str_arg, EdgeloraStatus};
use crate::adapter::AdapterStore;
use crate::model::precision::Precision;
use crate::train::{parse_targets, JobOptions, JobOutcome, Progress, TrainConfig, TrainJob};

/// A training job. Opaque.
pub struct EdgeloraTrainJob {
    pub(super) stop: Arc<AtomicBool>,
    pub(super) job: Mutex<TrainJob>,
}

/// An adapter store folder. Opaque.
pub struct EdgeloraStore {
    store: AdapterStore,
}

/// Training settings; start from [`edgelora_train_params_default`]. Strings may be NULL
/// (the default) and are copied by `edgelora_train_open`.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct EdgeloraTrainParams {
    /// LoRA rank (16).
    pub rank: u32,
    /// LoRA alpha; the update is scaled by alpha/rank (32).
    pub alpha: f32,
    /// Comma-separated modules: q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj,down_proj
    /// or "all-linear" (NULL: "q_proj,v_proj").
    pub targets: *const c_char,
    /// Peak learning rate (3e-4), cosine schedule with 3% warm-up.
    pub lr: f32,
    /// Optimizer steps; 0: `epochs` passes over the data (0).
    pub steps: u32,
    /// Passes over the data when `steps` is 0 (1).
    pub epochs: u32,
    /// Examples per step (8) and micro-batches accumulated per step (1).
    pub batch: u32,
    pub grad_accum: u32,
    /// Tokens per example; longer ones are cut (512).
    pub max_len: u32,
    pub seed: u64,
    /// CPU threads (0: all cores).
    pub threads: u32,
    /// Milliseconds to sleep between steps (thermal headroom; 0).
    pub yield_ms: u32,
    /// Peak-memory budget in MiB (0: none). The job fits it with gradient checkpointing
    /// or smaller micro-batches (same result) or fails with MEMORY_BUDGET before step 1.
    pub max_memory_mb: u32,
    /// Recompute activations in backward (less memory, ~30% more time).
    pub grad_checkpoint: bool,
    /// Checkpoint directory (NULL: none, the job cannot resume after a kill). A job
    /// opened on a directory holding a checkpoint of the same model, settings and data
    /// continues from it.
    pub checkpoint_dir: *const c_char,
    /// Save a checkpoint every N steps (10); always when stopped and at the end.
    pub save_every: u32,
    /// Adapter name written in the exported manifest (NULL: none, or the continued
    /// adapter's).
    pub name: *const c_char,
    /// Continue this adapter (GGUF-LoRA file or PEFT folder; NULL: a new one): training
    /// starts from its factors, its rank/alpha/targets/layers replace `rank`, `alpha`
    /// and `targets`, and the manifest records it as the parent (round + 1).
    pub init_adapter: *const c_char,
    /// Precision of the products with the frozen base: EDGELORA_PRECISION_F32 (0, the
    /// default), EDGELORA_PRECISION_BF16 (1: bf16 operands, f32 sums, factors and optimizer
    /// state; emulated — slower — on a CPU without AVX512-BF16) or EDGELORA_PRECISION_AUTO
    /// (2: bf16 where the CPU has AMX tiles — where it is faster — else f32).
    pub precision: u32,
}

/// EdgeloraTrainParams.precision: f32 products.
pub const EDGELORA_PRECISION_F32: u32 = 0;
/// EdgeloraTrainParams.precision: bf16 products, f32 sums.
pub const EDGELORA_PRECISION_BF16: u32 = 1;
/// EdgeloraTrainParams.precision: bf16 where it is faster than f32 (AMX tiles), else f32.
pub const EDGELORA_PRECISION_AUTO: u32 = 2;

/// What the progress callback sees after each step (valid during the call).
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct EdgeloraTrainProgress {
    pub step: u32,
    pub total_steps: u32,
    pub epoch: f64,
    pub loss: f64,
    pub lr: f64,
    pub grad_norm: f64,
    pub tokens_per_s: f64,
    /// Remaining seconds at this run's mean step time.
    pub eta_secs: f64,
}

/// Progress callback, on the training thread after each step. Return false to stop
/// (the checkpoint is saved and `edgelora_train_run` returns CANCELLED).
pub type EdgeloraTrainCallback = Option<unsafe extern "C" fn(progress: *const EdgeloraTrainProgress, user_data: *mut c_void) -> bool>;

/// Scores of the evaluation examples with the current factors.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
pub struct EdgeloraEvaluation {
    pub n_examples: u32,
    /// Mean cross-entropy per answer token.
    pub loss: f64,
    /// Share of examples whose whole answer is the greedy (arg-max) prediction.
    pub exact: f64,
}

/// Defaults (the CLI's): rank 16, alpha 32, q_proj,v_proj, lr 3e-4, 1 epoch, batch 8.
#[no_mangle]
pub extern "C" fn edgelora_train_params_default() -> EdgeloraTrainParams {
    let c = TrainConfig::default();
    EdgeloraTrainParams {
        rank: c.rank as u32,
        alpha: c.alpha,
        targets: ptr::null(),
        lr: c.lr as f32,
        steps: 0,
        epochs: 1,
        batch: c.batch as u32,
        grad_accum: c.grad_accum as u32,
        max_len: c.max_len as u32,
        seed: c.seed,
        threads: 0,
        yield_ms: 0,
        max_memory_mb: 0,
        grad_checkpoint: false,
        checkpoint_dir: ptr::null(),
        save_every: 10,
        name: ptr::null(),
        init_adapter: ptr::null(),
        precision: EDGELORA_PRECISION_F32,
    }
}

pub(super) type CResult<T> = Result<T, (EdgeloraStatus, String)>;

/// # Safety
/// `p` is NULL or a NUL-terminated string.
unsafe fn opt_str(p: *const c_char, what: &str) -> CResult<Option<String>> {
    if p.is_null() {
        Ok(None)
    } else {
        // SAFETY: non-NULL, caller contract.
        unsafe { str_arg(p, what) }.map(|s| Some(s.to_string()))
    }
}

/// # Safety
/// `job` is NULL or a live job handle.
unsafe fn job_arg<'a>(job: *const EdgeloraTrainJob) -> CResult<&'a EdgeloraTrainJob> {
    // SAFETY: NULL or live by contract.
    unsafe { job.as_ref() }.ok_or_else(|| arg_err("job is NULL"))
}

pub(super) fn lock(job: &EdgeloraTrainJob) -> CResult<MutexGuard<'_, TrainJob>> {
    match job.job.try_lock() {
        Ok(g) => Ok(g),
        Err(TryLockError::WouldBlock) => Err(arg_err("the job is running (edgelora_train_run on another thread or in its callback): only edgelora_train_cancel may be called now")),
        // A panic inside a call was already reported as PANIC; the job's state is its own.
        Err(TryLockError::Poisoned(p)) => Ok(p.into_inner()),
    }
}

/// The job options of C params (the JNI glue fills the same struct).
pub(super) fn job_options(p: &EdgeloraTrainParams) -> CResult<JobOptions> {
    // SAFETY: strings are NULL or C strings by the caller's contract for `params`.
    let (targets, ckpt, name, init) = unsafe { (opt_str(p.targets, "params.targets")?, opt_str(p.checkpoint_dir, "params.checkpoint_dir")?, opt_str(p.name, "params.name")?, opt_str(p.init_adapter, "params.init_adapter")?) };
    let targets = parse_targets(targets.as_deref().unwrap_or("q_proj,v_proj")).map_err(lib_err)?;
    if !p.alpha.is_finite() || p.alpha <= 0.0 {
        return Err(arg_err(format!("params.alpha {} must be finite and > 0", p.alpha)));
    }
    let precision = match p.precision {
        EDGELORA_PRECISION_F32 => Precision::F32,
        EDGELORA_PRECISION_BF16 => Precision::Bf16,
        EDGELORA_PRECISION_AUTO => Precision::Auto,
        other => return Err(arg_err(format!("params.precision {other}: expected 0 (f32), 1 (bf16) or 2 (auto)"))),
    };
    let config = TrainConfig {
        rank: p.rank as usize,
        alpha: p.alpha,
        targets,
        lr: p.lr as f64,
        steps: p.steps as usize,
        batch: p.batch as usize,
        grad_accum: p.grad_accum as usize,
        max_len: p.max_len as usize,
        seed: p.seed,
        grad_checkpoint: p.grad_checkpoint,
        precision,
        ..TrainConfig::default()
    };
    Ok(JobOptions {
        config,
        epochs: p.epochs as usize,
        threads: p.threads as usize,
        yield_ms: p.yield_ms as u64,
        max_memory_mb: (p.max_memory_mb > 0).then_some(p.max_memory_mb as u64),
        checkpoint_dir: ckpt.map(PathBuf::from),
        save_every: p.save_every as usize,
        name,
        init_adapter: init.map(PathBuf::from),
    })
}

/// Opens a training job on the model at `model_path` (checked, its tokenizer loaded);
/// `params` NULL means the defaults. The checkpoint directory is created and checked
/// writable now. On success `*out` holds a handle to close with
/// [`edgelora_train_close`]; on failure `*out` is NULL.
///
/// # Safety
/// `model_path` is a NUL-terminated string; `params` is NULL or valid; `out` is valid.
#[no_mangle]
pub unsafe extern "C" fn edgelora_train_open(model_path: *const c_char, params: *const EdgeloraTrainParams, out: *mut *mut EdgeloraTrainJob) -> EdgeloraStatus {
    guard(|| {
        if out.is_null() {
            return Err(arg_err("out is NULL"));
        }
        // SAFETY: checked non-NULL; the caller owns the slot.
        unsafe { *out = ptr::null_mut() };
        // SAFETY: caller contract.
        let path = unsafe { str_arg(model_path, "model_path") }?;
        // SAFETY: NULL or valid by contract.
        let p = unsafe { params.as_ref() }.copied().unwrap_or_else(|| edgelora_train_params_default());
        let job = TrainJob::open(path, job_options(&p)?).map_err(lib_err)?;
        let handle = EdgeloraTrainJob { stop: job.cancel_flag(), job: Mutex::new(job) };
        // SAFETY: as above.
        unsafe { *out = Box::into_raw(Box::new(handle)) };
        Ok(())
    })
}

/// # Safety
/// Strings are NULL (input only) or NUL-terminated.
unsafe fn add_example(job: *const EdgeloraTrainJob, instruction: *const c_char, input: *const c_char, output: *const c_char, eval: bool) -> EdgeloraStatus {
    guard(|| {
        // SAFETY: caller contract for each argument.
        let (job, instruction, input, output) = unsafe { (job_arg(job)?, str_arg(instruction, "instruction")?, opt_str(input, "input")?, str_arg(output, "output")?) };
        lock(job)?.add_example(instruction, input.as_deref().unwrap_or(""), output, eval).map_err(lib_err)
    })
}

/// Adds one training example `{instruction, input, output}` (`input` may be NULL),
/// tokenized now: an empty answer or one cut off by `max_len` is an error naming the
/// example (FORMAT). Refused once training has started.
///
/// # Safety
/// `job` is live; `instruction` and `output` are NUL-terminated; `input` is NULL or NUL-terminated.
#[no_mangle]
pub unsafe extern "C" fn edgelora_train_add_example(job: *const EdgeloraTrainJob, instruction: *const c_char, input: *const c_char, output: *const c_char) -> EdgeloraStatus {
    // SAFETY: forwarded caller contract.
    unsafe { add_example(job, instruction, input, output, false) }
}

/// Adds one evaluation example (scored by `edgelora_train_evaluate`; never trained on).
/// Allowed at any time.
///
/// # Safety
/// As `edgelora_train_add_example`.
#[no_mangle]
pub unsafe extern "C" fn edgelora_train_add_eval_example(job: *const EdgeloraTrainJob, instruction: *const c_char, input: *const c_char, output: *const c_char) -> EdgeloraStatus {
    // SAFETY: forwarded caller contract.
    unsafe { add_example(job, instruction, input, output, true) }
}

/// Adds one record given as JSON in any of the CLI's four formats (`{instruction, input,
/// output}`, `{prompt, completion}`, `{messages: [{role, content}]}`, `{text}`) — to the
/// evaluation set when `eval` is true. A bad record is FORMAT, naming its field.
///
/// # Safety
/// `job` is live; `json` is NUL-terminated.
#[no_mangle]
pub unsafe extern "C" fn edgelora_train_add_record_json(job: *const EdgeloraTrainJob, json: *const c_char, eval: bool) -> EdgeloraStatus {
    guard(|| {
        // SAFETY: caller contract.
        let (job, json) = unsafe { (job_arg(job)?, str_arg(json, "json")?) };
        lock(job)?.add_record_json(json, eval).map_err(lib_err)
    })
}

/// # Safety
/// `path` is NUL-terminated.
unsafe fn add_jsonl(job: *const EdgeloraTrainJob, path: *const c_char, eval: bool) -> EdgeloraStatus {
    guard(|| {
        // SAFETY: caller contract.
        let (job, path) = unsafe { (job_arg(job)?, str_arg(path, "path")?) };
        lock(job)?.add_jsonl(path, eval).map(drop).map_err(lib_err)
    })
}

/// Adds every record of a JSONL file in any of the CLI's four formats (all or none: a
/// bad line adds nothing and the error names its line and field).
///
/// # Safety
/// `job` is live; `path` is NUL-terminated.
#[no_mangle]
pub unsafe extern "C" fn edgelora_train_add_jsonl(job: *const EdgeloraTrainJob, path: *const c_char) -> EdgeloraStatus {
    // SAFETY: forwarded caller contract.
    unsafe { add_jsonl(job, path, false) }
}

/// `edgelora_train_add_jsonl` for evaluation records.
///
/// # Safety
/// As `edgelora_train_add_jsonl`.
#[no_mangle]
pub unsafe extern "C" fn edgelora_train_add_eval_jsonl(job: *const EdgeloraTrainJob, path: *const c_char) -> EdgeloraStatus {
    // SAFETY: forwarded caller contract.
    unsafe { add_jsonl(job, path, true) }
}

/// Fixes the training data and prepares the run without training: steps from epochs,
/// the memory budget (MEMORY_BUDGET when nothing fits), the checkpoint directory
/// (resumed from when it holds this job's checkpoint; FORMAT when it holds another's).
/// `edgelora_train_run` does this itself; call it to learn the plan first. Optional
/// outputs (NULL to skip): the step reached and in all, the memory estimate in MiB.
///
/// # Safety
/// `job` is live; each output is NULL or valid.
#[no_mangle]
pub unsafe extern "C" fn edgelora_train_prepare(job: *const EdgeloraTrainJob, step: *mut u32, total_steps: *mut u32, memory_estimate_mb: *mut f64) -> EdgeloraStatus {
    guard(|| {
        // SAFETY: caller contract.
        let job = unsafe { job_arg(job) }?;
        let mut j = lock(job)?;
        j.prepare().map_err(lib_err)?;
        let (s, t) = j.steps();
        let mb = j.memory_estimate().map_or(0.0, |e| e.total_mb());
        // SAFETY: NULL or valid by contract.
        unsafe {
            if let Some(p) = step.as_mut() {
                *p = s as u32;
            }
            if let Some(p) = total_steps.as_mut() {
                *p = t as u32;
            }
            if let Some(p) = memory_estimate_mb.as_mut() {
                *p = mb;
            }
        }
        Ok(())
    })
}

/// Trains to the last step on this thread, calling `callback` (may be NULL) after each
/// step. Returns OK when finished; CANCELLED when the callback returned false or
/// `edgelora_train_cancel` was called (the checkpoint is saved; call again to continue).
///
/// # Safety
/// `job` is live; `callback` is NULL or callable with `user_data`.
#[no_mangle]
pub unsafe extern "C" fn edgelora_train_run(job: *const EdgeloraTrainJob, callback: EdgeloraTrainCallback, user_data: *mut c_void) -> EdgeloraStatus {
    guard(|| {
        // SAFETY: caller contract.
        let job = unsafe { job_arg(job) }?;
        let mut j = lock(job)?;
        let mut on_progress = |p: &Progress| -> bool {
            let Some(cb) = callback else { return true };
            let c = EdgeloraTrainProgress {
                step: p.step as u32,
                total_steps: p.total_steps as u32,
                epoch: p.epoch,
                loss: p.loss,
                lr: p.lr,
                grad_norm: p.grad_norm,
                tokens_per_s: p.tokens_per_s,
                eta_secs: p.eta_secs,
            };
            // SAFETY: the caller's callback and user data; `c` lives for the call.
            unsafe { cb(&c, user_data) }
        };
        match j.run(&mut on_progress).map_err(lib_err)? {
            JobOutcome::Finished => Ok(()),
            JobOutcome::Cancelled => {
                let (s, t) = j.steps();
                Err((EdgeloraStatus::Cancelled, format!("training cancelled at step {s}/{t}; the checkpoint is saved when the job has a checkpoint directory")))
            }
        }
    })
}

/// Asks a running `edgelora_train_run` to stop after its current step. Any thread; a
/// cancel before a run stops that run before its first step.
///
/// # Safety
/// `job` is NULL or live.
#[no_mangle]
pub unsafe extern "C" fn edgelora_train_cancel(job: *const EdgeloraTrainJob) {
    // SAFETY: NULL or live by contract; only the atomic flag is touched.
    if let Some(j) = unsafe { job.as_ref() } {
        j.stop.store(true, Ordering::SeqCst);
    }
}

/// Scores the evaluation examples with the current factors (the base before training).
///
/// # Safety
/// `job` is live; `out` is valid.
#[no_mangle]
pub unsafe extern "C" fn edgelora_train_evaluate(job: *const EdgeloraTrainJob, out: *mut EdgeloraEvaluation) -> EdgeloraStatus {
    guard(|| {
        if out.is_null() {
            return Err(arg_err("out is NULL"));
        }
        // SAFETY: caller contract.
        let job = unsafe { job_arg(job) }?;
        let v = lock(job)?.evaluate().map_err(lib_err)?;
        // SAFETY: checked non-NULL.
        unsafe { *out = EdgeloraEvaluation { n_examples: v.n_examples as u32, loss: v.loss, exact: v.exact } };
        Ok(())
    })
}

/// Writes the adapter trained so far as GGUF-LoRA (f16, with its manifest) at
/// `out_path`, atomically, and as a PEFT folder at `peft_dir` unless NULL. Load it with
/// `edgelora_adapter_load` into an open runtime.
///
/// # Safety
/// `job` is live; `out_path` is NUL-terminated; `peft_dir` is NULL or NUL-terminated.
#[no_mangle]
pub unsafe extern "C" fn edgelora_train_export(job: *const EdgeloraTrainJob, out_path: *const c_char, peft_dir: *const c_char) -> EdgeloraStatus {
    guard(|| {
        // SAFETY: caller contract.
        let (job, out, peft) = unsafe { (job_arg(job)?, str_arg(out_path, "out_path")?, opt_str(peft_dir, "peft_dir")?) };
        lock(job)?.export(out, peft.as_deref().map(std::path::Path::new)).map(drop).map_err(lib_err)
    })
}

/// Frees a job (its checkpoint directory stays). NULL is ignored.
///
/// # Safety
/// `job` is NULL or a handle from `edgelora_train_open`, closed once, not running.
#[no_mangle]
pub unsafe extern "C" fn edgelora_train_close(job: *mut EdgeloraTrainJob) {
    if !job.is_null() {
        let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            // SAFETY: created by Box::into_raw in edgelora_train_open, freed once.
            drop(unsafe { Box::from_raw(job) })
        }));
    }
}

/// Opens (creating) an adapter store folder.
///
/// # Safety
/// `dir` is NUL-terminated; `out` is valid.
#[no_mangle]
pub unsafe extern "C" fn edgelora_store_open(dir: *const c_char, out: *mut *mut EdgeloraStore) -> EdgeloraStatus {
    guard(|| {
        if out.is_null() {
            return Err(arg_err("out is NULL"));
        }
        // SAFETY: checked non-NULL.
        unsafe { *out = ptr::null_mut() };
        // SAFETY: caller contract.
        let dir = unsafe { str_arg(dir, "dir") }?;
        let store = AdapterStore::open(dir).map_err(lib_err)?;
        // SAFETY: as above.
        unsafe { *out = Box::into_raw(Box::new(EdgeloraStore { store })) };
        Ok(())
    })
}

/// # Safety
/// `s` is NULL or live.
unsafe fn store_arg<'a>(s: *const EdgeloraStore) -> CResult<&'a AdapterStore> {
    // SAFETY: NULL or live by contract.
    unsafe { s.as_ref() }.map(|s| &s.store).ok_or_else(|| arg_err("store is NULL"))
}

fn give_string(s: String, out: *mut *mut c_char, what: &str) -> CResult<()> {
    if out.is_null() {
        return Ok(());
    }
    let c = CString::new(s).map_err(|_| arg_err(format!("{what} holds a NUL byte")))?;
    // SAFETY: non-NULL, the caller's slot.
    unsafe { *out = c.into_raw() };
    Ok(())
}

/// Stores an exported adapter file as the next version of `name` (1–64 of A-Z a-z 0-9
/// - _ .) and makes it current; its parent is the version current before. `metrics_json`
/// (NULL or a JSON value, e.g. an evaluation) is kept with it. Optional outputs: the new
/// version, its file path (free with `edgelora_string_free`).
///
/// # Safety
/// `store` is live; `name`, `adapter_path` NUL-terminated; `metrics_json` NULL or
/// NUL-terminated; outputs NULL or valid.
#[no_mangle]
pub unsafe extern "C" fn edgelora_store_save(store: *const EdgeloraStore, name: *const c_char, adapter_path: *const c_char, metrics_json: *const c_char, version: *mut u32, path_out: *mut *mut c_char) -> EdgeloraStatus {
    guard(|| {
        // SAFETY: caller contract.
        let (store, name, src, metrics) = unsafe { (store_arg(store)?, str_arg(name, "name")?, str_arg(adapter_path, "adapter_path")?, opt_str(metrics_json, "metrics_json")?) };
        let metrics = metrics.map(|m| serde_json::from_str::<serde_json::Value>(&m).map_err(|e| arg_err(format!("metrics_json is not JSON: {e}")))).transpose()?;
        let v = store.save(name, src, metrics).map_err(lib_err)?;
        // SAFETY: NULL or valid by contract.
        if let Some(p) = unsafe { version.as_mut() } {
            *p = v.version;
        }
        give_string(store.path(name, v.version).map_err(lib_err)?.display().to_string(), path_out, "the path")
    })
}

/// The versions of `name` as a JSON array (oldest first: version, file, parent,
/// created, sha256, data_fingerprint, metrics) and the current version (0 when none).
/// Free `*json_out` with `edgelora_string_free`.
///
/// # Safety
/// `store` is live; `name` NUL-terminated; outputs NULL or valid.
#[no_mangle]
pub unsafe extern "C" fn edgelora_store_list(store: *const EdgeloraStore, name: *const c_char, current: *mut u32, json_out: *mut *mut c_char) -> EdgeloraStatus {
    guard(|| {
        // SAFETY: caller contract.
        let (store, name) = unsafe { (store_arg(store)?, str_arg(name, "name")?) };
        let versions = store.versions(name).map_err(lib_err)?;
        let cur = if versions.is_empty() { 0 } else { store.current(name).map_err(lib_err)?.version };
        // SAFETY: NULL or valid by contract.
        if let Some(p) = unsafe { current.as_mut() } {
            *p = cur;
        }
        give_string(serde_json::to_string(&versions).expect("versions serialize"), json_out, "the list")
    })
}

/// The file of `name`'s `version` (0: the current one). Free `*path_out` with
/// `edgelora_string_free`. NOT_FOUND when there is no such version.
///
/// # Safety
/// `store` is live; `name` NUL-terminated; `path_out` valid.
#[no_mangle]
pub unsafe extern "C" fn edgelora_store_path(store: *const EdgeloraStore, name: *const c_char, version: u32, path_out: *mut *mut c_char) -> EdgeloraStatus {
    guard(|| {
        if path_out.is_null() {
            return Err(arg_err("path_out is NULL"));
        }
        // SAFETY: caller contract.
        let (store, name) = unsafe { (store_arg(store)?, str_arg(name, "name")?) };
        let p = if version == 0 { store.current_path(name) } else { store.path(name, version) }.map_err(lib_err)?;
        give_string(p.display().to_string(), path_out, "the path")
    })
}

/// Makes `version` of `name` current.
///
/// # Safety
/// `store` is live; `name` NUL-terminated.
#[no_mangle]
pub unsafe extern "C" fn edgelora_store_set_current(store: *const EdgeloraStore, name: *const c_char, version: u32) -> EdgeloraStatus {
    guard(|| {
        // SAFETY: caller contract.
        let (store, name) = unsafe { (store_arg(store)?, str_arg(name, "name")?) };
        store.set_current(name, version).map(drop).map_err(lib_err)
    })
}

/// Rolls `name` back to the version that was current before the current one was saved
/// (NOT_FOUND for the first version). Optional outputs: that version and its file path
/// (free with `edgelora_string_free`); reload it with `edgelora_adapter_unload` +
/// `edgelora_adapter_load`.
///
/// # Safety
/// `store` is live; `name` NUL-terminated; outputs NULL or valid.
#[no_mangle]
pub unsafe extern "C" fn edgelora_store_rollback(store: *const EdgeloraStore, name: *const c_char, version: *mut u32, path_out: *mut *mut c_char) -> EdgeloraStatus {
    guard(|| {
        // SAFETY: caller contract.
        let (store, name) = unsafe { (store_arg(store)?, str_arg(name, "name")?) };
        let v = store.rollback(name).map_err(lib_err)?;
        // SAFETY: NULL or valid by contract.
        if let Some(p) = unsafe { version.as_mut() } {
            *p = v.version;
        }
        give_string(store.path(name, v.version).map_err(lib_err)?.display().to_string(), path_out, "the path")
    })
}

/// Frees a store handle (the folder stays). NULL is ignored.
///
/// # Safety
/// `store` is NULL or a handle from `edgelora_store_open`, closed once.
#[no_mangle]
pub unsafe extern "C" fn edgelora_store_close(store: *mut EdgeloraStore) {
    if !store.is_null() {
        // SAFETY: created by Box::into_raw in edgelora_store_open, freed once.
        drop(unsafe { Box::from_raw(store) });
    }
}
