//! GGUF-LoRA, llama.cpp's adapter layout: `general.type=adapter`, `adapter.type=lora`,
//! `adapter.lora.alpha`, `general.architecture`, and `<weight>.lora_a` (ne `[in, r]`) /
//! `<weight>.lora_b` (ne `[r, out]`) per target.
//!
//! llama.cpp applies s = alpha/r with one alpha for the whole file. An adapter whose
//! tensors have different scales (rsLoRA with a rank_pattern, alpha_pattern, …) gets the
//! alpha that serves most tensors; for the rest the ratio is folded into B (what
//! llama.cpp computes with), and recorded (`edgelora.lora.fold.tensors` / `.factors`, and
//! the original B's f32 bits in `edgelora.lora.fold.original_b.<tensor>`) so that
//! edgelora reads back the original B and scale exactly.

use std::collections::BTreeMap;
use std::path::Path;

use half::f16;

use super::manifest::{Manifest, GGUF_PREFIX};
use super::model::{FactorDtype, LoraAdapter, LoraTensor};
use crate::error::{AdapterError, Error};
use crate::gguf::{GgmlType, GgufFile, GgufWriter, MetaValue, TensorSpec, ValueType};
use crate::quant;

const FOLD_TENSORS: &str = "edgelora.lora.fold.tensors";
const FOLD_FACTORS: &str = "edgelora.lora.fold.factors";
/// Per folded tensor: the original B as f32 bits, so that reading back is exact.
const FOLD_ORIGINAL_B: &str = "edgelora.lora.fold.original_b.";

/// Storage type for written A/B tensors.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GgufLoraDtype {
    F16,
    F32,
}

