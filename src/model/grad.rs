//! Training graph: the forward pass over a packed batch with the activations backward
//! needs, and the backward pass down to the LoRA factors (the base stays frozen and
//! quantized in the map; each layer's matrices are dequantized while the layer runs).
//!
//! A batch is packed: its sequences lie end to end in one [n_tokens, width] activation
//! (no padding at all); attention runs per sequence. Loss is cross-entropy on the
//! positions whose target is ≥ 0 (others are masked), through the chunked output head.
//!
//! Generic over [`Real`]: f32 trains, f64 checks gradients against finite differences.

use std::collections::BTreeMap;

use super::config::ModelConfig;
use super::profile::time;
use super::ops::attention::{packed_attention_backward, packed_attention_forward, packed_ranges};
use super::ops::cross_entropy::{cross_entropy_backward, cross_entropy_forward, cross_entropy_hits};
use super::ops::embedding::embedding_forward;
use super::ops::geglu::{geglu_backward, geglu_forward};
use super::ops::linear::{lora_linear_backward, lora_linear_forward, LoraRef};
use super::ops::rmsnorm::{rmsnorm_backward, rmsnorm_forward};
use super::ops::rope::{rope_backward, rope_forward};
use super::ops::swiglu::{swiglu_backward, swiglu_forward};
use super::precision::{BaseMatrix, Precision};
use super::weights::{Layer, Weight, Weights};
use crate::compute::dense::Real;
use crate::error::{EngineError, Error};
use crate::gguf::GgufFile;

/// One trainable LoRA pair: A [rank, n_in], B [n_out, rank], ΔW = scale·B·A.
#[derive(Debug, Clone, PartialEq)]
pub struct LoraParam<T> {
    pub rank: usize,
    pub n_in: usize,
    pub n_out: usize,
    pub scale: T,
    pub a: Vec<T>,
    pub b: Vec<T>,
}

impl<T: Real> LoraParam<T> {
    /// Zeros of the same shape (gradients, optimizer moments).
    pub fn zeros_like(&self) -> LoraParam<T> {
        LoraParam { a: vec![T::zero(); self.a.len()], b: vec![T::zero(); self.b.len()], ..*self }
    }

    /// The factors as weight `w` sees them: A whole, B's rows of `w` (all of them unless
    /// `w` is part of a fused tensor).
    fn for_weight(&self, w: &Weight) -> LoraRef<'_, T> {
        LoraRef { a: &self.a, b: w.b_rows(&self.b, self.rank), rank: self.rank, scale: self.scale }
    }
}

/// Trainable factors by base tensor name (`blk.3.attn_q.weight`).
pub type LoraParams<T> = BTreeMap<String, LoraParam<T>>;

/// A packed batch: sequences end to end. `targets[i]` is the token position i must
/// predict (the next token), or −1 where the loss is masked.
///
/// With `prefix` > 0 the first `prefix` rows are an opening every sequence shares (the
/// chat template's system prompt and the instruction, say), stored and computed once:
/// each sequence's `seq_lens` rows continue it at position `prefix`. The loss and the
/// gradients are those of the batch with the prefix copied into every sequence (up to the
/// order of float additions); the prefix holds no target.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Batch {
    pub tokens: Vec<i32>,
    pub seq_lens: Vec<usize>,
    pub targets: Vec<i32>,
    pub prefix: usize,
}

impl Batch {
    /// The input tokens of the sequences it stands for, the shared prefix counted once per
    /// sequence (what tokens/s figures count, as when every sequence held its copy).
    pub fn n_tokens(&self) -> usize {
        self.prefix * self.seq_lens.len() + self.seq_lens.iter().sum::<usize>()
    }

    pub fn n_targets(&self) -> usize {
        self.targets.iter().filter(|&&t| t >= 0).count()
    }
}

/// Where a forward starts: the residual stream at the input of `layer`, [batch rows, d].
/// A run whose LoRA factors all lie at or above `layer` can compute the frozen layers
/// below once per example and start every later step here (`train::frozen`): their
/// output does not change while the factors train, and backward stops at the lowest
/// factor anyway.
#[derive(Debug, Clone, PartialEq)]
pub struct Start<T> {
    pub layer: usize,
    pub x: Vec<T>,
}

