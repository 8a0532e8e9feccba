//! GPTQ's pass over the model, layer by layer: the calibration sequences run through two
//! copies of each layer side by side — the adapters on the fly (the reference, f32 weights
//! W + ΔW) and the merge so far — and each merged projection is re-coded
//! (`quant::gptq::recode`) from the inputs the *merged* model gives it, so a layer's codes
//! also answer the errors of the layers before it ("sequential" GPTQ).
//!
//! The projections that write into the residual stream (attn_output, ffn_down) go further:
//! their target is not W + ΔW but the least-squares weights V that make the merged layer's
//! output, on its own inputs X̃, land where the reference's residual stream is:
//!
//!   min_V ‖X̃·Vᵀ − (X*·(W + ΔW)ᵀ + R* − R̃)‖² + λ·‖V − (W + ΔW)‖²
//!
//! (X* the reference's inputs, R* − R̃ the residual drift accumulated so far), which GPTQ
//! then re-codes. Merge asks for them in every layer, targeted by an adapter or not (for
//! an untargeted one W + ΔW is W): they take up the other projections' errors. λ (a multiple of XᵀX's mean diagonal, [`DRIFT_RIDGE`]) keeps V near
//! W + ΔW: unregularized, V fits the calibration rows' drift and does worse on other text.
//!
//! Measured on the default model with rslora_r8_all (every-position KL to the adapter on
//! the fly, 3 grid rounds, one draw of 256 × 64 sampled calibration tokens, an experiment
//! binary evaluating in f32): held-out text 0.039 (every input from the reference and
//! W + ΔW as every target, the earlier method) → 0.0375 (inputs from the merged model) →
//! 0.035 (and the drift target, λ = 10); the fixture prompts 0.060 → 0.049 → 0.039.
//!
//! Memory: per layer, not per model — the calibration rows' residual streams (two
//! [rows, n_embd] f32) and one layer's activations and XᵀX, where the earlier pass held an
//! n_in² factor for every merged input of the model at once. Each layer's re-coded blocks
//! leave at once through the caller's sink (merge spills them to a temporary file).

use super::MergeInput;
use crate::compute::cholesky;
use crate::compute::cpu::Cpu;
use crate::compute::dense::{matmul, Layout};
use crate::compute::Backend;
use crate::error::{EngineError, Error, GgufError};
use crate::gguf::GgufFile;
use crate::model::config::ModelConfig;
use crate::model::grad::dense;
use crate::model::ops::{attention::{packed_attention_forward, packed_ranges}, embedding::embedding_forward, rmsnorm::rmsnorm_forward, rope::rope_forward, swiglu::swiglu_forward};
use crate::model::weights::{Layer, Weight, Weights};
use crate::quant::gptq::{self, Factor, InputStats};

/// λ of the drift target, times the mean diagonal of X̃ᵀX̃ (rslora_r8_all, as in the
/// module doc: held-out KL 0.037 with λ = 3, 0.035 with 10, 0.037 with 30; the fixture
/// prompts 0.051, 0.039, 0.053; sampled text of another seed 0.037, 0.038, 0.038).
pub const DRIFT_RIDGE: f64 = 10.0;

/// Which tensors the pass re-codes, and how.
pub struct Recoder<'r> {
    /// Whether GPTQ re-codes this tensor (merged, keeps a type GPTQ supports).
    pub wanted: &'r (dyn Fn(&str) -> bool + Sync),
    pub damp: f64,
    pub rounds: usize,
    /// Fewer calibration rows than this times the input width: the tensor is left to the
    /// caller (XᵀX too poorly known).
    pub min_rows_per_input: usize,
    /// λ of attn_output's and ffn_down's drift target ([`DRIFT_RIDGE`]); `None`: every
    /// projection targets W + ΔW.
    pub drift_ridge: Option<f64>,
}

/// One projection of a layer: its stored weight and the reference's f32 values W + ΔW.
struct Proj<'w, 'a> {
    w: &'w Weight<'a>,
    target: Vec<f32>,
}

