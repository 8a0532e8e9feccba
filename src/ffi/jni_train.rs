//! JNI glue for `dev.edgelora.Trainer` and `dev.edgelora.AdapterStore` (training and
//! the adapter store, over the same types as the C ABI's `edgelora_train_*` /
//! `edgelora_store_*`). Errors become `EdgeLoraException`s; an exception thrown by the
//! `TrainingListener` stops training (checkpoint saved) and propagates out of `run`.

use std::ffi::CString;
use std::sync::atomic::Ordering;
use std::sync::Mutex;

use jni::objects::{JClass, JObject, JString, JValue};
use jni::sys::{jboolean, jdouble, jfloat, jint, jintArray, jlong, jobject, jstring, JNI_FALSE, JNI_TRUE};
use jni::JNIEnv;

use super::capi::EdgeloraStatus;
use super::jni::{guarded, jstr, lib_error, throw};
use super::train::{job_options, lock, EdgeloraTrainJob, EdgeloraTrainParams};
use crate::adapter::AdapterStore;
use crate::train::{JobOutcome, Progress, TrainJob};

fn jopt(env: &mut JNIEnv, s: &JString, what: &str) -> Result<Option<String>, ()> {
    if s.is_null() {
        Ok(None)
    } else {
        jstr(env, s, what).map(Some)
    }
}

fn job<'a>(env: &mut JNIEnv, handle: jlong) -> Result<&'a EdgeloraTrainJob, ()> {
    if handle == 0 {
        throw(env, EdgeloraStatus::InvalidArgument, "the trainer is closed");
        return Err(());
    }
    // SAFETY: the Java side passes the pointer from nativeOpen until close() zeroes it.
    Ok(unsafe { &*(handle as *const EdgeloraTrainJob) })
}

fn locked<'a>(env: &mut JNIEnv, j: &'a EdgeloraTrainJob) -> Result<std::sync::MutexGuard<'a, TrainJob>, ()> {
    lock(j).map_err(|(status, msg)| throw(env, status, &msg))
}

#[no_mangle]
#[allow(clippy::too_many_arguments)]
pub extern "system" fn Java_dev_edgelora_Trainer_nativeOpen<'l>(
    mut env: JNIEnv<'l>,
    _c: JClass<'l>,
    model: JString<'l>,
    rank: jint,
    alpha: jfloat,
    targets: JString<'l>,
    lr: jfloat,
    steps: jint,
    epochs: jint,
    batch: jint,
    grad_accum: jint,
    max_len: jint,
    seed: jlong,
    threads: jint,
    yield_ms: jint,
    max_memory_mb: jint,
    grad_checkpoint: jboolean,
    checkpoint_dir: JString<'l>,
    save_every: jint,
    name: JString<'l>,
    init_adapter: JString<'l>,
    precision: jint,
) -> jlong {
    guarded(&mut env, 0, |env| {
        let model = jstr(env, &model, "modelPath")?;
        let (targets, ckpt, name, init) = (jopt(env, &targets, "targets")?, jopt(env, &checkpoint_dir, "checkpointDir")?, jopt(env, &name, "name")?, jopt(env, &init_adapter, "initAdapter")?);
        let negative = [("rank", rank), ("steps", steps), ("epochs", epochs), ("batch", batch), ("gradAccum", grad_accum), ("maxLen", max_len), ("threads", threads), ("yieldMs", yield_ms), ("maxMemoryMb", max_memory_mb), ("saveEvery", save_every)];
        if let Some((what, v)) = negative.iter().find(|(_, v)| *v < 0) {
            throw(env, EdgeloraStatus::InvalidArgument, &format!("{what} {v} is negative"));
            return Err(());
        }
        // The C params struct and its conversion, shared with edgelora_train_open; the
        // CStrings outlive the call.
        let cstr = |v: Option<String>, what: &str| -> Result<Option<CString>, String> { v.map(|s| CString::new(s).map_err(|_| format!("{what} holds a NUL character"))).transpose() };
        let strings = (|| Ok::<_, String>((cstr(targets, "targets")?, cstr(ckpt, "checkpointDir")?, cstr(name, "name")?, cstr(init, "initAdapter")?)))();
        let (targets, ckpt, name, init) = strings.map_err(|m| throw(env, EdgeloraStatus::InvalidArgument, &m))?;
        let ptr = |c: &Option<CString>| c.as_ref().map_or(std::ptr::null(), |c| c.as_ptr());
        let params = EdgeloraTrainParams {
            rank: rank as u32,
            alpha,
            targets: ptr(&targets),
            lr,
            steps: steps as u32,
            epochs: epochs as u32,
            batch: batch as u32,
            grad_accum: grad_accum as u32,
            max_len: max_len as u32,
            seed: seed as u64,
            threads: threads as u32,
            yield_ms: yield_ms as u32,
            max_memory_mb: max_memory_mb as u32,
            grad_checkpoint: grad_checkpoint == JNI_TRUE,
            checkpoint_dir: ptr(&ckpt),
            save_every: save_every as u32,
            name: ptr(&name),
            init_adapter: ptr(&init),
            // Java's TrainConfig.Precision ordinal (F32, BF16, AUTO: the C constants).
            precision: precision as u32,
        };
        let options = job_options(&params).map_err(|(status, msg)| throw(env, status, &msg))?;
        let job = TrainJob::open(&model, options).map_err(|e| lib_error(env, &e))?;
        Ok(Box::into_raw(Box::new(EdgeloraTrainJob { stop: job.cancel_flag(), job: Mutex::new(job) })) as jlong)
    })
}

