//! The trainer: LoRA factors (f32 master weights) on the frozen quantized base, AdamW,
//! schedule, gradient accumulation and clipping, deterministic data order, checkpoints.
//!
//! Optimizer step s (0-based) consumes micro-batches s·G … s·G+G−1 of one endless
//! sequence: epoch e is a permutation of the examples drawn from the seed and e, cut into
//! micro-batches of B examples. Everything that decides a step's numbers is a function of
//! (seed, config, data, step), so a resumed run repeats an uninterrupted one exactly.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};

use super::checkpoint::{self, Checkpoint, CheckpointState};
use super::data::{pack_shared, Example};
use super::frozen::FrozenStates;
use super::optim::{clip_grad_norm, lr_at, AdamW, Moments, Schedule};
use crate::adapter::{FactorDtype, LoraAdapter, LoraTensor};
use crate::error::{Error, TrainError};
use crate::gguf::GgufFile;
use crate::model::config::ModelConfig;
use crate::model::grad::{Batch, GradOptions, LoraParam, LoraParams, TrainModel};
use crate::model::precision::Precision;

/// Module names the trainer targets, GGUF short names with their PEFT spelling.
pub const MODULES: [(&str, &str); 7] = [("attn_q", "q_proj"), ("attn_k", "k_proj"), ("attn_v", "v_proj"), ("attn_output", "o_proj"), ("ffn_gate", "gate_proj"), ("ffn_up", "up_proj"), ("ffn_down", "down_proj")];

/// Parses `q_proj,v_proj`, `attn_q,attn_v` or `all-linear` into GGUF module names.
pub fn parse_targets(s: &str) -> Result<Vec<String>, Error> {
    if s.trim() == "all-linear" {
        return Ok(MODULES.iter().map(|(g, _)| g.to_string()).collect());
    }
    let mut out = Vec::new();
    for t in s.split(',').map(str::trim).filter(|t| !t.is_empty()) {
        // Fused names (phi3's tensors and PEFT modules) stand for their parts; on phi3
        // the parts map back to the one fused tensor.
        let parts: &[&str] = match t {
            "qkv_proj" | "attn_qkv" => &["attn_q", "attn_k", "attn_v"],
            "gate_up_proj" => &["ffn_gate", "ffn_up"],
            _ => &[],
        };
        if !parts.is_empty() {
            out.extend(parts.iter().map(|p| p.to_string()).filter(|p| !out.contains(p)).collect::<Vec<_>>());
            continue;
        }
        let Some((g, _)) = MODULES.iter().find(|(g, h)| *g == t || *h == t) else {
            let known: Vec<&str> = MODULES.iter().map(|(_, h)| *h).collect();
            return Err(TrainError::BadOption { option: "--targets".into(), reason: format!("{t:?} is not a projection ({}, qkv_proj, gate_up_proj or all-linear)", known.join(", ")) }.into());
        };
        if !out.iter().any(|o| o == g) {
            out.push(g.to_string());
        }
    }
    if out.is_empty() {
        return Err(TrainError::BadOption { option: "--targets".into(), reason: "no module named".into() }.into());
    }
    Ok(out)
}

/// Every setting that decides the numbers of a run (stored in checkpoints and manifests).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrainConfig {
    pub rank: usize,
    pub alpha: f32,
    pub use_rslora: bool,
    /// GGUF module names (`attn_q`, …).
    pub targets: Vec<String>,
    /// Layers [first, last] trained; all when `None`.
    pub layers: Option<(usize, usize)>,
    pub lr: f64,
    pub schedule: Schedule,
    pub warmup_ratio: f64,
    /// Optimizer steps in all.
    pub steps: usize,
    pub batch: usize,
    pub grad_accum: usize,
    pub max_len: usize,
    pub optimizer: AdamW,
    pub max_grad_norm: f64,
    pub seed: u64,
    pub grad_checkpoint: bool,
    pub train_on_prompt: bool,
    pub group_by_length: bool,
    /// `--balance` as given (label|scenario[=RATIOS]); the groups themselves are set with
    /// [`Trainer::set_balance`]. Recorded so a resume with other sampling is refused.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub balance: Option<String>,
    /// `--dedup`: exact and near duplicates were dropped before training.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub dedup: bool,
    /// `--replay`: the replayed examples' share of every micro-batch (set with
    /// [`Trainer::set_replay`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replay: Option<f64>,
    /// `--init-adapter`: the fingerprint of the adapter step 0 starts from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub init_fingerprint: Option<String>,
    /// Examples per forward/backward when smaller than `batch` (a memory budget's choice):
    /// each micro-batch of `batch` examples is computed in pieces of this many and their
    /// gradients summed — the same step up to float rounding.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub micro_batch: Option<usize>,
    /// `--precision`: the base products' precision ([`Precision`]); a run records it
    /// resolved (`Auto` becomes what this CPU ran), so a resume repeats it.
    #[serde(default, skip_serializing_if = "Precision::is_f32")]
    pub precision: Precision,
}

