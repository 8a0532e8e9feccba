//! Decode throughput of the batched native forward: B sequences, each with its own
//! synthetic adapter (rank R, all linear layers), stepped together after a short prompt;
//! aggregate and per-sequence tokens/s per batch size, against B = 1. No HTTP, no
//! sampling: the engine's share of `benches/serve_bench.sh`.
//!
//!   cargo run --release --example batch_decode -- [MODEL] [THREADS] [RANK] [STEPS] [BATCHES]
//!   (defaults: the default model, 1, 16, 32, "1,2,4,8,16")

use std::time::Instant;

use edgelora::adapter::random_lora;
use edgelora::adapter::LoraAdapter;
use edgelora::compute::cpu::Cpu;
use edgelora::gguf::GgufFile;
use edgelora::model::{BatchItem, NativeModel, Session};

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let arg = |i: usize, d: &str| args.get(i).cloned().unwrap_or_else(|| d.to_string());
    let model_path = arg(1, "models/SmolLM2-135M-Instruct.Q4_1.gguf");
    let threads: usize = arg(2, "1").parse().expect("THREADS");
    let rank: usize = arg(3, "16").parse().expect("RANK");
    let steps: usize = arg(4, "32").parse().expect("STEPS");
    let batches: Vec<usize> = arg(5, "1,2,4,8,16").split(',').map(|b| b.parse().expect("BATCHES")).collect();
    rayon::ThreadPoolBuilder::new().num_threads(threads).build_global().expect("thread pool");
    let gguf = GgufFile::open(&model_path).expect("model");
    let modules = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"];
    let max_b = batches.iter().copied().max().unwrap_or(1);
    let adapters: Vec<LoraAdapter> = (0..max_b).map(|i| random_lora(&gguf, &modules, rank, 2.0 * rank as f32, 0.02, i as u64 + 1)).collect();
    let model = NativeModel::new(GgufFile::open(&model_path).expect("model"), Box::new(Cpu)).expect("native model");
    let prompt: Vec<i32> = vec![1, 9690, 198, 2683, 359, 504, 3947, 9656];
    println!("batched decode: {model_path}, {threads} thread(s), rank {rank} all-linear adapter per sequence, {steps} steps after an 8-token prompt");
    println!("{:>6} {:>12} {:>14} {:>10}", "batch", "agg tok/s", "per-seq tok/s", "vs B=1");
    let mut base = None;
    for &b in &batches {
        let sets: Vec<Vec<(&LoraAdapter, f32)>> = adapters.iter().take(b).map(|a| vec![(a, 1.0)]).collect();
        let mut sessions: Vec<Session> = (0..b).map(|_| Session::default()).collect();
        let mut items: Vec<BatchItem> = sessions.iter_mut().zip(&sets).map(|(s, a)| BatchItem { session: s, tokens: &prompt, adapters: a, all_logits: false }).collect();
        model.forward_batch(&mut items).expect("prefill");
        drop(items);
        let tokens: Vec<[i32; 1]> = (0..b).map(|i| [198 + i as i32]).collect();
        let t0 = Instant::now();
        for _ in 0..steps {
            let mut items: Vec<BatchItem> = sessions.iter_mut().zip(&sets).zip(&tokens).map(|((s, a), t)| BatchItem { session: s, tokens: t, adapters: a, all_logits: false }).collect();
            model.forward_batch(&mut items).expect("step");
        }
        let secs = t0.elapsed().as_secs_f64();
        let agg = (b * steps) as f64 / secs;
        let base = *base.get_or_insert(agg);
        println!("{:>6} {:>12.1} {:>14.1} {:>9.2}x", b, agg, agg / b as f64, agg / base);
    }
}