#[derive(Debug, Clone, Copy)]
pub struct GradOptions {
    /// Keep only each layer's input in the forward and recompute the layer in backward.
    pub checkpoint: bool,
    /// Rows of the output head computed at once.
    pub ce_chunk: usize,
    /// The loss gradient per target token (1 / tokens in the optimizer step for a mean).
    pub grad_scale: f64,
}

/// What a forward + backward gives.
pub struct LossGrad<T> {
    /// Σ of the per-token losses over the batch's targets.
    pub loss_sum: f64,
    pub n_targets: usize,
    /// Gradients of grad_scale · loss_sum, same keys and shapes as the params.
    pub grads: LoraParams<T>,
}

/// The seven projections of a layer, in forward order.
const N_LIN: usize = 7;
const Q: usize = 0;
const K: usize = 1;
const V: usize = 2;
const O: usize = 3;
const GATE: usize = 4;
const UP: usize = 5;
const DOWN: usize = 6;

fn projections<'l, 'a>(layer: &'l Layer<'a>) -> [&'l Weight<'a>; N_LIN] {
    [&layer.wq, &layer.wk, &layer.wv, &layer.wo, &layer.w_gate, &layer.w_up, &layer.w_down]
}

/// A layer's activations saved by the forward for backward. The norms' outputs and the
/// SwiGLU product are not kept: backward recomputes them (cheap, elementwise), which
/// saves about a third of the activation memory.
struct Acts<T> {
    x: Vec<T>,
    /// q and k before their per-head norms (`qwen3` only): what the norms' backward reads.
    q_raw: Option<Vec<T>>,
    k_raw: Option<Vec<T>>,
    q: Vec<T>,
    k: Vec<T>,
    v: Vec<T>,
    probs: Vec<Vec<T>>,
    att: Vec<T>,
    x_mid: Vec<T>,
    g: Vec<T>,
    u: Vec<T>,
    /// The attention and feed-forward outputs before their post-norms (`gemma3`).
    o_raw: Option<Vec<T>>,
    dn_raw: Option<Vec<T>>,
    ax: [Vec<T>; N_LIN],
}

/// The frozen model as the training graph sees it: weights borrowed from the map, the
/// output matrix dense (it is read once per chunk of target rows, so it stays resident).
pub struct TrainModel<'a, T> {
    pub config: ModelConfig,
    weights: Weights<'a>,
    output: Vec<T>,
    norms: Vec<(Vec<T>, Vec<T>)>,
    /// Per-head q and k norm weights per layer (`qwen3`).
    qk_norms: Vec<Option<(Vec<T>, Vec<T>)>>,
    /// Post-attention and post-feed-forward norm weights per layer (`gemma3`).
    post_norms: Vec<Option<(Vec<T>, Vec<T>)>>,
    biases: Vec<[Option<Vec<T>>; 3]>,
    output_norm: Vec<T>,
    /// The base products' precision (resolved: never `Auto`).
    precision: Precision,
}

fn cast<T: Real>(v: &[f32]) -> Vec<T> {
    T::from_f32_vec(v.to_vec())
}

fn engine_err(e: impl std::fmt::Display) -> Error {
    EngineError::Backend(format!("training graph: {e}")).into()
}

/// Dequantizes a whole matrix [n_out, n_in] (rows in parallel).
pub fn dense<T: Real>(w: &Weight) -> Result<Vec<T>, Error> {
    let mut out = vec![0f32; w.n_out * w.n_in];
    crate::compute::cpu::dequantize_rows(w.t, w.bytes, w.n_in, &mut out).map_err(|e| engine_err(format!("{}: {e}", w.name)))?;
    Ok(T::from_f32_vec(out))
}

impl<'a, T: Real> TrainModel<'a, T> {
    pub fn new(gguf: &'a GgufFile, config: &ModelConfig) -> Result<TrainModel<'a, T>, Error> {
        let weights = Weights::from_gguf(gguf, config)?;
        let output = dense(&weights.output)?;
        let norms = weights.layers.iter().map(|l| (cast(&l.attn_norm), cast(&l.ffn_norm))).collect();
        let qk_norms = weights.layers.iter().map(|l| l.q_norm.as_deref().zip(l.k_norm.as_deref()).map(|(q, k)| (cast(q), cast(k)))).collect();
        let post_norms = weights.layers.iter().map(|l| l.post_attn_norm.as_deref().zip(l.post_ffn_norm.as_deref()).map(|(a, f)| (cast(a), cast(f)))).collect();
        let biases = weights.layers.iter().map(|l| [l.bq.as_deref().map(cast), l.bk.as_deref().map(cast), l.bv.as_deref().map(cast)]).collect();
        let output_norm = cast(&weights.output_norm);
        Ok(TrainModel { config: config.clone(), weights, output, norms, qk_norms, post_norms, biases, output_norm, precision: Precision::F32 })
    }

    /// The same model with its base products in `precision` (`Auto` resolved for this CPU).
    /// bf16 needs an f32 graph (the f64 one is the gradient checks' reference).
    pub fn with_precision(mut self, precision: Precision) -> Result<TrainModel<'a, T>, Error> {
        let p = precision.resolve();
        if p == Precision::Bf16 && T::as_f32(&[]).is_none() {
            return Err(EngineError::BadOption("bf16 products need an f32 training graph".into()).into());
        }
        self.precision = p;
        Ok(self)
    }

