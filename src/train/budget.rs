//! Peak memory of a training run, estimated from the configuration before step 1, and
//! the choice of gradient checkpointing / micro-batch that fits a budget.
//!
//! The estimate adds what the trainer holds at its high-water mark (the backward of the
//! top layer, or the forward of the last one when checkpointing):
//!
//! | part | bytes |
//! |---|---|
//! | the mapped model (every weight page is read each step) | file size |
//! | the dense output head (`TrainModel::output`, f32) | V·d·4 |
//! | LoRA factors, their gradient twice (step sum + micro-batch), AdamW m and v | 5·P·4 |
//! | saved activations per trained layer (no checkpointing) | n·(3d + 2q + 2kv + 2ff + Σr)·4 + H·Σℓ²·4 |
//! | with checkpointing: each trained layer's input, plus one layer's activations | n·d·4 per layer |
//! | one layer's dequantized projections (forward and backward) | (2qd + 2kv·d + 3d·ff)·4 |
//! | one layer's backward temporaries | n·(4d + 2q + 2kv + 4ff)·4 |
//! | the output head's chunked cross-entropy | (32·V + 3m·d)·4 |
//! | with `--layers` above 0: the frozen layers' states, per example (capped, [`crate::train::frozen`]) | min(Σ(ℓ−1)·d·4, cap) |
//! | the process itself (code, allocator, threads, the tokenizer's llama.cpp context) | [`BASE_BYTES`] |
//!
//! (n: tokens of the largest micro-batch, ℓ: its sequence lengths, m: its target rows,
//! d/q/kv/ff: model widths, H: heads, V: vocabulary, P: LoRA parameters.) The constant and
//! the terms were checked against measured peak RSS (`benches/train_memory.sh`).

use serde::Serialize;

use crate::error::{Error, TrainError};
use crate::model::config::ModelConfig;

/// Memory of the process besides the model and the training state: code, the allocator's
/// slack, thread stacks, and the llama.cpp context that tokenizes the data.
pub const BASE_BYTES: u64 = 64 << 20;

/// What the estimate is made of, in bytes.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct MemoryEstimate {
    pub model: u64,
    pub head: u64,
    pub lora_state: u64,
    pub activations: u64,
    pub transient: u64,
    pub base: u64,
    /// The frozen layers' states kept per example (0 when training starts at layer 0).
    pub frozen: u64,
    /// Gradient checkpointing assumed.
    pub checkpoint: bool,
    /// Examples per forward/backward assumed.
    pub micro_batch: usize,
}

impl MemoryEstimate {
    pub fn total(&self) -> u64 {
        self.model + self.head + self.lora_state + self.activations + self.transient + self.base + self.frozen
    }

    pub fn total_mb(&self) -> f64 {
        self.total() as f64 / (1u64 << 20) as f64
    }
}

/// The shape of the training run the estimate needs.
#[derive(Debug, Clone)]
pub struct RunShape {
    /// Size of the model file (mapped; every weight is read each step).
    pub model_file_bytes: u64,
    /// LoRA parameters (A and B of every trained matrix).
    pub lora_params: u64,
    /// Σ of the ranks of the trained matrices of one layer.
    pub rank_sum_per_layer: u64,
    /// Layers from the lowest trained one to the top (backward runs through them).
    pub layers_in_backward: usize,
    /// Token lengths of the training examples (the longest ones bound a micro-batch).
    pub example_lengths: Vec<usize>,
    /// Bytes of frozen-layer states the run keeps (training from a layer above 0).
    pub frozen_bytes: u64,
}