/// x [rows, n_in] · Wᵀ (+ bias) for W [n_out, n_in] row-major.
fn product(x: &[f32], w: &[f32], n_in: usize, n_out: usize, bias: Option<&[f32]>) -> Vec<f32> {
    let n = x.len() / n_in;
    let mut y = vec![0f32; n * n_out];
    matmul(&mut y, x, Layout::N, w, Layout::T, n, n_out, n_in, false);
    if let Some(b) = bias {
        for row in y.chunks_exact_mut(n_out) {
            row.iter_mut().zip(b).for_each(|(v, b)| *v += *b);
        }
    }
    y
}

fn add(a: &[f32], b: &[f32]) -> Vec<f32> {
    a.iter().zip(b).map(|(x, y)| x + y).collect()
}

fn sub(a: &[f32], b: &[f32]) -> Vec<f32> {
    a.iter().zip(b).map(|(x, y)| x - y).collect()
}

/// The calibration rows: sequences end to end.
struct Rows<'s> {
    tokens: Vec<i32>,
    /// [start, end) of each sequence.
    ranges: Vec<(usize, usize)>,
    positions: Vec<usize>,
    config: &'s ModelConfig,
}

impl Rows<'_> {
    /// Attention of h [rows, n_embd] with q/k/v weights `qkv` (f32, [n_out, n_embd]),
    /// each sequence over itself: [rows, n_head·head_dim].
    fn attention(&self, h: &[f32], qkv: [&[f32]; 3], layer: &Layer) -> Vec<f32> {
        let c = self.config;
        let (qw, kw) = (c.n_head * c.head_dim, c.n_head_kv * c.head_dim);
        let mut q = product(h, qkv[0], c.n_embd, qw, layer.bq.as_deref());
        let mut k = product(h, qkv[1], c.n_embd, kw, layer.bk.as_deref());
        let v = product(h, qkv[2], c.n_embd, kw, layer.bv.as_deref());
        // qwen3: per-head q/k RMSNorm before RoPE.
        if let (Some(qn), Some(kn)) = (&layer.q_norm, &layer.k_norm) {
            q = rmsnorm_forward(&q, qn, c.rms_eps);
            k = rmsnorm_forward(&k, kn, c.rms_eps);
        }
        rope_forward(&mut q, &c.rope(c.n_head), &self.positions);
        rope_forward(&mut k, &c.rope(c.n_head_kv), &self.positions);
        packed_attention_forward(&q, &k, &v, 0, &self.ranges, c.heads(), false).0
    }
}

/// Whether [`recode_layers`]' layer recipe (its own forward of the calibration rows) is
/// the model's: not for gemma3 (scaled embedding, post-norms, GELU gate, sliding
/// windows), whose merged tensors go refit's path instead.
pub fn supports(c: &ModelConfig) -> bool {
    !(c.post_norms || c.gelu_gate || c.sliding_window.is_some() || c.embd_scale.is_some())
}

/// Receives (tensor name, re-coded blocks) from [`recode_layers`].
pub type TensorSink<'s> = dyn FnMut(&str, Vec<u8>) -> Result<(), Error> + 's;