    /// The base products' precision.
    pub fn precision(&self) -> Precision {
        self.precision
    }

    /// Shape (n_in, n_out) of a base matrix by GGUF name, if the model has it (a fused
    /// tensor's whole shape).
    pub fn matrix_shape(&self, name: &str) -> Option<(usize, usize)> {
        self.weights.layers.iter().flat_map(projections).find(|w| w.name == name).map(|w| (w.n_in, w.tensor_rows))
    }

    /// Names of every projection matrix in layer order (the LoRA targets there are), a
    /// fused tensor once.
    pub fn matrix_names(&self) -> Vec<String> {
        let mut names: Vec<String> = self.weights.layers.iter().flat_map(projections).map(|w| w.name.to_string()).collect();
        names.dedup();
        names
    }

    /// The GGUF tensor that holds projection `module` (`attn_q`, …, `ffn_down`, as in
    /// [`crate::train::trainer::MODULES`]) of layer `l`: `blk.{l}.{module}.weight`, or the
    /// fused tensor it is part of (`phi3`: `attn_qkv` for q/k/v, `ffn_up` for gate/up).
    pub fn tensor_for(&self, l: usize, module: &str) -> Option<&str> {
        let i = crate::train::trainer::MODULES.iter().position(|(g, _)| *g == module)?;
        Some(projections(self.weights.layers.get(l)?)[i].name)
    }

    fn check(&self, params: &LoraParams<T>, batch: &Batch) -> Result<(), Error> {
        let c = &self.config;
        if batch.tokens.is_empty() || batch.prefix + batch.seq_lens.iter().sum::<usize>() != batch.tokens.len() || batch.targets.len() != batch.tokens.len() {
            return Err(EngineError::BadOption(format!("bad batch: {} tokens, shared prefix {}, sequence lengths {:?}, {} targets", batch.tokens.len(), batch.prefix, batch.seq_lens, batch.targets.len())).into());
        }
        // A shared prefix predicts nothing (its last row's next token is each sequence's
        // own) and every sequence continues it with rows of its own.
        if batch.prefix > 0 && (batch.seq_lens.is_empty() || batch.seq_lens.contains(&0) || batch.targets[..batch.prefix].iter().any(|&t| t >= 0)) {
            return Err(EngineError::BadOption(format!("bad batch: a shared prefix of {} rows needs sequences of at least one row each (got {:?}) and no target in it", batch.prefix, batch.seq_lens)).into());
        }
        if let Some(&bad) = batch.tokens.iter().chain(&batch.targets).find(|&&t| t < -1 || t >= c.n_vocab as i32) {
            return Err(EngineError::BadToken { id: bad.into(), n_vocab: c.n_vocab }.into());
        }
        for (name, p) in params {
            match self.matrix_shape(name) {
                Some((n_in, n_out)) if n_in == p.n_in && n_out == p.n_out && p.a.len() == p.rank * n_in && p.b.len() == n_out * p.rank => {}
                found => return Err(EngineError::BadOption(format!("LoRA parameter {name}: rank {} [{}→{}] does not fit the base matrix {found:?}", p.rank, p.n_in, p.n_out)).into()),
            }
        }
        Ok(())
    }