impl Default for TrainConfig {
    /// The seed document's settings: r 16, alpha 32, q/v, lr 3e-4, cosine, 3% warm-up.
    fn default() -> Self {
        TrainConfig {
            rank: 16,
            alpha: 32.0,
            use_rslora: false,
            targets: vec!["attn_q".into(), "attn_v".into()],
            layers: None,
            lr: 3e-4,
            schedule: Schedule::Cosine,
            warmup_ratio: 0.03,
            steps: 100,
            batch: 8,
            grad_accum: 1,
            max_len: 512,
            optimizer: AdamW::default(),
            max_grad_norm: 1.0,
            seed: 42,
            grad_checkpoint: false,
            train_on_prompt: false,
            group_by_length: false,
            balance: None,
            dedup: false,
            replay: None,
            init_fingerprint: None,
            micro_batch: None,
            precision: Precision::F32,
        }
    }
}

impl TrainConfig {
    /// The configuration without the choices that only trade memory for time (gradient
    /// checkpointing, the micro-batch split): a checkpoint resumes under another budget.
    pub fn result_defining(&self) -> TrainConfig {
        TrainConfig { grad_checkpoint: false, micro_batch: None, ..self.clone() }
    }

    pub fn scale(&self) -> f32 {
        if self.use_rslora {
            self.alpha / (self.rank as f32).sqrt()
        } else {
            self.alpha / self.rank as f32
        }
    }

    pub fn warmup_steps(&self) -> usize {
        (self.warmup_ratio * self.steps as f64).ceil() as usize
    }

    /// Optimizer steps of `epochs` passes over `n_examples`.
    pub fn steps_for_epochs(&self, epochs: usize, n_examples: usize) -> usize {
        let micro = n_examples.div_ceil(self.batch.max(1));
        (epochs * micro).div_ceil(self.grad_accum.max(1)).max(1)
    }

    pub(crate) fn check(&self) -> Result<(), Error> {
        let bad = |o: &str, r: String| -> Result<(), Error> { Err(TrainError::BadOption { option: o.into(), reason: r }.into()) };
        if self.rank == 0 {
            return bad("--rank", "must be ≥ 1".into());
        }
        if !(self.lr > 0.0 && self.lr.is_finite()) {
            return bad("--lr", format!("{} is not a positive number", self.lr));
        }
        if self.batch == 0 || self.grad_accum == 0 || self.steps == 0 || self.max_len < 2 {
            return bad("--batch/--grad-accum/--steps/--max-len", format!("batch {}, grad-accum {}, steps {}, max-len {}: each must be ≥ 1 (max-len ≥ 2)", self.batch, self.grad_accum, self.steps, self.max_len));
        }
        if !(0.0..1.0).contains(&self.warmup_ratio) {
            return bad("--warmup-ratio", format!("{} is not in [0, 1)", self.warmup_ratio));
        }
        if let Some((a, b)) = self.layers {
            if a > b {
                return bad("--layers", format!("{a}-{b} is empty"));
            }
        }
        Ok(())
    }
}

/// What one optimizer step did.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StepMetrics {
    /// 1-based.
    pub step: usize,
    pub epoch: f64,
    /// Mean loss over the step's target tokens.
    pub loss: f64,
    /// Global gradient norm before clipping.
    pub grad_norm: f64,
    pub lr: f64,
    /// Tokens through forward + backward (no padding exists: batches are packed).
    pub tokens: usize,
    pub targets: usize,
    pub tokens_per_s: f64,
    pub secs: f64,
}

/// How a run ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Finished,
    /// Stopped by the stop flag after saving a checkpoint.
    Interrupted,
}

pub struct Trainer<'a> {
    pub config: TrainConfig,
    model: TrainModel<'a, f32>,
    base_fingerprint: String,
    data_fingerprint: String,
    train: Vec<Example>,
    eval: Vec<Example>,
    pub params: LoraParams<f32>,
    moments: Moments,
    /// Optimizer steps completed.
    pub step: usize,
    epoch_cache: BTreeMap<usize, Vec<Vec<usize>>>,
    sampling: Sampling,
    /// Where the current data's micro-batches start counting and the epochs run before
    /// them: (0, 0) unless [`Trainer::extend_train`] added examples mid-run.
    data_origin: (usize, f64),
    /// The training and evaluation examples' states below the lowest trained layer, when
    /// that layer is above 0 (`--layers`): computed once per example, see [`super::frozen`].
    frozen: Option<FrozenPair>,
}

/// A run's frozen-layer states: training examples by their index in `train`, evaluation
/// examples by theirs in `eval`.
#[derive(Clone)]
pub struct FrozenPair {
    pub train: Arc<FrozenStates>,
    pub eval: Arc<FrozenStates>,
}

/// How an epoch picks its examples.
#[derive(Debug, Clone, PartialEq)]
enum Sampling {
    /// Every example once, shuffled.
    Uniform,
    /// Each group's share of an epoch and each example's group (`--balance`).
    Balance { shares: Vec<f64>, of_example: Vec<usize> },
    /// The first `n_new` examples once each, plus replayed ones (the rest) spread evenly
    /// over the epoch so every micro-batch holds `fraction` of them (±1 example).
    Replay { n_new: usize, fraction: f64 },
}

