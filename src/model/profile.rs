//! Where the native engine's time goes: wall time and calls per operation (matmuls by
//! weight format, the adapters' products, attention, norms, RoPE, the output head,
//! sampling, detokenizing), summed over the process. Off unless `EDGELORA_PROFILE=1` or
//! [`enable`] (`edgelora bench --profile`); off, an operation costs one relaxed load.
//! Times are of the calling thread (the kernels' parallel loops run inside them).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::Instant;

static ON: AtomicBool = AtomicBool::new(false);

fn table() -> &'static Mutex<BTreeMap<String, (f64, u64)>> {
    static T: OnceLock<Mutex<BTreeMap<String, (f64, u64)>>> = OnceLock::new();
    T.get_or_init(|| {
        if std::env::var("EDGELORA_PROFILE").is_ok_and(|v| v == "1") {
            ON.store(true, Ordering::Relaxed);
        }
        Mutex::new(BTreeMap::new())
    })
}

/// Turns the profile on for the rest of the process.
pub fn enable() {
    let _ = table();
    ON.store(true, Ordering::Relaxed);
}

pub fn enabled() -> bool {
    let _ = table();
    ON.load(Ordering::Relaxed)
}

/// Runs `f`, adding its wall time to `op` when the profile is on.
#[inline]
pub fn time<R>(op: impl FnOnce() -> String, f: impl FnOnce() -> R) -> R {
    if !ON.load(Ordering::Relaxed) {
        return f();
    }
    let t = Instant::now();
    let r = f();
    let secs = t.elapsed().as_secs_f64();
    let mut m = table().lock().unwrap_or_else(|e| e.into_inner());
    let e = m.entry(op()).or_insert((0.0, 0));
    e.0 += secs;
    e.1 += 1;
    r
}

/// Seconds and calls per operation since the last [`reset`], and clears them.
pub fn take() -> BTreeMap<String, (f64, u64)> {
    std::mem::take(&mut *table().lock().unwrap_or_else(|e| e.into_inner()))
}

pub fn reset() {
    table().lock().unwrap_or_else(|e| e.into_inner()).clear();
}