    /// `start` fits the batch (rows × width) and no factor in `params` lies below it.
    fn check_start(&self, params: &LoraParams<T>, batch: &Batch, start: &Start<T>) -> Result<(), Error> {
        let (n, d) = (batch.tokens.len(), self.config.n_embd);
        if start.layer > self.config.n_layer || start.x.len() != n * d {
            return Err(EngineError::BadOption(format!("a forward starting at layer {} with {} values: the model has {} layers and the batch needs {n} rows × {d}", start.layer, start.x.len(), self.config.n_layer)).into());
        }
        if let Some(name) = params.keys().find(|n| layer_of(n).is_some_and(|l| l < start.layer)) {
            return Err(EngineError::BadOption(format!("a forward starting at layer {} skips the LoRA factor {name}", start.layer)).into());
        }
        Ok(())
    }

    /// The residual stream at the input of layer `upto` (0 ≤ upto ≤ n_layer) for the
    /// batch's rows, through the base alone: what a [`Start`] at `upto` holds.
    pub fn hidden_states(&self, batch: &Batch, upto: usize) -> Result<Vec<T>, Error> {
        let none = LoraParams::new();
        self.check(&none, batch)?;
        if upto > self.config.n_layer {
            return Err(EngineError::BadOption(format!("hidden states at layer {upto}: the model has {} layers", self.config.n_layer)).into());
        }
        let positions = Self::positions(batch);
        let mut x = self.embed(&batch.tokens)?;
        for l in 0..upto {
            let dense = self.layer_dense(l, true, false)?;
            x = self.layer_forward(l, x, &dense, &none, batch, &positions).0;
        }
        Ok(x)
    }

    /// The embeddings, or `start` checked against the batch: (first layer to run, x).
    fn first_input(&self, params: &LoraParams<T>, batch: &Batch, start: Option<Start<T>>) -> Result<(usize, Vec<T>), Error> {
        match start {
            Some(s) => {
                self.check_start(params, batch, &s)?;
                Ok((s.layer, s.x))
            }
            None => Ok((0, self.embed(&batch.tokens)?)),
        }
    }

    /// Layer `l`'s projections as the products read them: dense in T, or bf16 packed for
    /// the `forward` (x·Wᵀ) and/or `backward` (dy·W) products.
    fn layer_dense(&self, l: usize, forward: bool, backward: bool) -> Result<[BaseMatrix<T>; N_LIN], Error> {
        time(|| "train: dequantize a layer's weights".into(), || {
            let p = projections(&self.weights.layers[l]);
            let mut out: Vec<BaseMatrix<T>> = Vec::with_capacity(N_LIN);
            for w in p {
                out.push(match self.precision {
                    Precision::Bf16 => BaseMatrix::bf16(&dense::<f32>(w)?, w.n_out, w.n_in, forward, backward),
                    _ => BaseMatrix::Dense(dense(w)?),
                });
            }
            Ok(out.try_into().unwrap_or_else(|_| unreachable!("N_LIN projections")))
        })
    }

    fn positions(batch: &Batch) -> Vec<usize> {
        let p = batch.prefix;
        (0..p).chain(batch.seq_lens.iter().flat_map(|&n| p..p + n)).collect()
    }

