//! GGUF-LoRA: check an adapter file against its base model; write one from f32 A/B.

use std::collections::BTreeMap;
use std::path::Path;

use half::f16;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::error::{AdapterError, Error};
use crate::gguf::{GgmlType, GgufFile, GgufWriter, MetaValue, TensorSpec};

/// The seven projections of a llama-family block, by GGUF name.
pub const ALL_LINEAR: [&str; 7] = ["attn_q", "attn_k", "attn_v", "attn_output", "ffn_gate", "ffn_up", "ffn_down"];

/// What a checked adapter holds.
#[derive(Debug, Clone, PartialEq)]
pub struct LoraSummary {
    pub architecture: String,
    pub alpha: f32,
    /// Base tensor name → rank.
    pub targets: BTreeMap<String, u64>,
}

/// Checks a GGUF-LoRA file against the base model it is meant for: its type, its
/// architecture, every tensor's pairing, base tensor and shape. Every problem is an
/// error naming the tensor or field; nothing is skipped.
pub fn check_against_base(adapter: &GgufFile, base: &GgufFile) -> Result<LoraSummary, Error> {
    let path = adapter.path().to_path_buf();
    let invalid = |reason: String| AdapterError::Invalid { path: path.clone(), reason };
    let bad = |tensor: &str, reason: String| AdapterError::BadTensor { path: path.clone(), tensor: tensor.to_string(), reason };

    match adapter.get("general.type").and_then(MetaValue::as_str) {
        Some("adapter") => {}
        Some(other) => {
            return Err(invalid(format!(
                "general.type is {other:?}, expected \"adapter\" (is this a model rather than a LoRA adapter?)"
            ))
            .into())
        }
        None => return Err(invalid("general.type is missing, expected \"adapter\" (not a GGUF-LoRA file)".into()).into()),
    }
    match adapter.get("adapter.type").and_then(MetaValue::as_str) {
        Some("lora") => {}
        other => return Err(invalid(format!("adapter.type is {other:?}, expected \"lora\"")).into()),
    }
    let architecture = adapter.architecture()?.to_string();
    let base_arch = base.architecture()?;
    if architecture != base_arch {
        return Err(AdapterError::WrongArchitecture { path: path.clone(), expected: base_arch.into(), found: architecture }.into());
    }
    let alpha = match adapter.get("adapter.lora.alpha") {
        None => 0.0, // llama.cpp then uses scale = user scale (alpha = rank)
        Some(v) => v.as_f64().filter(|a| a.is_finite()).ok_or_else(|| invalid(format!("adapter.lora.alpha is {}, expected a finite number", v.summary())))? as f32,
    };

    let mut pairs: BTreeMap<&str, [Option<&crate::gguf::TensorInfo>; 2]> = BTreeMap::new();
    for t in adapter.tensors() {
        let (stem, slot) = if let Some(s) = t.name.strip_suffix(".lora_a") {
            (s, 0)
        } else if let Some(s) = t.name.strip_suffix(".lora_b") {
            (s, 1)
        } else {
            return Err(bad(&t.name, "is neither <weight>.lora_a nor <weight>.lora_b; edgelora refuses to ignore it".into()).into());
        };
        if !matches!(t.ggml_type, GgmlType::F32 | GgmlType::F16 | GgmlType::BF16 | GgmlType::Q8_0) {
            return Err(bad(&t.name, format!("type {} is not supported (expected f32, f16, bf16 or q8_0)", t.ggml_type)).into());
        }
        pairs.entry(stem).or_default()[slot] = Some(t);
    }
    if pairs.is_empty() {
        return Err(invalid("holds no lora_a/lora_b tensors".into()).into());
    }
    let mut targets = BTreeMap::new();
    for (stem, [a, b]) in pairs {
        let (a, b) = match (a, b) {
            (Some(a), Some(b)) => (a, b),
            (Some(_), None) => return Err(bad(&format!("{stem}.lora_b"), "is missing: its lora_a has no partner".into()).into()),
            (None, _) => return Err(bad(&format!("{stem}.lora_a"), "is missing: its lora_b has no partner".into()).into()),
        };
        let w = base.tensor(stem).ok_or_else(|| {
            bad(stem, format!("the base model {} has no such tensor (wrong base model, or HF names not mapped?)", base.path().display()))
        })?;
        if w.shape.len() != 2 || a.shape.len() != 2 || b.shape.len() != 2 {
            return Err(bad(stem, format!("expected 2-D tensors, found base {:?}, lora_a {:?}, lora_b {:?}", w.shape, a.shape, b.shape)).into());
        }
        let (n_in, n_out) = (w.shape[0], w.shape[1]);
        let r = a.shape[1];
        if a.shape[0] != n_in || b.shape != [r, n_out] {
            return Err(bad(
                stem,
                format!(
                    "shapes do not fit the base weight [{n_in}, {n_out}]: expected lora_a [{n_in}, r] and lora_b [r, {n_out}], found lora_a {:?} and lora_b {:?}",
                    a.shape, b.shape
                ),
            )
            .into());
        }
        if r == 0 {
            return Err(bad(stem, "rank 0".into()).into());
        }
        targets.insert(stem.to_string(), r);
    }
    Ok(LoraSummary { architecture, alpha, targets })
}

