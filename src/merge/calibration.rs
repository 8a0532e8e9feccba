//! GPTQ's calibration for merge: the token sequences its layer-by-layer pass
//! ([`super::sequential`]) runs through the model.
//!
//! The token sequences come from the caller (a text it tokenized) or are sampled from the
//! adapted model itself — data-free: temperature 1, no truncation, each sequence from the
//! BOS token, seeded, so the inputs follow the model's own distribution.

use super::MergeInput;
use crate::adapter::LoraAdapter;
use crate::compute::cpu::Cpu;
use crate::engine::sampler::{Sampler, SamplingParams};
use crate::error::{EngineError, Error};
use crate::gguf::{GgufFile, MetaValue};
use crate::model::{NativeModel, Session};

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

/// The calibration's token sequences: the caller's, or sampled through the native engine
/// on the CPU with `inputs` on the fly (each from the BOS token).
pub fn sequences(base: &GgufFile, inputs: &[MergeInput], calibration: &Calibration) -> Result<Vec<Vec<i32>>, Error> {
    match calibration {
        Calibration::Tokens(sequences) => {
            if sequences.iter().all(Vec::is_empty) {
                return Err(EngineError::BadOption("GPTQ calibration: no tokens".into()).into());
            }
            Ok(sequences.iter().filter(|s| !s.is_empty()).cloned().collect())
        }
        &Calibration::Sampled { sequences, len, seed } => {
            if sequences == 0 || len == 0 {
                return Err(EngineError::BadOption(format!("GPTQ calibration: {sequences} sequences of {len} tokens")).into());
            }
            let bos = base.get("tokenizer.ggml.bos_token_id").and_then(MetaValue::as_u64).and_then(|v| i32::try_from(v).ok()).ok_or_else(|| {
                EngineError::BadOption(format!("{}: no tokenizer.ggml.bos_token_id to start sampled GPTQ calibration from; give calibration text instead", base.path().display()))
            })?;
            let model = NativeModel::new(GgufFile::open(base.path())?, Box::new(Cpu))?;
            let adapters: Vec<(&LoraAdapter, f32)> = inputs.iter().map(|i| (i.adapter, i.weight)).collect();
            let mut out = Vec::with_capacity(sequences);
            // In groups stepped together, as many as SAMPLE_KV_BYTES of KV caches allow.
            let c = &model.config;
            let kv_per_sequence = 2 * c.n_layer * len * c.n_head_kv * c.head_dim * std::mem::size_of::<f32>();
            let group_size = (SAMPLE_KV_BYTES / kv_per_sequence.max(1)).clamp(1, SAMPLE_GROUP_MAX);
            for group in (0..sequences).collect::<Vec<_>>().chunks(group_size) {
                let mut samplers = group
                    .iter()
                    .map(|&i| Sampler::new(SamplingParams { temperature: 1.0, seed: seed.wrapping_add(i as u64), ..Default::default() }))
                    .collect::<Result<Vec<_>, _>>()?;
                let mut sessions: Vec<Session> = group.iter().map(|_| Session::default()).collect();
                let mut seqs: Vec<Vec<i32>> = group.iter().map(|_| vec![bos]).collect();
                // `len` tokens per sequence: BOS and len − 1 drawn (the last draw would
                // never be an input).
                for _ in 1..len {
                    let last: Vec<i32> = seqs.iter().map(|s| s[s.len() - 1]).collect();
                    let logits = model.forward_lockstep(&mut sessions, &last, &adapters)?;
                    for ((s, sampler), l) in seqs.iter_mut().zip(&mut samplers).zip(&logits) {
                        s.push(sampler.sample(l));
                    }
                }
                out.extend(seqs);
            }
            Ok(out)
        }
    }
}

/// KV cache (f32 keys and values of every layer) the sequences sampled together may
/// hold: 6 sequences of 64 tokens at once for a 7B model with full-width KV heads (67 MB
/// each; 64 would hold 4.3 GB), [`SAMPLE_GROUP_MAX`] for the default model (2.9 MB each).
const SAMPLE_KV_BYTES: usize = 384 << 20;

/// Most sampled sequences stepped together. More are faster on the default model (256 × 64
/// sampled in 47 s with 64 together, 35 s with 128, 30 s with 256; peak 0.6 / 1.06 GB for
/// 128 / 256) but draw other tokens (the products' rows differ): the README's merge
/// figures were measured with 64.
const SAMPLE_GROUP_MAX: usize = 64;
