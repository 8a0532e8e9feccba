//! GPTQ's calibration for merge: the inputs each merged linear layer sees when the base
//! runs with the adapters on the fly, summed into XᵀX per input (`quant::gptq`).
//!
//! The token sequences come from the caller (a text it tokenized) or are sampled from the
//! adapted model itself — data-free: temperature 1, no truncation, each sequence from the
//! BOS token, seeded, so the inputs follow the model's own distribution.

use std::collections::{HashMap, HashSet};

use super::MergeInput;
use crate::adapter::LoraAdapter;
use crate::compute::cpu::Cpu;
use crate::engine::sampler::{Sampler, SamplingParams};
use crate::error::{EngineError, Error};
use crate::gguf::{GgufFile, MetaValue};
use crate::model::{NativeModel, Session};
use crate::quant::gptq::InputStats;

/// Where GPTQ's calibration inputs come from.
#[derive(Debug, Clone, PartialEq)]
pub enum Calibration {
    /// These token sequences (a text tokenized by the caller).
    Tokens(Vec<Vec<i32>>),
    /// `sequences` × `len` tokens sampled from the base with the adapters on the fly.
    Sampled { sequences: usize, len: usize, seed: u64 },
}

impl Default for Calibration {
    /// 256 sampled sequences of 64 tokens: 16384 rows per input (GPTQ needs twice the
    /// input width). Many short sequences because the first positions' inputs (the
    /// attention sink) weigh most on short prompts; 256 rather than 128 because single
    /// draws vary: held-out KL (rslora_r8_all, 667 positions) 0.055–0.095 over three seeds
    /// with 128 × 64, 0.056–0.061 with 256 × 64.
    fn default() -> Self {
        Calibration::Sampled { sequences: 256, len: 64, seed: 0 }
    }
}

/// The weight whose input `name` reads: q/k/v share the attention norm's output, gate/up
/// the feed-forward norm's. Tensors reading one input share its statistics.
pub fn input_site(name: &str) -> String {
    for (from, to) in [("attn_k.weight", "attn_q.weight"), ("attn_v.weight", "attn_q.weight"), ("ffn_up.weight", "ffn_gate.weight")] {
        if let Some(prefix) = name.strip_suffix(from) {
            return format!("{prefix}{to}");
        }
    }
    name.to_string()
}

/// XᵀX of every input read by a tensor in `wanted` (keyed by [`input_site`]), over the
/// calibration sequences run through the native engine on the CPU with `inputs` on the fly
/// (sampled sequences are captured while they are sampled).
pub fn input_stats(base: &GgufFile, inputs: &[MergeInput], calibration: &Calibration, wanted: &dyn Fn(&str) -> bool) -> Result<HashMap<String, InputStats>, Error> {
    let model = NativeModel::new(GgufFile::open(base.path())?, Box::new(Cpu))?;
    let adapters: Vec<(&LoraAdapter, f32)> = inputs.iter().map(|i| (i.adapter, i.weight)).collect();
    let mut sums = Sums { wanted, stats: HashMap::new(), seen: HashSet::new() };
    match calibration {
        Calibration::Tokens(sequences) => {
            if sequences.iter().all(Vec::is_empty) {
                return Err(EngineError::BadOption("GPTQ calibration: no tokens".into()).into());
            }
            for seq in sequences.iter().filter(|s| !s.is_empty()) {
                model.capture_linear_inputs(seq, &adapters, &mut |name, x| sums.add(name, x, seq.len()))?;
                sums.seen.clear();
            }
        }
        &Calibration::Sampled { sequences, len, seed } => {
            if sequences == 0 || len == 0 {
                return Err(EngineError::BadOption(format!("GPTQ calibration: {sequences} sequences of {len} tokens")).into());
            }
            let bos = base.get("tokenizer.ggml.bos_token_id").and_then(MetaValue::as_u64).and_then(|v| i32::try_from(v).ok()).ok_or_else(|| {
                EngineError::BadOption(format!("{}: no tokenizer.ggml.bos_token_id to start sampled GPTQ calibration from; give calibration text instead", base.path().display()))
            })?;
            // In groups of SAMPLE_GROUP sequences stepped together (bounds the KV caches).
            for group in (0..sequences).collect::<Vec<_>>().chunks(SAMPLE_GROUP) {
                let mut samplers = group
                    .iter()
                    .map(|&i| Sampler::new(SamplingParams { temperature: 1.0, seed: seed.wrapping_add(i as u64), ..Default::default() }))
                    .collect::<Result<Vec<_>, _>>()?;
                let mut sessions: Vec<Session> = group.iter().map(|_| Session::default()).collect();
                let mut tokens = vec![bos; group.len()];
                for _ in 0..len {
                    let logits = model.forward_lockstep(&mut sessions, &tokens, &adapters, Some(&mut |name: &str, x: &[f32]| sums.add(name, x, group.len())))?;
                    sums.seen.clear();
                    for ((t, s), l) in tokens.iter_mut().zip(&mut samplers).zip(&logits) {
                        *t = s.sample(l);
                    }
                }
            }
        }
    }
    Ok(sums.stats)
}

/// XᵀX per input site, from the rows each forward hands over.
struct Sums<'w> {
    wanted: &'w dyn Fn(&str) -> bool,
    stats: HashMap<String, InputStats>,
    /// Sites already summed in this forward call: q/k/v (and gate/up) hand over the same
    /// rows, which count once.
    seen: HashSet<String>,
}

impl Sums<'_> {
    fn add(&mut self, name: &str, x: &[f32], n_rows: usize) {
        let site = input_site(name);
        if (self.wanted)(name) && self.seen.insert(site.clone()) {
            self.stats.entry(site).or_insert_with(|| InputStats::new(x.len() / n_rows)).add(x);
        }
    }
}

/// Sampled calibration sequences stepped together.
const SAMPLE_GROUP: usize = 64;