/// Runs `sequences` through the model layer by layer and re-codes every projection
/// `recoder.wanted` names; hands each one's new blocks to `store(name, bytes)` as soon as
/// its layer has it (projections it does not name, or with too few rows, are not
/// stored). `progress(layers done, layers)` after each layer.
pub fn recode_layers(
    base: &GgufFile,
    inputs: &[MergeInput],
    sequences: &[Vec<i32>],
    recoder: &Recoder,
    store: &mut TensorSink,
    progress: &mut dyn FnMut(usize, usize),
) -> Result<(), Error> {
    let c = ModelConfig::from_gguf(base)?;
    if !supports(&c) {
        return Err(EngineError::BadOption(format!("GPTQ's layer-by-layer pass does not implement the {} layer recipe", c.arch)).into());
    }
    let weights = Weights::from_gguf(base, &c)?;
    let seqs: Vec<&Vec<i32>> = sequences.iter().filter(|s| !s.is_empty()).collect();
    let tokens: Vec<i32> = seqs.iter().flat_map(|s| s.iter().copied()).collect();
    if tokens.is_empty() {
        return Err(EngineError::BadOption("GPTQ calibration: no tokens".into()).into());
    }
    if let Some(&bad) = tokens.iter().find(|&&t| t < 0 || t as usize >= c.n_vocab) {
        return Err(EngineError::BadToken { id: bad.into(), n_vocab: c.n_vocab }.into());
    }
    let ranges = packed_ranges(seqs.iter().map(|s| s.len()));
    let positions = seqs.iter().flat_map(|s| 0..s.len()).collect();
    let rows = Rows { tokens, ranges, positions, config: &c };
    let n_rows = rows.tokens.len();
    let bad = |name: &str, reason: String| -> Error { GgufError::BadTensor { path: base.path().to_path_buf(), name: name.into(), reason }.into() };

    // x* (reference) and x̃ (merged so far), [rows, n_embd]
    let emb = embedding_forward(&rows.tokens, &weights.token_embd).map_err(|e| bad(weights.token_embd.name, e.to_string()))?;
    let (mut xs, mut xm) = (emb.clone(), emb);
    // Re-codes the projections `ps` reading one input, `x_m` in the merged model (`x_s`
    // in the reference; with `drift`, the drift target): one XᵀX and factor for all of
    // them. Returns the f32 values the merged stream goes on with (the reference's for a
    // projection not re-coded).
    let mut recode = |ps: &[&Proj], x_m: &[f32], x_s: &[f32], drift: Option<&[f32]>| -> Result<Vec<Vec<f32>>, Error> {
        let n_in = ps[0].w.n_in;
        // Parts of a fused tensor (phi3's attn_qkv, ffn_up) are not re-coded: the tensor's
        // blocks are one unit to the writer, so it goes the refit path (and is listed).
        let todo: Vec<bool> = ps.iter().map(|p| (recoder.wanted)(p.w.name) && !p.w.is_part() && n_rows >= recoder.min_rows_per_input * n_in).collect();
        if !todo.contains(&true) {
            return Ok(ps.iter().map(|p| p.target.clone()).collect());
        }
        let mut stats = InputStats::new(n_in);
        stats.add(x_m);
        let goals = ps
            .iter()
            .zip(&todo)
            .map(|(p, &todo)| match (todo, drift, recoder.drift_ridge) {
                (true, Some(d), Some(ridge)) => drift_target(p, x_m, x_s, d, stats.gram(), ridge).map(Some).map_err(|e| bad(p.w.name, e)),
                (true, _, _) => Ok(Some(p.target.clone())),
                (false, _, _) => Ok(None),
            })
            .collect::<Result<Vec<_>, Error>>()?;
        let f = Factor::new(stats, recoder.damp).map_err(|e| bad(ps[0].w.name, e.to_string()))?;
        let mut values = Vec::with_capacity(ps.len());
        for (p, goal) in ps.iter().zip(goals) {
            let w = p.w;
            let Some(goal) = goal else {
                values.push(p.target.clone());
                continue;
            };
            let bytes = gptq::recode(w.t, w.bytes, &goal, w.n_in, &f, recoder.rounds).map_err(|e| bad(w.name, e.to_string()))?;
            let mut v = vec![0f32; w.n_in * w.n_out];
            Cpu.dequantize(w.t, &bytes, &mut v).map_err(|e| bad(w.name, e.to_string()))?;
            store(w.name, bytes)?;
            values.push(v);
        }
        Ok(values)
    };
    for (l, layer) in weights.layers.iter().enumerate() {
        let proj = |w: &'_ Weight<'_>| -> Result<Vec<f32>, Error> {
            let mut t: Vec<f32> = dense(w)?;
            // A fused tensor's part takes its rows of each B.
            let deltas: Vec<_> = super::deltas(w.name, inputs).into_iter().map(|d| crate::compute::Delta { b: w.b_rows(d.b, d.rank), ..d }).collect();
            Cpu.lora_delta(&mut t, w.n_out, w.n_in, &deltas).map_err(|e| bad(w.name, e.to_string()))?;
            Ok(t)
        };
        let [q, k, v, o, g, u, d] = [&layer.wq, &layer.wk, &layer.wv, &layer.wo, &layer.w_gate, &layer.w_up, &layer.w_down].map(|w| proj(w).map(|target| Proj { w, target }));
        let (q, k, v, o, g, u, d) = (q?, k?, v?, o?, g?, u?, d?);

        // attention block, reference then merged
        let h_s = rmsnorm_forward(&xs, &layer.attn_norm, c.rms_eps);
        let att_s = rows.attention(&h_s, [&q.target, &k.target, &v.target], layer);
        let mid_s = add(&xs, &product(&att_s, &o.target, o.w.n_in, o.w.n_out, None));
        let h_m = rmsnorm_forward(&xm, &layer.attn_norm, c.rms_eps);
        let qkv_m = recode(&[&q, &k, &v], &h_m, &h_s, None)?;
        let att_m = rows.attention(&h_m, [&qkv_m[0], &qkv_m[1], &qkv_m[2]], layer);
        let o_m = recode(&[&o], &att_m, &att_s, Some(&sub(&xs, &xm)))?.remove(0);
        let mid_m = add(&xm, &product(&att_m, &o_m, o.w.n_in, o.w.n_out, None));
        drop((h_s, att_s, h_m, att_m, qkv_m, o_m));

        // feed-forward block
        let h_s = rmsnorm_forward(&mid_s, &layer.ffn_norm, c.rms_eps);
        let act_s = swiglu_forward(&product(&h_s, &g.target, g.w.n_in, g.w.n_out, None), &product(&h_s, &u.target, u.w.n_in, u.w.n_out, None));
        xs = add(&mid_s, &product(&act_s, &d.target, d.w.n_in, d.w.n_out, None));
        let h_m = rmsnorm_forward(&mid_m, &layer.ffn_norm, c.rms_eps);
        let gu_m = recode(&[&g, &u], &h_m, &h_s, None)?;
        let (g_m, u_m) = (&gu_m[0], &gu_m[1]);
        let act_m = swiglu_forward(&product(&h_m, g_m, g.w.n_in, g.w.n_out, None), &product(&h_m, u_m, u.w.n_in, u.w.n_out, None));
        let d_m = recode(&[&d], &act_m, &act_s, Some(&sub(&mid_s, &mid_m)))?.remove(0);
        xm = add(&mid_m, &product(&act_m, &d_m, d.w.n_in, d.w.n_out, None));
        progress(l + 1, c.n_layer);
    }
    Ok(())
}