/// Reads a GGUF-LoRA file: layout checks (type keys, pairing, shapes, tensor types,
/// finite values); the base-model checks are [`validate`](super::validate).
pub fn read_gguf_lora(f: &GgufFile) -> Result<LoraAdapter, Error> {
    let path = f.path().to_path_buf();
    let invalid = |reason: String| AdapterError::Invalid { path: path.clone(), reason };
    let bad = |tensor: &str, reason: String| AdapterError::BadTensor { path: path.clone(), tensor: tensor.to_string(), reason };

    match f.get("general.type").and_then(MetaValue::as_str) {
        Some("adapter") => {}
        Some(other) => {
            return Err(invalid(format!("general.type is {other:?}, expected \"adapter\" (is this a model rather than a LoRA adapter?)")).into())
        }
        None => return Err(invalid("general.type is missing, expected \"adapter\" (not a GGUF-LoRA file)".into()).into()),
    }
    match f.get("adapter.type").and_then(MetaValue::as_str) {
        Some("lora") => {}
        other => return Err(invalid(format!("adapter.type is {other:?}, expected \"lora\"")).into()),
    }
    let architecture = f.architecture()?.to_string();
    // llama.cpp reads the alpha with gguf_get_val_f32, which aborts the process on any
    // other type: only a single f32 passes. 0 means "no alpha" to llama.cpp (scale 1) but
    // a zero update to PEFT, and a negative alpha silently flips the update's sign.
    let alpha = match f.get("adapter.lora.alpha") {
        None => None,
        Some(MetaValue::F32(a)) if a.is_finite() && *a > 0.0 => Some(f64::from(*a)),
        Some(v) => {
            return Err(invalid(format!(
                "adapter.lora.alpha is {} {}, expected a finite f32 > 0 (omit the key for scale 1)",
                v.value_type().name(),
                v.summary()
            ))
            .into())
        }
    };
    // The keys llama.cpp reads with gguf_get_val_str (aborting on another type).
    for key in ["general.type", "general.architecture", "adapter.type"] {
        if let Some(v) = f.get(key).filter(|v| !matches!(v, MetaValue::String(_))) {
            return Err(invalid(format!("{key} is {} {}, expected a string", v.value_type().name(), v.summary())).into());
        }
    }
    let folds = read_folds(f)?;

    let mut pairs: BTreeMap<&str, [Option<&crate::gguf::TensorInfo>; 2]> = BTreeMap::new();
    for t in f.tensors() {
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
    let mut adapter = LoraAdapter::new(architecture);
    for (stem, [a, b]) in pairs {
        let (a, b) = match (a, b) {
            (Some(a), Some(b)) => (a, b),
            (Some(_), None) => return Err(bad(&format!("{stem}.lora_b"), "is missing: its lora_a has no partner".into()).into()),
            (None, _) => return Err(bad(&format!("{stem}.lora_a"), "is missing: its lora_b has no partner".into()).into()),
        };
        if a.shape.len() != 2 || b.shape.len() != 2 || a.shape[1] != b.shape[0] || a.shape[1] == 0 {
            return Err(bad(stem, format!("lora_a {:?} and lora_b {:?} are not [in, r] and [r, out] with one r ≥ 1", a.shape, b.shape)).into());
        }
        let (n_in, rank, n_out) = (a.shape[0] as usize, a.shape[1] as usize, b.shape[1] as usize);
        let load = |t: &crate::gguf::TensorInfo| -> Result<Vec<f32>, Error> {
            let mut v = vec![0f32; t.n_elements() as usize];
            quant::dequantize(t.ggml_type, f.tensor_data(t), &mut v).map_err(|e| bad(&t.name, e.to_string()))?;
            if let Some(i) = v.iter().position(|x| !x.is_finite()) {
                return Err(bad(&t.name, format!("element {i} is {} (weights must be finite)", v[i])).into());
            }
            Ok(v)
        };
        let mut bv = load(b)?;
        let av = load(a)?;
        // llama.cpp: scale = user_scale · alpha / rank, or user_scale when alpha is 0/absent.
        let mut scale = alpha.map_or(1.0, |al| (al / rank as f64) as f32);
        if let Some(&fold) = folds.get(stem) {
            match f.get(&format!("{FOLD_ORIGINAL_B}{stem}")) {
                Some(MetaValue::Array(ValueType::U32, bits)) if bits.len() == bv.len() => {
                    for (x, b) in bv.iter_mut().zip(bits) {
                        *x = f32::from_bits(b.as_u64().unwrap_or(0) as u32);
                    }
                }
                Some(_) => return Err(bad(stem, format!("{FOLD_ORIGINAL_B}{stem} is not {} u32 values", bv.len())).into()),
                None => bv.iter_mut().for_each(|x| *x = (f64::from(*x) / fold) as f32),
            }
            scale = (f64::from(scale) * fold) as f32;
            // The restored B (f32 bits from the file, or B divided by the fold factor)
            // and the folded scale were not checked for finiteness (found by
            // fuzz/fuzz_targets/gguf_lora.rs: a tiny factor overflowed B to inf).
            if let Some(i) = bv.iter().position(|x| !x.is_finite()) {
                return Err(bad(&b.name, format!("element {i} is {} after undoing the fold ({FOLD_FACTORS}, {FOLD_ORIGINAL_B}{stem}); weights must be finite", bv[i])).into());
            }
            if !scale.is_finite() {
                return Err(bad(stem, format!("scale {scale} after the fold factor {fold} ({FOLD_FACTORS}) is not finite")).into());
            }
        }
        let dtype = match a.ggml_type {
            GgmlType::F32 => FactorDtype::F32,
            GgmlType::BF16 => FactorDtype::BF16,
            GgmlType::Q8_0 => FactorDtype::Q8_0,
            _ => FactorDtype::F16,
        };
        adapter.tensors.insert(stem.to_string(), LoraTensor { rank, n_in, n_out, a: av, b: bv, scale, dtype });
    }
    adapter.manifest = Manifest::from_gguf(f);
    if let Some(cfg) = f.get("edgelora.peft.config").and_then(MetaValue::as_str) {
        adapter.peft_config = serde_json::from_str(cfg).ok();
    }
    Ok(adapter)
}

fn read_folds(f: &GgufFile) -> Result<BTreeMap<String, f64>, Error> {
    let (Some(MetaValue::Array(_, names)), Some(MetaValue::Array(_, factors))) = (f.get(FOLD_TENSORS), f.get(FOLD_FACTORS)) else {
        return Ok(BTreeMap::new());
    };
    let bad = || AdapterError::Invalid {
        path: f.path().to_path_buf(),
        reason: format!("{FOLD_TENSORS} and {FOLD_FACTORS} must be arrays of equal length of names and finite non-zero numbers"),
    };
    if names.len() != factors.len() {
        return Err(bad().into());
    }
    names
        .iter()
        .zip(factors)
        .map(|(n, x)| match (n.as_str(), x.as_f64()) {
            (Some(n), Some(x)) if x.is_finite() && x != 0.0 => Ok((n.to_string(), x)),
            _ => Err(bad().into()),
        })
        .collect()
}

/// The metadata and tensor payloads of a GGUF-LoRA for `adapter`.
fn encode(adapter: &LoraAdapter, dtype: GgufLoraDtype) -> (Vec<(String, MetaValue)>, Vec<TensorSpec>, Vec<Vec<u8>>) {
    // One alpha for the file: the alpha = s·r that most tensors share.
    let mut counts: BTreeMap<u32, usize> = BTreeMap::new();
    for t in adapter.tensors.values() {
        *counts.entry((t.scale * t.rank as f32).to_bits()).or_default() += 1;
    }
    // Readers (ours and llama.cpp) take only a positive alpha: a tensor whose s·r is not
    // positive (a negative scale) is written with its sign folded into B.
    let alpha = counts
        .iter()
        .filter(|(bits, _)| f32::from_bits(**bits).is_finite() && f32::from_bits(**bits) > 0.0)
        .max_by_key(|(_, n)| **n)
        .map_or(1.0, |(bits, _)| f32::from_bits(*bits));

    let mut metadata = vec![
        ("general.architecture".to_string(), MetaValue::String(adapter.architecture.clone())),
        ("general.type".to_string(), MetaValue::String("adapter".into())),
        ("adapter.type".to_string(), MetaValue::String("lora".into())),
        ("adapter.lora.alpha".to_string(), MetaValue::F32(alpha)),
    ];
    if let Some(n) = &adapter.manifest.name {
        metadata.push(("general.name".into(), MetaValue::String(n.clone())));
    }
    let mut manifest = adapter.manifest.clone();
    manifest.stamp();
    metadata.extend(manifest.to_gguf());
    metadata.push((
        format!("{GGUF_PREFIX}targets"),
        MetaValue::Array(ValueType::String, adapter.target_modules().into_iter().map(MetaValue::String).collect()),
    ));
    metadata.push((format!("{GGUF_PREFIX}rank"), MetaValue::U32(adapter.nominal_rank() as u32)));
    metadata.push((format!("{GGUF_PREFIX}alpha"), MetaValue::F32(alpha)));
    if let Some(cfg) = &adapter.peft_config {
        metadata.push(("edgelora.peft.config".into(), MetaValue::String(cfg.to_string())));
    }

    let ggml_type = match dtype {
        GgufLoraDtype::F16 => GgmlType::F16,
        GgufLoraDtype::F32 => GgmlType::F32,
    };
    let enc = |v: &[f32]| -> Vec<u8> {
        match dtype {
            GgufLoraDtype::F32 => v.iter().flat_map(|x| x.to_le_bytes()).collect(),
            GgufLoraDtype::F16 => v.iter().flat_map(|x| f16::from_f32(*x).to_le_bytes()).collect(),
        }
    };
    let (mut specs, mut data, mut fold_names, mut fold_factors, mut originals) = (Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for (name, t) in &adapter.tensors {
        let llama_scale = f64::from(alpha) / t.rank as f64;
        let fold = f64::from(t.scale) / llama_scale;
        let b: Vec<f32> = if (t.scale * t.rank as f32).to_bits() == alpha.to_bits() {
            t.b.clone()
        } else {
            fold_names.push(MetaValue::String(name.clone()));
            fold_factors.push(MetaValue::F64(fold));
            originals.push((
                format!("{FOLD_ORIGINAL_B}{name}"),
                MetaValue::Array(ValueType::U32, t.b.iter().map(|x| MetaValue::U32(x.to_bits())).collect()),
            ));
            t.b.iter().map(|x| (f64::from(*x) * fold) as f32).collect()
        };
        specs.push(TensorSpec::new(format!("{name}.lora_a"), &[t.n_in as u64, t.rank as u64], ggml_type));
        specs.push(TensorSpec::new(format!("{name}.lora_b"), &[t.rank as u64, t.n_out as u64], ggml_type));
        data.push(enc(&t.a));
        data.push(enc(&b));
    }
    if !fold_names.is_empty() {
        metadata.push((FOLD_TENSORS.into(), MetaValue::Array(ValueType::String, fold_names)));
        metadata.push((FOLD_FACTORS.into(), MetaValue::Array(ValueType::F64, fold_factors)));
        metadata.extend(originals);
    }
    (metadata, specs, data)
}

/// Writes `adapter` as a GGUF-LoRA file (atomically) that llama.cpp loads.
pub fn write_gguf_lora(adapter: &LoraAdapter, path: &Path, dtype: GgufLoraDtype) -> Result<(), Error> {
    let (metadata, specs, data) = encode(adapter, dtype);
    let mut w = GgufWriter::create(path, &metadata, &specs)?;
    for (spec, bytes) in specs.iter().zip(&data) {
        w.write_tensor(&spec.name, bytes)?;
    }
    w.finish()?;
    Ok(())
}

/// The GGUF-LoRA image of `adapter` in memory (for llama.cpp without touching disk).
pub fn gguf_lora_bytes(adapter: &LoraAdapter, dtype: GgufLoraDtype) -> Result<Vec<u8>, Error> {
    let (metadata, specs, data) = encode(adapter, dtype);
    let mut w = GgufWriter::in_memory("<in-memory adapter>", &metadata, &specs)?;
    for (spec, bytes) in specs.iter().zip(&data) {
        w.write_tensor(&spec.name, bytes)?;
    }
    Ok(w.finish_in_memory()?)
}

/// The widest storage any tensor of `adapter` came in: f32 sources stay f32.
pub fn natural_dtype(adapter: &LoraAdapter) -> GgufLoraDtype {
    if adapter.tensors.values().any(|t| t.dtype == FactorDtype::F32) {
        GgufLoraDtype::F32
    } else {
        GgufLoraDtype::F16
    }
}