#[no_mangle]
pub extern "system" fn Java_dev_edgelora_Trainer_nativeAddExample<'l>(mut env: JNIEnv<'l>, _c: JClass<'l>, h: jlong, instruction: JString<'l>, input: JString<'l>, output: JString<'l>, eval: jboolean) {
    guarded(&mut env, (), |env| {
        let j = job(env, h)?;
        let (instruction, input, output) = (jstr(env, &instruction, "instruction")?, jopt(env, &input, "input")?, jstr(env, &output, "output")?);
        let mut t = locked(env, j)?;
        t.add_example(&instruction, input.as_deref().unwrap_or(""), &output, eval == JNI_TRUE).map_err(|e| lib_error(env, &e))
    })
}

#[no_mangle]
pub extern "system" fn Java_dev_edgelora_Trainer_nativeAddRecordJson<'l>(mut env: JNIEnv<'l>, _c: JClass<'l>, h: jlong, json: JString<'l>, eval: jboolean) {
    guarded(&mut env, (), |env| {
        let j = job(env, h)?;
        let json = jstr(env, &json, "json")?;
        let mut t = locked(env, j)?;
        t.add_record_json(&json, eval == JNI_TRUE).map_err(|e| lib_error(env, &e))
    })
}

#[no_mangle]
pub extern "system" fn Java_dev_edgelora_Trainer_nativeAddJsonl<'l>(mut env: JNIEnv<'l>, _c: JClass<'l>, h: jlong, path: JString<'l>, eval: jboolean) -> jint {
    guarded(&mut env, 0, |env| {
        let j = job(env, h)?;
        let path = jstr(env, &path, "path")?;
        let mut t = locked(env, j)?;
        t.add_jsonl(&path, eval == JNI_TRUE).map(|n| n as jint).map_err(|e| lib_error(env, &e))
    })
}

#[no_mangle]
pub extern "system" fn Java_dev_edgelora_Trainer_nativePrepare<'l>(mut env: JNIEnv<'l>, _c: JClass<'l>, h: jlong) -> jintArray {
    guarded(&mut env, std::ptr::null_mut(), |env| {
        let j = job(env, h)?;
        let (s, t) = {
            let mut t = locked(env, j)?;
            t.prepare().map_err(|e| lib_error(env, &e))?;
            t.steps()
        };
        let arr = env.new_int_array(2).map_err(|_| ())?;
        env.set_int_array_region(&arr, 0, &[s as jint, t as jint]).map_err(|_| ())?;
        Ok(arr.into_raw())
    })
}

