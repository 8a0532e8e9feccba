//! JNI glue for the Java API in `android/edgelora/src/main/java/dev/edgelora/`
//! (package `dev.edgelora`). Each native method maps to the Rust API; errors become a
//! `dev.edgelora.EdgeLoraException` carrying the C ABI's status code and message; no
//! panic crosses into the JVM.

use std::panic::{catch_unwind, AssertUnwindSafe};

use jni::objects::{JClass, JFloatArray, JObject, JObjectArray, JString, JValue};
use jni::sys::{jboolean, jfloat, jint, jlong, jobject, JNI_TRUE};
use jni::JNIEnv;

use super::capi::EdgeloraStatus;
use crate::engine::{load_sdk_engine, CancelFlag, ChatMessage, Engine, GenerateRequest, Prompt, RuntimeOptions, SamplingParams, StopReason};

/// What a Java `Model` handle points to: the SDK's engine (llama.cpp, or the native one in
/// builds without the `llama` feature), boxed once more for a thin pointer.
type Handle = Box<dyn Engine>;
use crate::error::Error;

const EXCEPTION: &str = "dev/edgelora/EdgeLoraException";

pub(super) fn throw(env: &mut JNIEnv, status: EdgeloraStatus, msg: &str) {
    if env.exception_check().unwrap_or(false) {
        return; // a Java exception (e.g. from the callback) is already pending
    }
    let Ok(jmsg) = env.new_string(msg) else { return };
    let obj = env.new_object(EXCEPTION, "(ILjava/lang/String;)V", &[JValue::Int(status as i32), JValue::Object(&jmsg)]);
    if let Ok(obj) = obj {
        let _ = env.throw(jni::objects::JThrowable::from(obj));
    }
}

pub(super) fn lib_error(env: &mut JNIEnv, e: &Error) {
    throw(env, super::capi::status_for(e), &e.chain());
}

/// Runs `f`; a panic becomes an exception and `fallback` is returned.
pub(super) fn guarded<T>(env: &mut JNIEnv, fallback: T, f: impl FnOnce(&mut JNIEnv) -> Result<T, ()>) -> T {
    match catch_unwind(AssertUnwindSafe(|| f(env))) {
        Ok(Ok(v)) => v,
        Ok(Err(())) => fallback,
        Err(_) => {
            throw(env, EdgeloraStatus::Panic, "internal error (panic) in edgelora");
            fallback
        }
    }
}

pub(super) fn jstr(env: &mut JNIEnv, s: &JString, what: &str) -> Result<String, ()> {
    if s.is_null() {
        throw(env, EdgeloraStatus::InvalidArgument, &format!("{what} is null"));
        return Err(());
    }
    env.get_string(s).map(Into::into).map_err(|_| throw(env, EdgeloraStatus::InvalidArgument, &format!("{what} is not a valid string")))
}

fn runtime<'a>(env: &mut JNIEnv, handle: jlong) -> Result<&'a dyn Engine, ()> {
    if handle == 0 {
        throw(env, EdgeloraStatus::InvalidArgument, "the model is closed");
        return Err(());
    }
    // SAFETY: the Java side passes the pointer from nativeOpen until close() zeroes it.
    Ok(unsafe { &**(handle as *const Handle) })
}

#[no_mangle]
pub extern "system" fn Java_dev_edgelora_Model_nativeOpen<'l>(mut env: JNIEnv<'l>, _c: JClass<'l>, path: JString<'l>, threads: jint, n_ctx: jint) -> jlong {
    guarded(&mut env, 0, |env| {
        let path = jstr(env, &path, "path")?;
        let mut opts = RuntimeOptions::default();
        if threads > 0 {
            opts.threads = threads as usize;
        }
        if n_ctx > 0 {
            opts.n_ctx = n_ctx as u32;
        }
        match load_sdk_engine(std::path::Path::new(&path), opts) {
            Ok(rt) => Ok(Box::into_raw(Box::new(rt)) as jlong),
            Err(e) => {
                lib_error(env, &e);
                Err(())
            }
        }
    })
}

#[no_mangle]
pub extern "system" fn Java_dev_edgelora_Model_nativeClose<'l>(_env: JNIEnv<'l>, _c: JClass<'l>, handle: jlong) {
    if handle != 0 {
        let _ = catch_unwind(|| {
            // SAFETY: from nativeOpen; the Java side calls close once.
            drop(unsafe { Box::from_raw(handle as *mut Handle) })
        });
    }
}