/// One target's factors in f32, row-major: `a` is `[rank, n_in]` (PEFT's lora_A), `b` is
/// `[n_out, rank]` (PEFT's lora_B) — the same bytes as GGUF's `ne=[n_in, r]`, `ne=[r, n_out]`.
#[derive(Debug, Clone, PartialEq)]
pub struct LoraPair {
    /// Base tensor name, e.g. `blk.0.attn_q.weight`.
    pub target: String,
    pub rank: usize,
    pub n_in: usize,
    pub n_out: usize,
    pub a: Vec<f32>,
    pub b: Vec<f32>,
}

/// Storage type of written A/B tensors.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LoraDtype {
    F32,
    F16,
}

/// Writes a GGUF-LoRA file (atomically) that llama.cpp loads.
pub fn write_gguf_lora(path: &Path, architecture: &str, alpha: f32, pairs: &[LoraPair], dtype: LoraDtype) -> Result<(), Error> {
    let metadata = vec![
        ("general.architecture".to_string(), MetaValue::String(architecture.into())),
        ("general.type".to_string(), MetaValue::String("adapter".into())),
        ("adapter.type".to_string(), MetaValue::String("lora".into())),
        ("adapter.lora.alpha".to_string(), MetaValue::F32(alpha)),
    ];
    let t = match dtype {
        LoraDtype::F32 => GgmlType::F32,
        LoraDtype::F16 => GgmlType::F16,
    };
    let mut specs = Vec::new();
    for p in pairs {
        if p.a.len() != p.rank * p.n_in || p.b.len() != p.n_out * p.rank {
            return Err(AdapterError::BadTensor {
                path: path.to_path_buf(),
                tensor: p.target.clone(),
                reason: format!("a has {} values (expected {}), b has {} (expected {})", p.a.len(), p.rank * p.n_in, p.b.len(), p.n_out * p.rank),
            }
            .into());
        }
        specs.push(TensorSpec::new(format!("{}.lora_a", p.target), &[p.n_in as u64, p.rank as u64], t));
        specs.push(TensorSpec::new(format!("{}.lora_b", p.target), &[p.rank as u64, p.n_out as u64], t));
    }
    let mut w = GgufWriter::create(path, &metadata, &specs)?;
    let encode = |v: &[f32]| -> Vec<u8> {
        match dtype {
            LoraDtype::F32 => bytemuck::cast_slice(v).to_vec(),
            LoraDtype::F16 => {
                let h: Vec<f16> = v.iter().map(|&x| f16::from_f32(x)).collect();
                bytemuck::cast_slice(&h).to_vec()
            }
        }
    };
    for p in pairs {
        w.write_tensor(&format!("{}.lora_a", p.target), &encode(&p.a))?;
        w.write_tensor(&format!("{}.lora_b", p.target), &encode(&p.b))?;
    }
    w.finish()?;
    Ok(())
}

/// Random factors for every `blk.*.<module>.weight` of `base` whose module is in
/// `modules` (e.g. [`ALL_LINEAR`]): A and B uniform in ±`amplitude`, from `seed`.
/// For tests and benches that need adapters of a given shape and a visible effect.
pub fn random_lora(base: &GgufFile, modules: &[&str], rank: usize, amplitude: f32, seed: u64) -> Vec<LoraPair> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut out = Vec::new();
    for t in base.tensors() {
        let Some(rest) = t.name.strip_prefix("blk.") else { continue };
        let Some(module) = rest.split('.').nth(1) else { continue };
        if !t.name.ends_with(".weight") || t.shape.len() != 2 || !modules.contains(&module) {
            continue;
        }
        let (n_in, n_out) = (t.shape[0] as usize, t.shape[1] as usize);
        let mut draw = |n: usize| (0..n).map(|_| rng.random_range(-amplitude..=amplitude)).collect::<Vec<f32>>();
        let a = draw(rank * n_in);
        let b = draw(n_out * rank);
        out.push(LoraPair { target: t.name.clone(), rank, n_in, n_out, a, b });
    }
    out
}