impl RunShape {
    /// The shape of training `config` on `mc` (model file of `model_file_bytes`) over
    /// examples of these token lengths.
    pub fn of(mc: &ModelConfig, config: &crate::train::TrainConfig, model_file_bytes: u64, example_lengths: Vec<usize>) -> RunShape {
        let (d, q, kv, ff) = (mc.n_embd, mc.n_head * mc.head_dim, mc.n_head_kv * mc.head_dim, mc.n_ff);
        // The trained tensors: phi3 fuses q/k/v and gate/up (one LoRA pair each).
        let tensor = |t: &str| -> &'static str {
            match t {
                "attn_q" | "attn_k" | "attn_v" if mc.fused_projections => "attn_qkv",
                "ffn_gate" | "ffn_up" if mc.fused_projections => "ffn_gate_up",
                "attn_q" => "attn_q",
                "attn_k" => "attn_k",
                "attn_v" => "attn_v",
                "attn_output" => "attn_output",
                "ffn_gate" => "ffn_gate",
                "ffn_up" => "ffn_up",
                "ffn_down" => "ffn_down",
                _ => "other",
            }
        };
        let dims = |t: &str| -> (usize, usize) {
            match t {
                "attn_qkv" => (d, q + 2 * kv),
                "ffn_gate_up" => (d, 2 * ff),
                "attn_q" => (d, q),
                "attn_k" | "attn_v" => (d, kv),
                "attn_output" => (q, d),
                "ffn_gate" | "ffn_up" => (d, ff),
                "ffn_down" => (ff, d),
                _ => (d, d),
            }
        };
        let mut tensors: Vec<&str> = config.targets.iter().map(|t| tensor(t)).collect();
        tensors.sort_unstable();
        tensors.dedup();
        let (first, last) = config.layers.unwrap_or((0, mc.n_layer.saturating_sub(1)));
        let per_layer: usize = tensors.iter().map(|t| dims(t)).map(|(i, o)| config.rank * (i + o)).sum();
        let layers = last.saturating_sub(first) + 1;
        RunShape {
            model_file_bytes,
            lora_params: (per_layer * layers) as u64,
            rank_sum_per_layer: (config.rank * tensors.len()) as u64,
            layers_in_backward: mc.n_layer.saturating_sub(first),
            frozen_bytes: if first > 0 { crate::train::frozen::bytes_for(example_lengths.iter().copied(), d).min(crate::train::frozen::CAP_BYTES) as u64 } else { 0 },
            example_lengths,
        }
    }
}

/// Estimated peak memory for `micro_batch` examples per forward, with or without checkpointing.
pub fn estimate(mc: &ModelConfig, shape: &RunShape, micro_batch: usize, checkpoint: bool) -> MemoryEstimate {
    let f = 4u64; // f32
    let (d, q, kv, ff, v, h) = (mc.n_embd as u64, (mc.n_head * mc.head_dim) as u64, (mc.n_head_kv * mc.head_dim) as u64, mc.n_ff as u64, mc.n_vocab as u64, mc.n_head as u64);
    let mut lens = shape.example_lengths.clone();
    lens.sort_unstable_by(|a, b| b.cmp(a));
    let top = &lens[..micro_batch.min(lens.len())];
    // The batch feeds tokens[..len-1] of each example.
    let n: u64 = top.iter().map(|&l| l.saturating_sub(1) as u64).sum();
    let sq: u64 = top.iter().map(|&l| (l.saturating_sub(1) as u64).pow(2)).sum();
    // gemma3 also keeps the attention and feed-forward outputs before their post-norms.
    let post = if mc.post_norms { 2 * d } else { 0 };
    let per_layer_acts = n * (3 * d + post + 2 * q + 2 * kv + 2 * ff + shape.rank_sum_per_layer) * f + h * sq * f;
    let layers = shape.layers_in_backward as u64;
    let activations = if checkpoint { layers * n * d * f + per_layer_acts } else { layers * per_layer_acts };
    let dense = (2 * q * d + 2 * kv * d + 3 * d * ff) * f;
    let transient = dense + n * (4 * d + 2 * q + 2 * kv + 4 * ff) * f + (32 * v + 3 * n * d) * f;
    MemoryEstimate {
        model: shape.model_file_bytes,
        head: v * d * f,
        lora_state: 5 * shape.lora_params * f,
        activations,
        transient,
        base: BASE_BYTES,
        frozen: shape.frozen_bytes,
        checkpoint,
        micro_batch: micro_batch.max(1),
    }
}

