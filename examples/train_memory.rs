//! Peak memory of a training job, estimated before step 1 vs measured (the process's
//! peak RSS, VmHWM) after a few steps — one configuration per process, so the peak is
//! this run's. Driven by benches/train_memory.sh.
//!
//!     cargo run --release --example train_memory -- MODEL RANK TARGETS BATCH TOKENS CHECKPOINT STEPS [THREADS]
//!
//! TOKENS: every example is a `{text}` record cut to this many tokens (activations grow
//! with it); CHECKPOINT: 0 or 1. Prints one JSON line.

use edgelora::train::budget::peak_rss_bytes;
use edgelora::train::{parse_targets, JobOptions, TrainConfig, TrainJob};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let a: Vec<String> = std::env::args().skip(1).collect();
    if a.len() < 7 {
        return Err("usage: train_memory MODEL RANK TARGETS BATCH TOKENS CHECKPOINT STEPS [THREADS]".into());
    }
    let (rank, batch, tokens, steps): (usize, usize, usize, usize) = (a[1].parse()?, a[3].parse()?, a[4].parse()?, a[6].parse()?);
    let threads: usize = a.get(7).map(|t| t.parse()).transpose()?.unwrap_or(0);
    let config = TrainConfig { rank, alpha: 2.0 * rank as f32, targets: parse_targets(&a[2])?, steps, batch, max_len: tokens, grad_checkpoint: a[5] == "1", ..TrainConfig::default() };
    let mut job = TrainJob::open(&a[0], JobOptions { config, threads, ..JobOptions::default() })?;
    let words = ["loan", "income", "credit", "approve", "reject", "applicant", "score", "debt", "ratio", "history"];
    for i in 0..(2 * batch).max(8) {
        let text: Vec<&str> = (0..2 * tokens).map(|j| words[(i * 7 + j * 3) % words.len()]).collect();
        job.add_record_json(&serde_json::json!({ "text": text.join(" ") }).to_string(), false)?;
    }
    job.prepare()?;
    let est = *job.memory_estimate().expect("prepared");
    let rss_before = peak_rss_bytes().unwrap_or(0);
    job.run(&mut |_| true)?;
    let peak = peak_rss_bytes().unwrap_or(0);
    let mb = |b: u64| b as f64 / (1u64 << 20) as f64;
    println!(
        "{}",
        serde_json::json!({
            "rank": rank, "targets": a[2], "batch": batch, "tokens": tokens, "checkpoint": a[5] == "1", "threads": threads,
            "estimate_mb": est.total_mb(), "peak_rss_mb": mb(peak), "ratio": est.total_mb() / mb(peak).max(1e-9),
            "peak_rss_before_training_mb": mb(rss_before),
            "parts_mb": {"model": mb(est.model), "head": mb(est.head), "lora_state": mb(est.lora_state), "activations": mb(est.activations), "transient": mb(est.transient), "base": mb(est.base)},
        })
    );
    Ok(())
}