#[no_mangle]
pub extern "system" fn Java_dev_edgelora_Model_nativeLoadAdapter<'l>(
    mut env: JNIEnv<'l>,
    _c: JClass<'l>,
    handle: jlong,
    name: JString<'l>,
    path: JString<'l>,
    lenient: jni::sys::jboolean,
) -> jni::sys::jstring {
    guarded(&mut env, std::ptr::null_mut(), |env| {
        let rt = runtime(env, handle)?;
        let (name, path) = (jstr(env, &name, "name")?, jstr(env, &path, "path")?);
        let warnings = rt.load_adapter(&name, std::path::Path::new(&path), crate::adapter::ReadOptions { lenient: lenient != 0 }).map_err(|e| lib_error(env, &e))?;
        env.new_string(warnings.join("\n")).map(|s| s.into_raw()).map_err(|_| ())
    })
}

#[no_mangle]
pub extern "system" fn Java_dev_edgelora_Model_nativeUnloadAdapter<'l>(mut env: JNIEnv<'l>, _c: JClass<'l>, handle: jlong, name: JString<'l>) {
    guarded(&mut env, (), |env| {
        let rt = runtime(env, handle)?;
        let name = jstr(env, &name, "name")?;
        rt.unload_adapter(&name).map_err(|e| lib_error(env, &e))
    })
}

#[no_mangle]
#[allow(clippy::too_many_arguments)]
pub extern "system" fn Java_dev_edgelora_Model_nativeGenerate<'l>(
    mut env: JNIEnv<'l>,
    _c: JClass<'l>,
    handle: jlong,
    prompt: JString<'l>,
    chat: jboolean,
    names: JObjectArray<'l>,
    scales: JFloatArray<'l>,
    max_tokens: jint,
    temperature: jfloat,
    top_k: jint,
    top_p: jfloat,
    min_p: jfloat,
    repeat_penalty: jfloat,
    seed: jlong,
    cancel: jlong,
    callback: JObject<'l>,
) -> jobject {
    guarded(&mut env, std::ptr::null_mut(), |env| {
        let rt = runtime(env, handle)?;
        let prompt = jstr(env, &prompt, "prompt")?;
        let n = if names.is_null() { 0 } else { env.get_array_length(&names).map_err(|_| ())? as usize };
        let mut sc = vec![0f32; n];
        if n > 0 {
            env.get_float_array_region(&scales, 0, &mut sc).map_err(|_| throw(env, EdgeloraStatus::InvalidArgument, "scales must match names"))?;
        }
        let mut adapters = Vec::with_capacity(n);
        for (i, s) in sc.iter().enumerate() {
            let o = env.get_object_array_element(&names, i as i32).map_err(|_| ())?;
            let name = jstr(env, &JString::from(o), "adapter name")?;
            adapters.push((name, *s));
        }
        let mut req = GenerateRequest::new(if chat == JNI_TRUE {
            Prompt::Chat(vec![ChatMessage::new("user", prompt)])
        } else {
            Prompt::Text(prompt)
        });
        req.adapters = adapters;
        req.max_tokens = max_tokens.max(0) as usize;
        req.sampling = SamplingParams {
            temperature,
            top_k: top_k.max(0) as usize,
            top_p,
            min_p,
            repeat_penalty,
            repeat_last_n: 64,
            seed: seed as u64,
        };
        if cancel != 0 {
            // SAFETY: a live pointer from Cancellation.nativeNew (closed only after use).
            req.cancel = Some(unsafe { &*(cancel as *const CancelFlag) }.clone());
        }
        let gen = {
            let mut on_text = |piece: &str| -> bool {
                if callback.is_null() {
                    return true;
                }
                if env.exception_check().unwrap_or(true) {
                    return false; // the callback threw earlier: stop, leave it pending
                }
                let Ok(s) = env.new_string(piece) else { return false };
                let keep = env
                    .call_method(&callback, "onToken", "(Ljava/lang/String;)Z", &[JValue::Object(&s)])
                    .and_then(|v| v.z())
                    .unwrap_or(false);
                let _ = env.delete_local_ref(s);
                keep
            };
            rt.generate(&req, &mut on_text)
        };
        let gen = gen.map_err(|e| lib_error(env, &e))?;
        if env.exception_check().unwrap_or(false) {
            return Err(()); // the callback threw: let Java see it
        }
        let reason = match gen.stop_reason {
            StopReason::MaxTokens => "MAX_TOKENS",
            StopReason::EndOfGeneration => "END_OF_GENERATION",
            StopReason::StopString => "STOP_STRING",
            StopReason::Cancelled => "CANCELLED",
            StopReason::ContextFull => "CONTEXT_FULL",
        };
        let text = env.new_string(&gen.text).map_err(|_| ())?;
        let reason = env.new_string(reason).map_err(|_| ())?;
        let obj = env
            .new_object(
                "dev/edgelora/Generation",
                "(Ljava/lang/String;Ljava/lang/String;II)V",
                &[JValue::Object(&text), JValue::Object(&reason), JValue::Int(gen.n_prompt as i32), JValue::Int(gen.tokens.len() as i32)],
            )
            .map_err(|_| ())?;
        Ok(obj.into_raw())
    })
}