/// The drift target V [n_out, n_in] of the module doc: (X̃ᵀX̃ + λI)·Vᵀ = X̃ᵀ·Y + λ·Tᵀ with
/// Y = X*·Tᵀ + drift, T = W + ΔW, λ = `ridge` × X̃ᵀX̃'s mean diagonal. `gram` is X̃ᵀX̃
/// [n_in, n_in].
fn drift_target(p: &Proj, x_m: &[f32], x_s: &[f32], drift: &[f32], gram: &[f32], ridge: f64) -> Result<Vec<f32>, String> {
    let (n, n_out) = (p.w.n_in, p.w.n_out);
    let rows = x_m.len() / n;
    // y [rows, n_out] = x_s · Tᵀ + drift
    let mut y = product(x_s, &p.target, n, n_out, None);
    y.iter_mut().zip(drift).for_each(|(y, d)| *y += d);
    // rhs [n, n_out] = x_mᵀ · y
    let mut rhs = vec![0f32; n * n_out];
    matmul(&mut rhs, x_m, Layout::T, &y, Layout::N, n, n_out, rows, false);
    let lambda = ridge * (0..n).map(|j| f64::from(gram[j * n + j])).sum::<f64>() / n as f64;
    // (X̃ᵀX̃ + λI) · Vᵀ = rhs + λ·Tᵀ, Vᵀ [n, n_out]
    let mut a: Vec<f64> = gram.iter().map(|&v| f64::from(v)).collect();
    (0..n).for_each(|i| a[i * n + i] += lambda.max(1e-12));
    let mut b: Vec<f64> = (0..n * n_out).map(|k| f64::from(rhs[k]) + lambda * f64::from(p.target[(k % n_out) * n + k / n_out])).collect();
    cholesky::cholesky(&mut a, n).map_err(|_| "X̃ᵀX̃ + λI of the drift target is not positive definite")?;
    cholesky::solve(&a, n, &mut b, n_out);
    let mut out = vec![0f32; n_out * n];
    for (o, row) in out.chunks_mut(n).enumerate() {
        row.iter_mut().enumerate().for_each(|(i, x)| *x = b[i * n_out + o] as f32);
    }
    if out.iter().any(|x| !x.is_finite()) {
        return Err("the drift target is not finite".into());
    }
    Ok(out)
}