#[no_mangle]
pub extern "system" fn Java_dev_edgelora_Trainer_nativeMemoryEstimate<'l>(mut env: JNIEnv<'l>, _c: JClass<'l>, h: jlong) -> jdouble {
    guarded(&mut env, 0.0, |env| {
        let j = job(env, h)?;
        let t = locked(env, j)?;
        Ok(t.memory_estimate().map_or(0.0, |e| e.total_mb()))
    })
}

#[no_mangle]
pub extern "system" fn Java_dev_edgelora_Trainer_nativeRun<'l>(mut env: JNIEnv<'l>, _c: JClass<'l>, h: jlong, listener: JObject<'l>) -> jboolean {
    guarded(&mut env, JNI_FALSE, |env| {
        let j = job(env, h)?;
        let mut t = locked(env, j)?;
        let outcome = {
            let mut on_progress = |p: &Progress| -> bool {
                if listener.is_null() {
                    return true;
                }
                if env.exception_check().unwrap_or(true) {
                    return false;
                }
                let obj = env.new_object(
                    "dev/edgelora/TrainingProgress",
                    "(IIDDDDDD)V",
                    &[
                        JValue::Int(p.step as jint),
                        JValue::Int(p.total_steps as jint),
                        JValue::Double(p.epoch),
                        JValue::Double(p.loss),
                        JValue::Double(p.lr),
                        JValue::Double(p.grad_norm),
                        JValue::Double(p.tokens_per_s),
                        JValue::Double(p.eta_secs),
                    ],
                );
                let Ok(obj) = obj else { return false };
                let keep = env.call_method(&listener, "onProgress", "(Ldev/edgelora/TrainingProgress;)Z", &[JValue::Object(&obj)]).and_then(|v| v.z()).unwrap_or(false);
                let _ = env.delete_local_ref(obj);
                keep
            };
            t.run(&mut on_progress)
        };
        let outcome = outcome.map_err(|e| lib_error(env, &e))?;
        if env.exception_check().unwrap_or(false) {
            return Err(()); // the listener threw: training stopped, let Java see the exception
        }
        Ok(if outcome == JobOutcome::Finished { JNI_TRUE } else { JNI_FALSE })
    })
}

#[no_mangle]
pub extern "system" fn Java_dev_edgelora_Trainer_nativeCancel<'l>(_env: JNIEnv<'l>, _c: JClass<'l>, h: jlong) {
    if h != 0 {
        // SAFETY: live pointer from nativeOpen; only the atomic flag is touched.
        unsafe { &*(h as *const EdgeloraTrainJob) }.stop.store(true, Ordering::SeqCst);
    }
}

#[no_mangle]
pub extern "system" fn Java_dev_edgelora_Trainer_nativeEvaluate<'l>(mut env: JNIEnv<'l>, _c: JClass<'l>, h: jlong) -> jobject {
    guarded(&mut env, std::ptr::null_mut(), |env| {
        let j = job(env, h)?;
        let v = {
            let mut t = locked(env, j)?;
            t.evaluate().map_err(|e| lib_error(env, &e))?
        };
        let obj = env.new_object("dev/edgelora/Evaluation", "(IDD)V", &[JValue::Int(v.n_examples as jint), JValue::Double(v.loss), JValue::Double(v.exact)]).map_err(|_| ())?;
        Ok(obj.into_raw())
    })
}

#[no_mangle]
pub extern "system" fn Java_dev_edgelora_Trainer_nativeExport<'l>(mut env: JNIEnv<'l>, _c: JClass<'l>, h: jlong, out: JString<'l>, peft: JString<'l>) {
    guarded(&mut env, (), |env| {
        let j = job(env, h)?;
        let (out, peft) = (jstr(env, &out, "out")?, jopt(env, &peft, "peftDir")?);
        let mut t = locked(env, j)?;
        t.export(&out, peft.as_deref().map(std::path::Path::new)).map(drop).map_err(|e| lib_error(env, &e))
    })
}

#[no_mangle]
pub extern "system" fn Java_dev_edgelora_Trainer_nativeClose<'l>(_env: JNIEnv<'l>, _c: JClass<'l>, h: jlong) {
    if h != 0 {
        let _ = std::panic::catch_unwind(|| {
            // SAFETY: from nativeOpen; the Java side calls close once.
            drop(unsafe { Box::from_raw(h as *mut EdgeloraTrainJob) })
        });
    }
}