    /// One layer forward: x [n, d] → x_out, with the saved activations.
    fn layer_forward(&self, l: usize, x: Vec<T>, dense: &[BaseMatrix<T>; N_LIN], params: &LoraParams<T>, batch: &Batch, positions: &[usize]) -> (Vec<T>, Acts<T>) {
        let c = &self.config;
        let layer = &self.weights.layers[l];
        let ws = projections(layer);
        let (attn_norm, ffn_norm) = &self.norms[l];
        let mut ax: [Vec<T>; N_LIN] = Default::default();
        let mut lin = |i: usize, x: &[T], bias: Option<&[T]>| {
            let w = ws[i];
            let (y, a) = time(|| "train forward: linear (base + LoRA)".into(), || lora_linear_forward(x, &dense[i], w.n_in, w.n_out, bias, params.get(w.name).map(|p| p.for_weight(w))));
            ax[i] = a;
            y
        };
        let [bq, bk, bv] = &self.biases[l];
        let h1 = rmsnorm_forward(&x, attn_norm, c.rms_eps);
        let mut q = lin(Q, &h1, bq.as_deref()); // [n, n_head·hd]
        let mut k = lin(K, &h1, bk.as_deref()); // [n, n_kv·hd]
        let v = lin(V, &h1, bv.as_deref()); // [n, n_kv·hd]
        // qwen3: RMSNorm over each head's values, before RoPE.
        let (q_raw, k_raw) = match &self.qk_norms[l] {
            Some((qn, kn)) => {
                let (qr, kr) = (q, k);
                q = rmsnorm_forward(&qr, qn, c.rms_eps);
                k = rmsnorm_forward(&kr, kn, c.rms_eps);
                (Some(qr), Some(kr))
            }
            None => (None, None),
        };
        rope_forward(&mut q, &c.rope_at(l, c.n_head), positions);
        rope_forward(&mut k, &c.rope_at(l, c.n_head_kv), positions);
        let (att, probs) = time(|| "train forward: attention".into(), || packed_attention_forward(&q, &k, &v, batch.prefix, &seq_ranges(batch), c.heads_at(l), true));
        let post = self.post_norms[l].as_ref();
        // gemma3: the outputs are normed before they join the residual stream.
        let (o, o_raw) = match post {
            Some((pa, _)) => {
                let raw = lin(O, &att, None);
                (rmsnorm_forward(&raw, pa, c.rms_eps), Some(raw))
            }
            None => (lin(O, &att, None), None),
        };
        let x_mid: Vec<T> = x.iter().zip(&o).map(|(a, b)| *a + *b).collect();
        let h2 = rmsnorm_forward(&x_mid, ffn_norm, c.rms_eps);
        let g = lin(GATE, &h2, None); // [n, n_ff]
        let u = lin(UP, &h2, None); // [n, n_ff]
        let act = if c.gelu_gate { geglu_forward(&g, &u) } else { swiglu_forward(&g, &u) };
        let (dn, dn_raw) = match post {
            Some((_, pf)) => {
                let raw = lin(DOWN, &act, None);
                (rmsnorm_forward(&raw, pf, c.rms_eps), Some(raw))
            }
            None => (lin(DOWN, &act, None), None), // [n, d]
        };
        let x_out: Vec<T> = x_mid.iter().zip(&dn).map(|(a, b)| *a + *b).collect();
        (x_out, Acts { x, q_raw, k_raw, q, k, v, probs, att, x_mid, g, u, o_raw, dn_raw, ax })
    }

    /// One layer backward: dx_out [n, d] → dx_in (when `need_dx`), LoRA grads added.
    #[allow(clippy::too_many_arguments)]
    fn layer_backward(&self, l: usize, dx_out: Vec<T>, a: &Acts<T>, dense: &[BaseMatrix<T>; N_LIN], params: &LoraParams<T>, grads: &mut LoraParams<T>, batch: &Batch, positions: &[usize], need_dx: bool) -> Vec<T> {
        let c = &self.config;
        let layer = &self.weights.layers[l];
        let ws = projections(layer);
        let (attn_norm, ffn_norm) = &self.norms[l];
        let mut lin_back = |i: usize, dx: Option<&mut [T]>, dy: &[T], x: &[T]| {
            let w = ws[i];
            let lora = match (params.get(w.name), grads.get_mut(w.name)) {
                // A fused tensor's parts each add to all of dA and to their own rows of dB.
                (Some(p), Some(g)) => Some((p.for_weight(w), a.ax[i].as_slice(), g.a.as_mut_slice(), w.b_rows_mut(&mut g.b, p.rank))),
                _ => None,
            };
            time(|| "train backward: linear (dx, LoRA grads)".into(), || lora_linear_backward(dx, dy, x, &dense[i], w.n_in, w.n_out, lora));
        };
        let post = self.post_norms[l].as_ref();
        // Through a post-norm (gemma3): d(raw output) from d(normed output).
        let through_post = |dy: &[T], raw: &Option<Vec<T>>, w: Option<&Vec<T>>| -> Option<Vec<T>> {
            let (raw, w) = (raw.as_ref()?, w?);
            let mut d = vec![T::zero(); raw.len()];
            rmsnorm_backward(&mut d, dy, raw, w, c.rms_eps);
            Some(d)
        };
        // x_out = x_mid + [postnorm](down(act))
        let act = if c.gelu_gate { geglu_forward(&a.g, &a.u) } else { swiglu_forward(&a.g, &a.u) };
        let mut dact = vec![T::zero(); act.len()];
        let d_down = through_post(&dx_out, &a.dn_raw, post.map(|p| &p.1));
        lin_back(DOWN, Some(&mut dact), d_down.as_deref().unwrap_or(&dx_out), &act);
        drop(act);
        let (dg, du) = if c.gelu_gate { geglu_backward(&dact, &a.g, &a.u) } else { swiglu_backward(&dact, &a.g, &a.u) };
        let h2 = rmsnorm_forward(&a.x_mid, ffn_norm, c.rms_eps);
        let mut dh2 = vec![T::zero(); h2.len()];
        lin_back(GATE, Some(&mut dh2), &dg, &h2);
        lin_back(UP, Some(&mut dh2), &du, &h2);
        drop(h2);
        // x_mid = x + o(att)
        let mut dx_mid = dx_out;
        rmsnorm_backward(&mut dx_mid, &dh2, &a.x_mid, ffn_norm, c.rms_eps);
        let mut datt = vec![T::zero(); a.att.len()];
        let d_o = through_post(&dx_mid, &a.o_raw, post.map(|p| &p.0));
        lin_back(O, Some(&mut datt), d_o.as_deref().unwrap_or(&dx_mid), &a.att);
        let (mut dq, mut dk, dv) = time(|| "train backward: attention".into(), || packed_attention_backward(&datt, &a.q, &a.k, &a.v, &a.probs, batch.prefix, &seq_ranges(batch), c.heads_at(l)));
        rope_backward(&mut dq, &c.rope_at(l, c.n_head), positions);
        rope_backward(&mut dk, &c.rope_at(l, c.n_head_kv), positions);
        if let (Some((qn, kn)), Some(qr), Some(kr)) = (&self.qk_norms[l], &a.q_raw, &a.k_raw) {
            let mut dq_raw = vec![T::zero(); qr.len()];
            rmsnorm_backward(&mut dq_raw, &dq, qr, qn, c.rms_eps);
            let mut dk_raw = vec![T::zero(); kr.len()];
            rmsnorm_backward(&mut dk_raw, &dk, kr, kn, c.rms_eps);
            (dq, dk) = (dq_raw, dk_raw);
        }
        let h1 = rmsnorm_forward(&a.x, attn_norm, c.rms_eps);
        let mut dh1 = vec![T::zero(); h1.len()];
        lin_back(Q, Some(&mut dh1), &dq, &h1);
        lin_back(K, Some(&mut dh1), &dk, &h1);
        lin_back(V, Some(&mut dh1), &dv, &h1);
        if need_dx {
            rmsnorm_backward(&mut dx_mid, &dh1, &a.x, attn_norm, c.rms_eps);
        }
        dx_mid
    }