/// Replayed examples drawn per epoch for `n_new` new ones at a replay `fraction`.
pub fn replay_draws(n_new: usize, fraction: f64) -> usize {
    (n_new as f64 * fraction / (1.0 - fraction)).round() as usize
}

impl<'a> Trainer<'a> {
    /// A fresh run: A Kaiming-uniform (bound 1/√n_in, as PEFT), B zero — step 0 is the base.
    pub fn new(base: &'a GgufFile, mut config: TrainConfig, train: Vec<Example>, eval: Vec<Example>, data_fingerprint: String) -> Result<Trainer<'a>, Error> {
        config.check()?;
        config.precision = config.precision.resolve();
        if train.is_empty() {
            return Err(TrainError::BadOption { option: "--data".into(), reason: "no training examples".into() }.into());
        }
        if let Some(i) = train.iter().chain(&eval).position(|e| e.tokens.len() < 2 || e.trained.len() != e.tokens.len()) {
            return Err(TrainError::BadOption { option: "examples".into(), reason: format!("example {i} has fewer than 2 tokens or a mask of another length") }.into());
        }
        let mc = ModelConfig::from_gguf(base)?;
        if mc.n_layer == 0 {
            return Err(TrainError::BadOption { option: "--model".into(), reason: "the model has no layers".into() }.into());
        }
        let model = TrainModel::<f32>::new(base, &mc)?.with_precision(config.precision)?;
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(config.seed);
        let mut params = LoraParams::new();
        let (first, last) = config.layers.unwrap_or((0, mc.n_layer - 1));
        if last >= mc.n_layer {
            return Err(TrainError::BadOption { option: "--layers".into(), reason: format!("the model has layers 0-{}", mc.n_layer - 1) }.into());
        }
        for l in first..=last {
            for t in &config.targets {
                // The tensor holding the projection (a fused one once: phi3's q/k/v).
                let name = model.tensor_for(l, t).map(str::to_string).unwrap_or_else(|| format!("blk.{l}.{t}.weight"));
                if params.contains_key(&name) {
                    continue;
                }
                // A fused tensor trains as a whole: all of its parts, or refused.
                let parts: Vec<&str> = MODULES.iter().map(|(g, _)| *g).filter(|g| model.tensor_for(l, g) == Some(name.as_str())).collect();
                if let Some(missing) = parts.iter().find(|p| !config.targets.iter().any(|t| t == *p)) {
                    return Err(TrainError::BadOption {
                        option: "--targets".into(),
                        reason: format!("{t} is part of the fused tensor {name} (with {}): target all of them ({missing} is missing; qkv_proj / gate_up_proj name them together)", parts.join(", ")),
                    }
                    .into());
                }
                let (n_in, n_out) = model.matrix_shape(&name).ok_or_else(|| TrainError::BadOption { option: "--targets".into(), reason: format!("the model has no tensor {name}") })?;
                let bound = 1.0 / (n_in as f64).sqrt();
                let a = (0..config.rank * n_in).map(|_| rng.random_range(-bound..bound) as f32).collect();
                params.insert(name, LoraParam { rank: config.rank, n_in, n_out, scale: config.scale(), a, b: vec![0.0; n_out * config.rank] });
            }
        }
        let moments = Moments::zeros_like(&params);
        let frozen = (first > 0).then(|| FrozenPair { train: Arc::new(FrozenStates::new(first)), eval: Arc::new(FrozenStates::new(first)) });
        Ok(Trainer { config, model, base_fingerprint: base.tensor_info_fingerprint(), data_fingerprint, train, eval, params, moments, step: 0, epoch_cache: BTreeMap::new(), sampling: Sampling::Uniform, data_origin: (0, 0.0), frozen })
    }

    /// Continues from a checkpoint written by a run with the same configuration, base and data.
    pub fn resume(&mut self, dir: &std::path::Path) -> Result<(), Error> {
        let ck = checkpoint::load(dir)?;
        let path = checkpoint::file_in(dir);
        let mismatch = |what: &str, a: String, b: String| -> Error { TrainError::Checkpoint { path: path.clone(), reason: format!("{what} differs: checkpoint has {a}, this run has {b}") }.into() };
        if ck.state.config.result_defining() != self.config.result_defining() {
            return Err(mismatch("the training configuration", serde_json::to_string(&ck.state.config.result_defining()).unwrap_or_default(), serde_json::to_string(&self.config.result_defining()).unwrap_or_default()));
        }
        if ck.state.base_fingerprint != self.base_fingerprint {
            return Err(mismatch("the base model", ck.state.base_fingerprint, self.base_fingerprint.clone()));
        }
        if ck.state.data_fingerprint != self.data_fingerprint {
            return Err(mismatch("the training data", ck.state.data_fingerprint, self.data_fingerprint.clone()));
        }
        let shapes = |p: &LoraParams<f32>| p.iter().map(|(k, t)| (k.clone(), t.rank, t.n_in, t.n_out)).collect::<Vec<_>>();
        if shapes(&ck.params) != shapes(&self.params) {
            return Err(mismatch("the set of LoRA tensors", format!("{} tensors", ck.params.len()), format!("{} tensors", self.params.len())));
        }
        self.params = ck.params;
        self.moments = ck.moments;
        self.step = ck.state.step;
        Ok(())
    }

    pub fn save_checkpoint(&self, dir: &std::path::Path) -> Result<(), Error> {
        if self.data_origin.0 != 0 {
            // A checkpoint records the step, not where the data changed: resuming it
            // would replay other micro-batches.
            return Err(TrainError::Checkpoint { path: checkpoint::file_in(dir), reason: format!("this run added training examples at step {}; it cannot be checkpointed", self.data_origin.0 / self.config.grad_accum.max(1)) }.into());
        }
        let state = CheckpointState {
            format: 1,
            step: self.step,
            total_steps: self.config.steps,
            config: self.config.clone(),
            base_fingerprint: self.base_fingerprint.clone(),
            data_fingerprint: self.data_fingerprint.clone(),
            shapes: self.params.iter().map(|(k, p)| (k.clone(), [p.rank, p.n_in, p.n_out], p.scale)).collect(),
        };
        checkpoint::save(dir, &Checkpoint { state, params: self.params.clone(), moments: self.moments.clone() })
    }

    /// Balanced sampling (`--balance`): every epoch draws as many examples as there are,
    /// group g contributing `shares[g]` of them (largest-remainder rounding), its members
    /// in a shuffled cycle (a small group repeats, a large one is sub-sampled);
    /// `of_example[i]` is example i's group. Deterministic for the seed. Call before step 1.
    pub fn set_balance(&mut self, shares: Vec<f64>, of_example: Vec<usize>) -> Result<(), Error> {
        let bad = |reason: String| -> Error { TrainError::BadOption { option: "--balance".into(), reason }.into() };
        if of_example.len() != self.train.len() {
            return Err(bad(format!("{} group indices for {} examples", of_example.len(), self.train.len())));
        }
        if let Some(&g) = of_example.iter().find(|&&g| g >= shares.len()) {
            return Err(bad(format!("group {g} of {} groups", shares.len())));
        }
        if let Some(g) = (0..shares.len()).find(|&g| shares[g] > 0.0 && !of_example.contains(&g)) {
            return Err(bad(format!("group {g} has a share {} but no examples", shares[g])));
        }
        if shares.iter().any(|s| !(s.is_finite() && *s >= 0.0)) || shares.iter().sum::<f64>() <= 0.0 {
            return Err(bad(format!("shares {shares:?} must be finite, ≥ 0 and not all 0")));
        }
        self.sampling = Sampling::Balance { shares, of_example };
        self.epoch_cache.clear();
        Ok(())
    }

    /// Replay (`--replay`): the examples after the first `n_new` are earlier data, drawn in
    /// a shuffled cycle and spread so each micro-batch holds `fraction` of replayed
    /// examples (±1); an epoch is the new examples once each plus
    /// [`replay_draws`]`(n_new, fraction)` replayed ones. Call before step 1.
    pub fn set_replay(&mut self, n_new: usize, fraction: f64) -> Result<(), Error> {
        let bad = |reason: String| -> Error { TrainError::BadOption { option: "--replay".into(), reason }.into() };
        if !(fraction > 0.0 && fraction < 1.0) {
            return Err(bad(format!("fraction {fraction} must be in (0, 1)")));
        }
        if n_new == 0 || n_new >= self.train.len() {
            return Err(bad(format!("{n_new} new examples of {}: both the new and the replayed data need examples", self.train.len())));
        }
        if self.config.group_by_length || self.config.balance.is_some() {
            return Err(bad("cannot be combined with --group-by-length or --balance".into()));
        }
        self.sampling = Sampling::Replay { n_new, fraction };
        self.epoch_cache.clear();
        Ok(())
    }

    /// Starts from `parent`'s factors instead of the fresh initialization (`--init-adapter`):
    /// the same tensors with the same ranks, shapes and scales as this run's configuration,
    /// else an error naming the first difference. Only before step 1.
    pub fn init_from(&mut self, parent: &LoraAdapter) -> Result<(), Error> {
        let bad = |reason: String| -> Error { TrainError::BadOption { option: "--init-adapter".into(), reason }.into() };
        if self.step != 0 {
            return Err(bad(format!("the run is at step {}; an adapter can only start a run", self.step)));
        }
        let mine: Vec<&String> = self.params.keys().collect();
        let theirs: Vec<&String> = parent.tensors.keys().collect();
        if mine != theirs {
            let missing: Vec<_> = mine.iter().filter(|k| !parent.tensors.contains_key(**k)).take(3).collect();
            let extra: Vec<_> = theirs.iter().filter(|k| !self.params.contains_key(**k)).take(3).collect();
            return Err(bad(format!("the adapter's tensors differ from this run's targets × layers: missing {missing:?}, extra {extra:?}")));
        }
        for (name, p) in self.params.iter_mut() {
            let t = &parent.tensors[name];
            if (t.rank, t.n_in, t.n_out) != (p.rank, p.n_in, p.n_out) {
                return Err(bad(format!("{name}: rank {} shape {}×{} in the adapter, rank {} shape {}×{} in this run", t.rank, t.n_out, t.n_in, p.rank, p.n_out, p.n_in)));
            }
            if (t.scale - p.scale).abs() > 1e-6 * p.scale.abs().max(1.0) {
                return Err(bad(format!("{name}: scale {} in the adapter, {} from this run's alpha/rank", t.scale, p.scale)));
            }
            p.a.clone_from(&t.a);
            p.b.clone_from(&t.b);
        }
        self.config.init_fingerprint = Some(parent.fingerprint());
        Ok(())
    }

    /// Keeps an earlier run's AdamW moments (`--init-optimizer`): the checkpoint's tensors
    /// must be this run's. Only before step 1.
    pub fn init_optimizer(&mut self, dir: &std::path::Path) -> Result<(), Error> {
        let ck = checkpoint::load(dir)?;
        let path = checkpoint::file_in(dir);
        let shapes = |p: &LoraParams<f32>| p.iter().map(|(k, t)| (k.clone(), t.rank, t.n_in, t.n_out)).collect::<Vec<_>>();
        if self.step != 0 || shapes(&ck.moments.m) != shapes(&self.params) {
            return Err(TrainError::Checkpoint { path, reason: format!("its optimizer moments ({} tensors) do not match this run's LoRA tensors ({}) at step 0", ck.moments.m.len(), self.params.len()) }.into());
        }
        self.moments = ck.moments;
        Ok(())
    }

    /// Adds training examples mid-run (`--auto`'s final stage continues its best candidate
    /// on the training and validation splits together): from the next step, epochs are
    /// shuffles of all the examples, counted from here; the factors, the optimizer moments
    /// and the step carry on. Uniform sampling only.
    pub fn extend_train(&mut self, more: Vec<Example>) -> Result<(), Error> {
        let bad = |reason: String| -> Error { TrainError::BadOption { option: "examples".into(), reason }.into() };
        if self.sampling != Sampling::Uniform {
            return Err(bad("examples can be added only to a run with uniform sampling (no --balance or --replay)".into()));
        }
        if let Some(i) = more.iter().position(|e| e.tokens.len() < 2 || e.trained.len() != e.tokens.len()) {
            return Err(bad(format!("added example {i} has fewer than 2 tokens or a mask of another length")));
        }
        let k = self.step * self.config.grad_accum;
        let epochs = self.data_origin.1 + (k - self.data_origin.0) as f64 / self.micro_per_epoch() as f64;
        if let Some(f) = &self.frozen {
            // An added example that is an evaluation example keeps the states computed for it.
            for (j, e) in more.iter().enumerate() {
                if let Some(i) = self.eval.iter().position(|v| v.tokens == e.tokens) {
                    f.train.adopt(&f.eval, i, self.train.len() + j);
                }
            }
        }
        self.train.extend(more);
        self.data_origin = (k, epochs);
        self.epoch_cache.clear();
        Ok(())
    }

    /// Examples drawn per epoch.
    pub fn epoch_len(&self) -> usize {
        match &self.sampling {
            Sampling::Replay { n_new, fraction } => n_new + replay_draws(*n_new, *fraction),
            _ => self.train.len(),
        }
    }

    fn micro_per_epoch(&self) -> usize {
        self.epoch_len().div_ceil(self.config.batch)
    }

    /// The examples of global micro-batch k.
    fn micro_batch(&mut self, k: usize) -> Vec<usize> {
        let k = k - self.data_origin.0;
        let per = self.micro_per_epoch();
        let (epoch, i) = (k / per, k % per);
        if !self.epoch_cache.contains_key(&epoch) {
            let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(self.config.seed ^ (epoch as u64 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15));
            let mut order: Vec<usize> = match &self.sampling {
                Sampling::Uniform => {
                    let mut o: Vec<usize> = (0..self.train.len()).collect();
                    o.shuffle(&mut rng);
                    o
                }
                Sampling::Balance { shares, of_example } => {
                    let mut o = balanced_epoch(shares, of_example, &mut rng);
                    o.shuffle(&mut rng);
                    o
                }
                Sampling::Replay { n_new, fraction } => replay_epoch(*n_new, self.train.len() - n_new, *fraction, &mut rng),
            };
            if self.config.group_by_length {
                // Megabatches of 50 micro-batches, each sorted by length (longest first).
                for mega in order.chunks_mut(50 * self.config.batch) {
                    mega.sort_by_key(|&j| std::cmp::Reverse(self.train[j].tokens.len()));
                }
            }
            self.epoch_cache.retain(|&e, _| e + 1 >= epoch);
            self.epoch_cache.insert(epoch, order.chunks(self.config.batch).map(<[usize]>::to_vec).collect());
        }
        self.epoch_cache[&epoch][i].clone()
    }

    fn grad_options(&self, grad_scale: f64) -> GradOptions {
        GradOptions { checkpoint: self.config.grad_checkpoint, ce_chunk: 32, grad_scale }
    }

    /// One optimizer step (G micro-batches, mean loss over their target tokens).
    ///
    /// Runs on the calling thread (its parallel loops hand work to rayon): running the step
    /// on a rayon worker was 25% faster here but left glibc's per-thread arenas holding
    /// freed activations, raising peak RSS from ~760 to 900–1200 MiB.
    pub fn train_step(&mut self) -> Result<StepMetrics, Error> {
        let t0 = Instant::now();
        let g = self.config.grad_accum;
        let piece = self.config.micro_batch.filter(|&m| m > 0).unwrap_or(self.config.batch);
        let mut batches: Vec<(Vec<usize>, Batch)> = Vec::with_capacity(g);
        for j in 0..g {
            let idx = self.micro_batch(self.step * g + j);
            for chunk in idx.chunks(piece) {
                let exs: Vec<&Example> = chunk.iter().map(|&i| &self.train[i]).collect();
                batches.push((chunk.to_vec(), pack_shared(&exs)));
            }
        }
        let n_targets: usize = batches.iter().map(|(_, b)| b.n_targets()).sum();
        let tokens: usize = batches.iter().map(|(_, b)| b.n_tokens()).sum();
        let opt = self.grad_options(1.0 / n_targets.max(1) as f64);
        let mut grads: LoraParams<f32> = self.params.iter().map(|(k, p)| (k.clone(), p.zeros_like())).collect();
        let mut loss_sum = 0.0;
        for (idx, b) in &batches {
            let start = match &self.frozen {
                Some(f) => Some(f.train.start_for(&self.model, &idx.iter().map(|&i| (i, &self.train[i])).collect::<Vec<_>>(), b)?),
                None => None,
            };
            let r = self.model.loss_and_grad_from(&self.params, b, start, opt)?;
            loss_sum += r.loss_sum;
            for (name, gr) in r.grads {
                let acc = grads.get_mut(&name).expect("same keys");
                acc.a.iter_mut().zip(&gr.a).for_each(|(x, y)| *x += y);
                acc.b.iter_mut().zip(&gr.b).for_each(|(x, y)| *x += y);
            }
        }
        let loss = loss_sum / n_targets.max(1) as f64;
        if !loss.is_finite() {
            return Err(TrainError::Diverged { step: self.step + 1, loss }.into());
        }
        let grad_norm = clip_grad_norm(&mut grads, self.config.max_grad_norm);
        let lr = lr_at(self.config.schedule, self.config.lr, self.step, self.config.steps, self.config.warmup_steps());
        self.step += 1;
        self.config.optimizer.step(&mut self.params, &grads, &mut self.moments, self.step, lr);
        let secs = t0.elapsed().as_secs_f64();
        let epoch = self.data_origin.1 + (self.step * g - self.data_origin.0) as f64 / self.micro_per_epoch() as f64;
        Ok(StepMetrics { step: self.step, epoch, loss, grad_norm, lr, tokens, targets: n_targets, tokens_per_s: tokens as f64 / secs.max(1e-9), secs })
    }

    /// Runs the remaining steps. `on_step` sees each step's metrics; a checkpoint is saved
    /// every `save_every` steps (0: never), at the end, and when `stop` is raised (then
    /// the run returns `Interrupted`).
    pub fn run(&mut self, stop: &AtomicBool, ckpt_dir: Option<&std::path::Path>, save_every: usize, on_step: &mut dyn FnMut(&StepMetrics)) -> Result<Outcome, Error> {
        self.run_to(self.config.steps, stop, ckpt_dir, save_every, on_step)
    }

    /// [`Trainer::run`] up to step `until` (≤ the configured steps): the caller can score
    /// the model between stretches; checkpoints as in `run` (the last step saves one).
    pub fn run_to(&mut self, until: usize, stop: &AtomicBool, ckpt_dir: Option<&std::path::Path>, save_every: usize, on_step: &mut dyn FnMut(&StepMetrics)) -> Result<Outcome, Error> {
        while self.step < until.min(self.config.steps) {
            if stop.load(Ordering::SeqCst) {
                if let Some(d) = ckpt_dir {
                    self.save_checkpoint(d)?;
                }
                return Ok(Outcome::Interrupted);
            }
            let m = self.train_step()?;
            on_step(&m);
            if let Some(d) = ckpt_dir {
                if (save_every > 0 && self.step.is_multiple_of(save_every)) || self.step == self.config.steps {
                    self.save_checkpoint(d)?;
                }
            }
        }
        Ok(Outcome::Finished)
    }

    /// Mean loss per target token over `examples` with the current factors.
    pub fn loss_on(&self, examples: &[Example]) -> Result<Option<f64>, Error> {
        self.mean_loss(examples, None)
    }

    /// Mean loss per target token, the forwards from `frozen`'s states when given (they
    /// must be keyed by the examples' index in `examples`).
    fn mean_loss(&self, examples: &[Example], frozen: Option<&FrozenStates>) -> Result<Option<f64>, Error> {
        let (sum, n) = super::eval::loss_sum(&self.model, &self.params, examples, self.config.batch, frozen)?;
        Ok((n > 0).then(|| sum / n as f64))
    }

    /// Loss and greedy exact-answer share on the evaluation examples (`None` without any).
    pub fn validate(&self) -> Result<Option<super::eval::Validation>, Error> {
        if self.eval.is_empty() {
            return Ok(None);
        }
        super::eval::validate(&self.model, &self.params, &self.eval, self.config.batch, self.frozen.as_ref().map(|f| &*f.eval)).map(Some)
    }

    /// [`Trainer::validate`] on other examples.
    pub fn validate_on(&self, examples: &[Example]) -> Result<super::eval::Validation, Error> {
        super::eval::validate(&self.model, &self.params, examples, self.config.micro_batch.unwrap_or(self.config.batch), None)
    }

    pub fn eval_loss(&self) -> Result<Option<f64>, Error> {
        self.mean_loss(&self.eval, self.frozen.as_ref().map(|f| &*f.eval))
    }

    /// The frozen-layer states this run keeps (`None` when it trains from layer 0).
    pub fn frozen_states(&self) -> Option<FrozenPair> {
        self.frozen.clone()
    }

    /// Takes over another run's frozen-layer states (`--auto`'s candidates on the same
    /// splits share them): refused unless both start at the same layer. The caller
    /// vouches that both runs index the same training and evaluation examples.
    pub fn share_frozen_states(&mut self, other: FrozenPair) -> Result<(), Error> {
        match &self.frozen {
            Some(f) if f.train.layer() == other.train.layer() => {
                self.frozen = Some(other);
                Ok(())
            }
            _ => Err(TrainError::BadOption { option: "frozen states".into(), reason: format!("they start at layer {}, this run at {:?}", other.train.layer(), self.frozen.as_ref().map(|f| f.train.layer())) }.into()),
        }
    }

    /// The trained adapter: factors rounded to f16 (the export format), manifest filled
    /// with the base and data fingerprints and the configuration; `training` adds what
    /// the caller measured (final losses, wall time).
    pub fn to_adapter(&self, base: &GgufFile, training: serde_json::Value) -> Result<LoraAdapter, Error> {
        let mut a = LoraAdapter::new(base.architecture()?.to_string());
        for (name, p) in &self.params {
            let f16 = |v: &[f32]| v.iter().map(|&x| half::f16::from_f32(x).to_f32()).collect::<Vec<f32>>();
            a.tensors.insert(name.clone(), LoraTensor { rank: p.rank, n_in: p.n_in, n_out: p.n_out, a: f16(&p.a), b: f16(&p.b), scale: p.scale, dtype: FactorDtype::F16 });
        }
        a.manifest.set_base(base);
        a.manifest.data_fingerprint = Some(self.data_fingerprint.clone());
        a.manifest.hyperparameters = Some(serde_json::to_value(&self.config).expect("config serializes"));
        a.manifest.source = Some("edgelora train".into());
        a.manifest.training = Some(training);
        a.manifest.stamp();
        Ok(a)
    }
}

/// One balanced epoch's examples (before the epoch's shuffle): `of_example.len()` draws,
/// group g's count from `shares` by largest remainder, each group's members in a shuffled
/// cycle.
fn balanced_epoch(shares: &[f64], of_example: &[usize], rng: &mut rand_chacha::ChaCha8Rng) -> Vec<usize> {
    let n = of_example.len();
    let total: f64 = shares.iter().sum();
    let exact: Vec<f64> = shares.iter().map(|s| s / total * n as f64).collect();
    let mut counts: Vec<usize> = exact.iter().map(|x| x.floor() as usize).collect();
    // Only groups with a share get the remainders (set_balance: each has members).
    let mut rest: Vec<usize> = (0..shares.len()).filter(|&g| shares[g] > 0.0).collect();
    rest.sort_by(|&a, &b| (exact[b] - exact[b].floor()).total_cmp(&(exact[a] - exact[a].floor())).then(a.cmp(&b)));
    let missing = n - counts.iter().sum::<usize>();
    for &g in rest.iter().cycle().take(missing) {
        counts[g] += 1;
    }
    let mut out = Vec::with_capacity(n);
    for (g, &c) in counts.iter().enumerate() {
        let members: Vec<usize> = (0..n).filter(|&i| of_example[i] == g).collect();
        if members.is_empty() {
            continue;
        }
        let mut cycle = members.clone();
        for k in 0..c {
            if k % members.len() == 0 {
                cycle.shuffle(rng);
            }
            out.push(cycle[k % members.len()]);
        }
    }
    out
}

/// One replay epoch: the `n_new` new examples (0..n_new) shuffled, once each, with
/// `replay_draws` replayed ones (n_new..n_new+n_old, a shuffled cycle) spread evenly: after
/// position j, ⌊(j+1)·R/total⌋ replayed examples have been placed.
fn replay_epoch(n_new: usize, n_old: usize, fraction: f64, rng: &mut rand_chacha::ChaCha8Rng) -> Vec<usize> {
    let r = replay_draws(n_new, fraction);
    let total = n_new + r;
    let mut new: Vec<usize> = (0..n_new).collect();
    new.shuffle(rng);
    let mut old: Vec<usize> = (n_new..n_new + n_old).collect();
    let (mut out, mut taken, mut next_new) = (Vec::with_capacity(total), 0usize, 0usize);
    for j in 0..total {
        if (j + 1) * r / total > taken {
            if taken % n_old == 0 {
                old.shuffle(rng);
            }
            out.push(old[taken % n_old]);
            taken += 1;
        } else {
            out.push(new[next_new]);
            next_new += 1;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn counts(order: &[usize], of_example: &[usize], groups: usize) -> Vec<usize> {
        let mut c = vec![0; groups];
        order.iter().for_each(|&i| c[of_example[i]] += 1);
        c
    }

    #[test]
    fn fused_module_names_stand_for_their_parts() {
        assert_eq!(parse_targets("qkv_proj,o_proj").unwrap(), ["attn_q", "attn_k", "attn_v", "attn_output"]);
        assert_eq!(parse_targets("gate_up_proj,up_proj,down_proj").unwrap(), ["ffn_gate", "ffn_up", "ffn_down"]);
        assert_eq!(parse_targets("attn_qkv,q_proj").unwrap(), ["attn_q", "attn_k", "attn_v"]);
        assert!(parse_targets("qkv").unwrap_err().to_string().contains("qkv_proj"));
    }

    #[test]
    fn a_balanced_epoch_has_the_requested_shares() {
        // 90 examples of group 0, 10 of group 1; equal shares → 50 / 50 in every epoch.
        let of_example: Vec<usize> = (0..100).map(|i| usize::from(i >= 90)).collect();
        for seed in 0..5 {
            let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
            let order = balanced_epoch(&[0.5, 0.5], &of_example, &mut rng);
            assert_eq!(order.len(), 100);
            assert_eq!(counts(&order, &of_example, 2), [50, 50]);
            // The small group is cycled: each of its 10 members exactly 5 times.
            for m in 90..100 {
                assert_eq!(order.iter().filter(|&&i| i == m).count(), 5);
            }
            // The large one sub-sampled without repeats.
            let mut big: Vec<usize> = order.iter().copied().filter(|&i| i < 90).collect();
            big.sort();
            big.dedup();
            assert_eq!(big.len(), 50);
        }
        // 5:3:2 over three groups of 10 (largest remainder keeps the total).
        let of_example: Vec<usize> = (0..31).map(|i| (i / 10).min(2)).collect();
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(9);
        let order = balanced_epoch(&[0.5, 0.3, 0.2], &of_example, &mut rng);
        assert_eq!(order.len(), 31);
        let c = counts(&order, &of_example, 3);
        assert_eq!(c.iter().sum::<usize>(), 31);
        assert!(c[0].abs_diff(16) <= 1 && c[1].abs_diff(9) <= 1 && c[2].abs_diff(6) <= 1, "{c:?}");
        // A group with share 0 is never drawn; the same seed draws the same epoch.
        let mut a = rand_chacha::ChaCha8Rng::seed_from_u64(3);
        let mut b = rand_chacha::ChaCha8Rng::seed_from_u64(3);
        let x = balanced_epoch(&[1.0, 0.0, 1.0], &of_example, &mut a);
        assert_eq!(counts(&x, &of_example, 3)[1], 0);
        assert_eq!(x, balanced_epoch(&[1.0, 0.0, 1.0], &of_example, &mut b));
    }

    #[test]
    fn a_replay_epoch_spreads_old_examples_over_every_batch() {
        // 40 new, 10 old, 20%: 10 replay draws per epoch, 50 in all; batches of 5 hold one each.
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(1);
        let order = replay_epoch(40, 10, 0.2, &mut rng);
        assert_eq!(order.len(), 50);
        let mut new: Vec<usize> = order.iter().copied().filter(|&i| i < 40).collect();
        new.sort();
        assert_eq!(new, (0..40).collect::<Vec<_>>(), "every new example once");
        for batch in order.chunks(5) {
            assert_eq!(batch.iter().filter(|&&i| i >= 40).count(), 1, "{batch:?}");
        }
        // More draws than old examples: the old ones cycle; deterministic for the seed.
        let mut a = rand_chacha::ChaCha8Rng::seed_from_u64(2);
        let mut b = rand_chacha::ChaCha8Rng::seed_from_u64(2);
        let x = replay_epoch(30, 4, 0.5, &mut a);
        assert_eq!(x.len(), 60);
        for old in 30..34 {
            let c = x.iter().filter(|&&i| i == old).count();
            assert!((7..=8).contains(&c), "{old}: {c}");
        }
        for batch in x.chunks(6) {
            assert_eq!(batch.iter().filter(|&&i| i >= 30).count(), 3, "{batch:?}");
        }
        assert_eq!(x, replay_epoch(30, 4, 0.5, &mut b));
    }
}