fn store(env: &mut JNIEnv, dir: &JString) -> Result<AdapterStore, ()> {
    let dir = jstr(env, dir, "dir")?;
    AdapterStore::open(dir).map_err(|e| lib_error(env, &e))
}

#[no_mangle]
pub extern "system" fn Java_dev_edgelora_AdapterStore_nativeOpen<'l>(mut env: JNIEnv<'l>, _c: JClass<'l>, dir: JString<'l>) {
    guarded(&mut env, (), |env| store(env, &dir).map(drop))
}

#[no_mangle]
pub extern "system" fn Java_dev_edgelora_AdapterStore_nativeSave<'l>(mut env: JNIEnv<'l>, _c: JClass<'l>, dir: JString<'l>, name: JString<'l>, adapter: JString<'l>, metrics: JString<'l>) -> jint {
    guarded(&mut env, 0, |env| {
        let s = store(env, &dir)?;
        let (name, adapter, metrics) = (jstr(env, &name, "name")?, jstr(env, &adapter, "adapter")?, jopt(env, &metrics, "metricsJson")?);
        let metrics = match metrics.map(|m| serde_json::from_str::<serde_json::Value>(&m)).transpose() {
            Ok(m) => m,
            Err(e) => {
                throw(env, EdgeloraStatus::InvalidArgument, &format!("metricsJson is not JSON: {e}"));
                return Err(());
            }
        };
        s.save(&name, &adapter, metrics).map(|v| v.version as jint).map_err(|e| lib_error(env, &e))
    })
}

#[no_mangle]
pub extern "system" fn Java_dev_edgelora_AdapterStore_nativeVersions<'l>(mut env: JNIEnv<'l>, _c: JClass<'l>, dir: JString<'l>, name: JString<'l>) -> jstring {
    guarded(&mut env, std::ptr::null_mut(), |env| {
        let s = store(env, &dir)?;
        let name = jstr(env, &name, "name")?;
        let v = s.versions(&name).map_err(|e| lib_error(env, &e))?;
        env.new_string(serde_json::to_string(&v).expect("versions serialize")).map(|s| s.into_raw()).map_err(|_| ())
    })
}

#[no_mangle]
pub extern "system" fn Java_dev_edgelora_AdapterStore_nativeCurrent<'l>(mut env: JNIEnv<'l>, _c: JClass<'l>, dir: JString<'l>, name: JString<'l>) -> jint {
    guarded(&mut env, 0, |env| {
        let s = store(env, &dir)?;
        let name = jstr(env, &name, "name")?;
        if s.versions(&name).map_err(|e| lib_error(env, &e))?.is_empty() {
            return Ok(0);
        }
        s.current(&name).map(|v| v.version as jint).map_err(|e| lib_error(env, &e))
    })
}

#[no_mangle]
pub extern "system" fn Java_dev_edgelora_AdapterStore_nativePath<'l>(mut env: JNIEnv<'l>, _c: JClass<'l>, dir: JString<'l>, name: JString<'l>, version: jint) -> jstring {
    guarded(&mut env, std::ptr::null_mut(), |env| {
        let s = store(env, &dir)?;
        let name = jstr(env, &name, "name")?;
        let p = if version <= 0 { s.current_path(&name) } else { s.path(&name, version as u32) }.map_err(|e| lib_error(env, &e))?;
        env.new_string(p.display().to_string()).map(|s| s.into_raw()).map_err(|_| ())
    })
}

#[no_mangle]
pub extern "system" fn Java_dev_edgelora_AdapterStore_nativeRollback<'l>(mut env: JNIEnv<'l>, _c: JClass<'l>, dir: JString<'l>, name: JString<'l>) -> jint {
    guarded(&mut env, 0, |env| {
        let s = store(env, &dir)?;
        let name = jstr(env, &name, "name")?;
        s.rollback(&name).map(|v| v.version as jint).map_err(|e| lib_error(env, &e))
    })
}