/// The cheapest way to run `batch` examples per micro-batch within `budget_bytes`: the
/// configuration as asked when it fits; else the largest micro-batch (a halving of
/// `batch`, accumulated to the same step) without checkpointing; else with it. Refuses,
/// stating the smallest estimate and the budget, when nothing fits.
pub fn fit(mc: &ModelConfig, shape: &RunShape, batch: usize, checkpoint: bool, budget_bytes: u64) -> Result<MemoryEstimate, Error> {
    let asked = estimate(mc, shape, batch, checkpoint);
    if asked.total() <= budget_bytes {
        return Ok(asked);
    }
    let mut micros = Vec::new();
    let mut m = batch.max(1);
    loop {
        micros.push(m);
        if m == 1 {
            break;
        }
        m = m.div_ceil(2);
    }
    for ckpt in [checkpoint, true] {
        for &m in &micros {
            let e = estimate(mc, shape, m, ckpt);
            if e.total() <= budget_bytes {
                return Ok(e);
            }
        }
    }
    let least = estimate(mc, shape, 1, true);
    Err(TrainError::Memory {
        estimate_mb: least.total_mb(),
        budget_mb: budget_bytes as f64 / (1u64 << 20) as f64,
        reason: format!(
            "even one example per micro-batch with gradient checkpointing needs about {:.0} MiB (model {:.0}, output head {:.0}, LoRA state {:.0}, activations {:.0}, temporaries {:.0}, frozen-layer states {:.0}, process {:.0}); as asked ({} per micro-batch{}) it needs {:.0} MiB",
            least.total_mb(),
            mib(least.model),
            mib(least.head),
            mib(least.lora_state),
            mib(least.activations),
            mib(least.transient),
            mib(least.frozen),
            mib(least.base),
            batch,
            if checkpoint { ", checkpointing" } else { "" },
            asked.total_mb()
        ),
    }
    .into())
}

fn mib(b: u64) -> f64 {
    b as f64 / (1u64 << 20) as f64
}

/// The process's peak resident memory so far (Linux and Android: `VmHWM`), in bytes.
pub fn peak_rss_bytes() -> Option<u64> {
    let s = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = s.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn smol() -> ModelConfig {
        ModelConfig {
            arch: "llama".into(),
            n_layer: 30,
            n_embd: 576,
            n_head: 9,
            n_head_kv: 3,
            head_dim: 64,
            n_ff: 1536,
            n_vocab: 49152,
            n_ctx_train: 8192,
            rms_eps: 1e-5,
            rope_base: 1e5,
            rope_dim: 64,
            rope_linear_factor: 1.0,
            rope_style: crate::model::config::RopeStyle::Adjacent,
            tied_embeddings: true,
            qk_norm: false,
            rope_freq_factors: None,
            fused_projections: false,
            embd_scale: None,
            attn_scale: 0.125,
            post_norms: false,
            gelu_gate: false,
            sliding_window: None,
            rope_base_swa: 1e5,
        }
    }

    fn shape() -> RunShape {
        RunShape { model_file_bytes: 98 << 20, lora_params: 1_000_000, rank_sum_per_layer: 32, layers_in_backward: 30, example_lengths: vec![100; 64], frozen_bytes: 0 }
    }

    #[test]
    fn fused_projections_count_one_lora_pair_each() {
        // phi3's q/k/v and gate/up are one tensor each: all-linear trains 4 pairs a layer.
        let mc = ModelConfig { fused_projections: true, arch: "phi3".into(), ..smol() };
        let config = crate::train::TrainConfig { rank: 8, targets: crate::train::trainer::parse_targets("all-linear").unwrap(), ..Default::default() };
        let s = RunShape::of(&mc, &config, 0, vec![10]);
        let (d, q, kv, ff) = (576, 576, 192, 1536);
        let want = 8 * ((d + q + 2 * kv) + (q + d) + (d + 2 * ff) + (ff + d)) * 30;
        assert_eq!(s.lora_params, want as u64);
        assert_eq!(s.rank_sum_per_layer, 32);
        let split = RunShape::of(&smol(), &config, 0, vec![10]);
        assert_eq!(split.rank_sum_per_layer, 56);
    }

    #[test]
    fn checkpointing_and_smaller_micro_batches_cost_less() {
        let (mc, s) = (smol(), shape());
        let full = estimate(&mc, &s, 8, false).total();
        assert!(estimate(&mc, &s, 4, false).total() < full);
        assert!(estimate(&mc, &s, 8, true).total() < full);
        assert!(estimate(&mc, &s, 1, true).total() < estimate(&mc, &s, 2, true).total());
    }

    #[test]
    fn fit_keeps_what_fits_and_picks_the_largest_micro_batch_otherwise() {
        let (mc, s) = (smol(), shape());
        let full = estimate(&mc, &s, 8, false);
        assert_eq!(fit(&mc, &s, 8, false, full.total()).unwrap(), full);
        let half = estimate(&mc, &s, 4, false);
        let got = fit(&mc, &s, 8, false, half.total()).unwrap();
        assert_eq!((got.micro_batch, got.checkpoint), (4, false));
        let tiny = estimate(&mc, &s, 1, true).total() - 1;
        let err = fit(&mc, &s, 8, false, tiny).unwrap_err().to_string();
        assert!(err.contains("MiB") && err.contains("budget"), "{err}");
    }
}