    fn embed(&self, tokens: &[i32]) -> Result<Vec<T>, Error> {
        let mut x = embedding_forward(tokens, &self.weights.token_embd).map_err(engine_err)?;
        if let Some(s) = self.config.embd_scale {
            x.iter_mut().for_each(|v| *v *= s);
        }
        Ok(cast(&x))
    }

    /// Rows of x with a target, through the final norm: (h [m, d], their targets, their row indices).
    fn head_rows(&self, x: &[T], batch: &Batch) -> (Vec<T>, Vec<T>, Vec<i32>, Vec<usize>) {
        let d = self.config.n_embd;
        let rows: Vec<usize> = (0..batch.targets.len()).filter(|&i| batch.targets[i] >= 0).collect();
        let xs: Vec<T> = rows.iter().flat_map(|&i| x[i * d..(i + 1) * d].iter().copied()).collect();
        let hs = rmsnorm_forward(&xs, &self.output_norm, self.config.rms_eps);
        (xs, hs, rows.iter().map(|&i| batch.targets[i]).collect(), rows)
    }

    /// Per-target losses (in target order) with `params` applied; no gradients.
    pub fn losses(&self, params: &LoraParams<T>, batch: &Batch, ce_chunk: usize) -> Result<Vec<f64>, Error> {
        Ok(self.losses_and_hits(params, batch, ce_chunk)?.into_iter().map(|(l, _)| l).collect())
    }

    /// Per-target (loss, greedy hit) in target order with `params` applied: a hit when
    /// the target token is the arg-max of its logits. No gradients.
    pub fn losses_and_hits(&self, params: &LoraParams<T>, batch: &Batch, ce_chunk: usize) -> Result<Vec<(f64, bool)>, Error> {
        self.losses_and_hits_from(params, batch, None, ce_chunk)
    }

    /// [`TrainModel::losses_and_hits`] from `start` (the embeddings when `None`).
    pub fn losses_and_hits_from(&self, params: &LoraParams<T>, batch: &Batch, start: Option<Start<T>>, ce_chunk: usize) -> Result<Vec<(f64, bool)>, Error> {
        self.check(params, batch)?;
        let positions = Self::positions(batch);
        let (first, mut x) = self.first_input(params, batch, start)?;
        for l in first..self.config.n_layer {
            let dense = self.layer_dense(l, true, false)?;
            x = self.layer_forward(l, x, &dense, params, batch, &positions).0;
        }
        let (_, hs, tg, _) = self.head_rows(&x, batch);
        Ok(cross_entropy_hits(&hs, &self.output, &tg, self.config.n_embd, ce_chunk.max(1)))
    }