#[no_mangle]
pub extern "system" fn Java_dev_edgelora_Cancellation_nativeNew<'l>(_env: JNIEnv<'l>, _c: JClass<'l>) -> jlong {
    Box::into_raw(Box::new(CancelFlag::new())) as jlong
}

#[no_mangle]
pub extern "system" fn Java_dev_edgelora_Cancellation_nativeTrigger<'l>(_env: JNIEnv<'l>, _c: JClass<'l>, handle: jlong) {
    if handle != 0 {
        // SAFETY: live pointer from nativeNew.
        unsafe { &*(handle as *const CancelFlag) }.cancel();
    }
}

#[no_mangle]
pub extern "system" fn Java_dev_edgelora_Cancellation_nativeReset<'l>(_env: JNIEnv<'l>, _c: JClass<'l>, handle: jlong) {
    if handle != 0 {
        // SAFETY: live pointer from nativeNew.
        unsafe { &*(handle as *const CancelFlag) }.reset();
    }
}

#[no_mangle]
pub extern "system" fn Java_dev_edgelora_Cancellation_nativeFree<'l>(_env: JNIEnv<'l>, _c: JClass<'l>, handle: jlong) {
    if handle != 0 {
        // SAFETY: from nativeNew, freed once by close().
        drop(unsafe { Box::from_raw(handle as *mut CancelFlag) });
    }
}

#[no_mangle]
pub extern "system" fn Java_dev_edgelora_EdgeLora_nativeVersion<'l>(env: JNIEnv<'l>, _c: JClass<'l>) -> jobject {
    env.new_string(env!("CARGO_PKG_VERSION")).map(|s| s.into_raw()).unwrap_or(std::ptr::null_mut())
}

#[no_mangle]
pub extern "system" fn Java_dev_edgelora_EdgeLora_nativeMerge<'l>(
    mut env: JNIEnv<'l>,
    _c: JClass<'l>,
    model: JString<'l>,
    adapters: JObjectArray<'l>,
    weights: JFloatArray<'l>,
    out: JString<'l>,
    quantizer: JString<'l>,
) {
    guarded(&mut env, (), |env| {
        let (model, out) = (jstr(env, &model, "model")?, jstr(env, &out, "out")?);
        let name = jstr(env, &quantizer, "quantizer")?;
        let quantizer = match crate::merge::Quantizer::from_name(&name) {
            Some(q) => q,
            None if name == "auto" => {
                let base = crate::gguf::GgufFile::open(&model).map_err(|e| lib_error(env, &e.into()))?;
                let n = if adapters.is_null() { 0 } else { env.get_array_length(&adapters).map_err(|_| ())? as usize };
                crate::merge::Quantizer::most_faithful(&base, None, n)
            }
            None => {
                throw(env, EdgeloraStatus::InvalidArgument, &format!("quantizer \"{name}\": expected auto, refit, ggml or gptq"));
                return Err(());
            }
        };
        let n = if adapters.is_null() { 0 } else { env.get_array_length(&adapters).map_err(|_| ())? as usize };
        let mut w = vec![0f32; n];
        if n > 0 {
            env.get_float_array_region(&weights, 0, &mut w).map_err(|_| throw(env, EdgeloraStatus::InvalidArgument, "weights must match adapters"))?;
        }
        let mut paths = Vec::with_capacity(n);
        for (i, weight) in w.iter().enumerate() {
            let o = env.get_object_array_element(&adapters, i as i32).map_err(|_| ())?;
            paths.push((std::path::PathBuf::from(jstr(env, &JString::from(o), "adapter path")?), *weight));
        }
        let opts = crate::merge::MergeOptions { quantizer, ..Default::default() };
        crate::merge::merge_files(model.as_ref(), &paths, out.as_ref(), &opts, &mut |_, _, _| {})
            .map(|_| ())
            .map_err(|e| lib_error(env, &e))
    })
}