    /// Forward and backward: the loss and the gradients of grad_scale · Σ losses with
    /// respect to every LoRA factor in `params`.
    pub fn loss_and_grad(&self, params: &LoraParams<T>, batch: &Batch, opt: GradOptions) -> Result<LossGrad<T>, Error> {
        self.loss_and_grad_from(params, batch, None, opt)
    }

    /// [`TrainModel::loss_and_grad`] from `start` (the embeddings when `None`): the same
    /// loss and gradients when `start` holds the base's hidden states at its layer.
    pub fn loss_and_grad_from(&self, params: &LoraParams<T>, batch: &Batch, start: Option<Start<T>>, opt: GradOptions) -> Result<LossGrad<T>, Error> {
        self.check(params, batch)?;
        let c = &self.config;
        let d = c.n_embd;
        let positions = Self::positions(batch);
        let mut grads: LoraParams<T> = params.iter().map(|(k, p)| (k.clone(), p.zeros_like())).collect();
        // Backward stops at the lowest layer holding a LoRA factor.
        let l_min = params.keys().filter_map(|n| layer_of(n)).min().unwrap_or(c.n_layer);

        let (first, mut x) = self.first_input(params, batch, start)?;
        let mut saved: Vec<Option<Acts<T>>> = (0..first).map(|_| None).collect();
        let mut inputs: Vec<Vec<T>> = Vec::with_capacity(c.n_layer);
        for l in first..c.n_layer {
            let dense = self.layer_dense(l, true, false)?;
            if l >= l_min && opt.checkpoint {
                inputs.push(x.clone());
            }
            let (x_out, acts) = self.layer_forward(l, x, &dense, params, batch, &positions);
            saved.push((l >= l_min && !opt.checkpoint).then_some(acts));
            x = x_out;
        }
        let (xs, hs, tg, rows) = self.head_rows(&x, batch);
        let losses = time(|| "train: output head + cross-entropy".into(), || cross_entropy_forward(&hs, &self.output, &tg, d, opt.ce_chunk.max(1)));
        let loss_sum: f64 = losses.iter().sum();

        // backward: head, final norm, then the layers in reverse
        let dloss = vec![T::of(opt.grad_scale); tg.len()];
        let dhs = time(|| "train: output head + cross-entropy".into(), || cross_entropy_backward(&hs, &self.output, &tg, &dloss, d, opt.ce_chunk.max(1)));
        let mut dxs = vec![T::zero(); xs.len()];
        rmsnorm_backward(&mut dxs, &dhs, &xs, &self.output_norm, c.rms_eps);
        let mut dx = vec![T::zero(); x.len()];
        for (j, &i) in rows.iter().enumerate() {
            dx[i * d..(i + 1) * d].copy_from_slice(&dxs[j * d..(j + 1) * d]);
        }
        drop(x);
        for l in (l_min..c.n_layer).rev() {
            // A checkpointed layer runs forward again before its backward.
            let dense = self.layer_dense(l, saved[l].is_none(), true)?;
            let acts = match saved[l].take() {
                Some(a) => a,
                None => self.layer_forward(l, inputs.pop().expect("one input per checkpointed layer"), &dense, params, batch, &positions).1,
            };
            dx = self.layer_backward(l, dx, &acts, &dense, params, &mut grads, batch, &positions, l > l_min);
        }
        Ok(LossGrad { loss_sum, n_targets: tg.len(), grads })
    }
}

/// The layer of a per-layer tensor name (`blk.3.attn_q.weight` → 3).
fn layer_of(name: &str) -> Option<usize> {
    name.strip_prefix("blk.").and_then(|r| r.split('.').next()).and_then(|i| i.parse::<usize>().ok())
}

/// [start, end) token ranges of the batch's sequences (after the shared prefix).
fn seq_ranges(batch: &Batch) -> Vec<(usize, usize)> {
    packed_ranges(batch.seq_lens.iter().copied()).into_iter().map(|(s, e)| (s + batch.prefix, e + batch.prefix)).collect()
}
