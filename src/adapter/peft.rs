//! Hugging Face PEFT adapters: a folder with `adapter_config.json` and
//! `adapter_model.safetensors` (f32/f16/bf16).
//!
//! Reading honours `r`, `lora_alpha`, `use_rslora`, `rank_pattern`, `alpha_pattern`,
//! `target_modules` (list, regex string, `all-linear`), `layers_to_transform` /
//! `layers_pattern`; whatever edgelora cannot apply exactly (DoRA, `modules_to_save`,
//! biases, embedding LoRA, `fan_in_fan_out`, …) is an error naming the field.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use half::{bf16, f16};
use regex::Regex;
use safetensors::{Dtype, SafeTensors};
use serde_json::{json, Value};

use super::manifest::Manifest;
use super::model::{FactorDtype, LoraAdapter, LoraTensor};
use super::names::{permute_qk_rows, short_module, ArchNames};
use crate::error::{AdapterError, Error};
use crate::fsutil::atomic_write;
use crate::gguf::GgufFile;

pub const CONFIG_FILE: &str = "adapter_config.json";
pub const WEIGHTS_FILE: &str = "adapter_model.safetensors";
const KEY_PREFIX: &str = "base_model.model.";
const MANIFEST_KEY: &str = "edgelora.manifest";

/// Whether `path` looks like a PEFT adapter folder.
pub fn is_peft_dir(path: &Path) -> bool {
    path.is_dir() && path.join(CONFIG_FILE).exists()
}

fn invalid(path: &Path, reason: impl Into<String>) -> Error {
    AdapterError::Invalid { path: path.to_path_buf(), reason: reason.into() }.into()
}

/// The config fields that decide ranks and scales.
struct ScaleRules {
    r: usize,
    alpha: f64,
    rslora: bool,
    rank_pattern: Vec<(Regex, usize, String)>,
    alpha_pattern: Vec<(Regex, f64, String)>,
    targets: Targets,
    layers: Option<Vec<usize>>,
}

enum Targets {
    List(Vec<String>),
    Regex(Regex),
    AllLinear,
}

/// PEFT's pattern match: the key matches the module's full name or a dotted suffix of it.
fn pattern(path: &Path, field: &str, key: &str) -> Result<Regex, Error> {
    Regex::new(&format!(r"^(?:.*\.)?(?:{key})$")).map_err(|e| invalid(path, format!("{field} key {key:?} is not a valid pattern: {e}")))
}

fn parse_config(path: &Path, cfg: &Value) -> Result<ScaleRules, Error> {
    let field = |k: &str| cfg.get(k).filter(|v| !v.is_null());
    let reject = |k: &str, why: &str| -> Result<(), Error> { Err(invalid(path, format!("{k}: {why}"))) };
    if let Some(t) = field("peft_type") {
        if t != "LORA" {
            reject("peft_type", &format!("is {t}, only LORA adapters are supported"))?;
        }
    }
    if field("use_dora").and_then(Value::as_bool) == Some(true) {
        reject("use_dora", "DoRA (weight-decomposed LoRA) is not supported; re-train or merge the adapter without DoRA")?;
    }
    if let Some(m) = field("modules_to_save") {
        if m.as_array().is_none_or(|a| !a.is_empty()) {
            reject("modules_to_save", &format!("is {m}: fully trained modules cannot be applied as LoRA"))?;
        }
    }
    if let Some(b) = field("bias").and_then(Value::as_str) {
        if b != "none" {
            reject("bias", &format!("is {b:?}: trained biases are not supported (expected \"none\")"))?;
        }
    }
    for (k, why) in [
        ("lora_bias", "LoRA biases are not supported"),
        ("fan_in_fan_out", "transposed (Conv1D) weights are not supported"),
        ("use_qalora", "QA-LoRA is not supported"),
    ] {
        if field(k).and_then(Value::as_bool) == Some(true) {
            reject(k, why)?;
        }
    }
    for (k, why) in [
        ("target_parameters", "LoRA on raw parameters is not supported"),
        ("trainable_token_indices", "trainable token embeddings are not supported"),
        ("layer_replication", "layer replication is not supported"),
        ("alora_invocation_tokens", "activated LoRA (aLoRA) is not supported"),
    ] {
        if let Some(v) = field(k) {
            if v.as_array().is_none_or(|a| !a.is_empty()) && v.as_object().is_none_or(|o| !o.is_empty()) {
                reject(k, &format!("is {v}: {why}"))?;
            }
        }
    }
    let r = field("r")
        .and_then(Value::as_u64)
        .filter(|&r| r >= 1)
        .ok_or_else(|| invalid(path, format!("r: expected an integer ≥ 1, found {}", cfg.get("r").unwrap_or(&Value::Null))))? as usize;
    let alpha = match field("lora_alpha") {
        None => 8.0, // PEFT's default
        Some(v) => v.as_f64().filter(|a| a.is_finite() && *a > 0.0).ok_or_else(|| invalid(path, format!("lora_alpha: expected a finite number > 0, found {v}")))?,
    };
    let rslora = field("use_rslora").map(|v| v.as_bool().ok_or_else(|| invalid(path, format!("use_rslora: expected true or false, found {v}")))).transpose()?.unwrap_or(false);
    let mut rank_pattern = Vec::new();
    if let Some(v) = field("rank_pattern") {
        let o = v.as_object().ok_or_else(|| invalid(path, format!("rank_pattern: expected an object, found {v}")))?;
        for (k, x) in o {
            let rr = x.as_u64().filter(|&r| r >= 1).ok_or_else(|| invalid(path, format!("rank_pattern[{k:?}]: expected an integer ≥ 1, found {x}")))?;
            rank_pattern.push((pattern(path, "rank_pattern", k)?, rr as usize, k.clone()));
        }
    }
    let mut alpha_pattern = Vec::new();
    if let Some(v) = field("alpha_pattern") {
        let o = v.as_object().ok_or_else(|| invalid(path, format!("alpha_pattern: expected an object, found {v}")))?;
        for (k, x) in o {
            let a = x.as_f64().filter(|a| a.is_finite() && *a > 0.0).ok_or_else(|| invalid(path, format!("alpha_pattern[{k:?}]: expected a finite number > 0, found {x}")))?;
            alpha_pattern.push((pattern(path, "alpha_pattern", k)?, a, k.clone()));
        }
    }
    let targets = match field("target_modules") {
        None => Targets::AllLinear,
        Some(Value::String(s)) if s == "all-linear" => Targets::AllLinear,
        Some(Value::String(s)) => Targets::Regex(
            Regex::new(&format!("^(?:{s})$")).map_err(|e| invalid(path, format!("target_modules: {s:?} is not a valid regex: {e}")))?,
        ),
        Some(Value::Array(a)) => Targets::List(
            a.iter()
                .map(|x| x.as_str().map(str::to_string).ok_or_else(|| invalid(path, format!("target_modules: expected strings, found {x}"))))
                .collect::<Result<_, _>>()?,
        ),
        Some(v) => return Err(invalid(path, format!("target_modules: expected a list, a regex string or \"all-linear\", found {v}"))),
    };
    let layers = match field("layers_to_transform") {
        None => None,
        Some(Value::Number(n)) => Some(vec![n.as_u64().ok_or_else(|| invalid(path, format!("layers_to_transform: {n} is not a layer index")))? as usize]),
        Some(Value::Array(a)) => Some(
            a.iter()
                .map(|x| x.as_u64().map(|n| n as usize).ok_or_else(|| invalid(path, format!("layers_to_transform: {x} is not a layer index"))))
                .collect::<Result<_, _>>()?,
        ),
        Some(v) => return Err(invalid(path, format!("layers_to_transform: expected an integer or a list, found {v}"))),
    };
    Ok(ScaleRules { r, alpha, rslora, rank_pattern, alpha_pattern, targets, layers })
}

impl ScaleRules {
    fn rank_for(&self, module: &str) -> usize {
        self.rank_pattern.iter().find(|(re, _, _)| re.is_match(module)).map_or(self.r, |(_, r, _)| *r)
    }

    fn scale_for(&self, module: &str, rank: usize) -> f32 {
        let alpha = self.alpha_pattern.iter().find(|(re, _, _)| re.is_match(module)).map_or(self.alpha, |(_, a, _)| *a);
        let denom = if self.rslora { (rank as f64).sqrt() } else { rank as f64 };
        (alpha / denom) as f32
    }

    fn targets(&self, module: &str) -> bool {
        match &self.targets {
            Targets::AllLinear => short_module(module) != "lm_head",
            Targets::Regex(re) => re.is_match(module),
            Targets::List(l) => l.iter().any(|t| module == t || module.ends_with(&format!(".{t}"))),
        }
    }
}

fn layer_of(module: &str) -> Option<usize> {
    let idx = module.find(".layers.")? + ".layers.".len();
    module[idx..].split('.').next()?.parse().ok()
}

fn head_counts(base: &GgufFile) -> Result<(usize, usize), Error> {
    let arch = base.architecture()?;
    let n_head = base.require_u64(&format!("{arch}.attention.head_count"))? as usize;
    let n_head_kv = match base.get(&format!("{arch}.attention.head_count_kv")) {
        None => n_head,
        Some(_) => base.require_u64(&format!("{arch}.attention.head_count_kv"))? as usize,
    };
    Ok((n_head, n_head_kv))
}

fn to_f32(path: &Path, key: &str, dtype: Dtype, data: &[u8]) -> Result<(Vec<f32>, FactorDtype), Error> {
    let bad = |reason: String| -> Error { AdapterError::BadTensor { path: path.to_path_buf(), tensor: key.into(), reason }.into() };
    let v: Vec<f32> = match dtype {
        Dtype::F32 => data.chunks_exact(4).map(|c| f32::from_le_bytes(c.try_into().expect("4 bytes"))).collect(),
        Dtype::F16 => data.chunks_exact(2).map(|c| f16::from_le_bytes([c[0], c[1]]).to_f32()).collect(),
        Dtype::BF16 => data.chunks_exact(2).map(|c| bf16::from_le_bytes([c[0], c[1]]).to_f32()).collect(),
        other => return Err(bad(format!("dtype {other:?} is not supported (expected F32, F16 or BF16)"))),
    };
    if let Some(i) = v.iter().position(|x| !x.is_finite()) {
        return Err(bad(format!("element {i} is {} (weights must be finite)", v[i])));
    }
    let fd = match dtype {
        Dtype::F32 => FactorDtype::F32,
        Dtype::F16 => FactorDtype::F16,
        _ => FactorDtype::BF16,
    };
    Ok((v, fd))
}

/// How strictly a PEFT config is held to its base model.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ReadOptions {
    /// A `target_modules` entry (or regex) naming no module of the base architecture,
    /// or a `layers_to_transform` index past its last layer, is a warning returned with
    /// the adapter instead of an error.
    pub lenient: bool,
}

/// Reads a PEFT adapter folder for the model `base` (its architecture names the tensors;
/// its head counts drive the llama q/k permutation). Nothing is written. Strict: see
/// [`ReadOptions`].
pub fn read_peft(dir: &Path, base: &GgufFile) -> Result<LoraAdapter, Error> {
    read_peft_with(dir, base, ReadOptions::default()).map(|(a, _)| a)
}

/// [`read_peft`] with options; returns the adapter and the warnings a lenient read let
/// through (each a full sentence naming the config file and field).
pub fn read_peft_with(dir: &Path, base: &GgufFile, options: ReadOptions) -> Result<(LoraAdapter, Vec<String>), Error> {
    let cfg_path = dir.join(CONFIG_FILE);
    let text = std::fs::read(&cfg_path).map_err(|e| invalid(&cfg_path, format!("cannot read: {e}")))?;
    let w_path = dir.join(WEIGHTS_FILE);
    if !w_path.exists() {
        let hint = if dir.join("adapter_model.bin").exists() {
            " (adapter_model.bin is a pickle, which edgelora does not read: save with safe_serialization=True)"
        } else {
            ""
        };
        return Err(invalid(&w_path, format!("missing{hint}")));
    }
    let bytes = std::fs::read(&w_path).map_err(|e| invalid(&w_path, format!("cannot read: {e}")))?;
    read_peft_bytes(dir, &text, &bytes, base, options)
}

/// A PEFT adapter from its two files' contents (`adapter_config.json`,
/// `adapter_model.safetensors`), e.g. held by an app or a fuzzer; `dir` names the
/// folder in errors.
pub fn read_peft_bytes(dir: &Path, config: &[u8], weights: &[u8], base: &GgufFile, options: ReadOptions) -> Result<(LoraAdapter, Vec<String>), Error> {
    let cfg_path = dir.join(CONFIG_FILE);
    let w_path = dir.join(WEIGHTS_FILE);
    let cfg: Value = serde_json::from_slice(config).map_err(|e| invalid(&cfg_path, format!("malformed JSON: {e}")))?;
    if !cfg.is_object() {
        return Err(invalid(&cfg_path, "expected a JSON object"));
    }
    let rules = parse_config(&cfg_path, &cfg)?;
    let st = SafeTensors::deserialize(weights).map_err(|e| invalid(&w_path, format!("not a valid safetensors file (truncated or corrupt?): {e}")))?;
    let (_, st_meta) = SafeTensors::read_metadata(weights).map_err(|e| invalid(&w_path, format!("bad safetensors header: {e}")))?;

    let arch = base.architecture()?.to_string();
    let names = ArchNames::for_arch(&arch)
        .ok_or_else(|| invalid(dir, format!("base architecture {arch:?} has no HF name map (known: {})", ArchNames::known().join(", "))))?;
    let (n_head, n_head_kv) = head_counts(base)?;
    let n_layer = base.require_u64(&format!("{arch}.block_count"))? as usize;
    let mut warnings = Vec::new();
    for problem in target_problems(&rules, &names, n_layer) {
        let msg = format!("{}: {problem}", cfg_path.display());
        if !options.lenient {
            return Err(invalid(&cfg_path, format!("{problem} (pass --lenient to load it anyway)")));
        }
        warnings.push(format!("warning: {msg}; loaded anyway (lenient)"));
    }

    // module → [A, B]
    let mut found: HashMap<String, [Option<(String, Vec<usize>, Vec<f32>, FactorDtype)>; 2]> = HashMap::new();
    for (key, view) in st.tensors() {
        let bad = |reason: String| -> Error { AdapterError::BadTensor { path: w_path.clone(), tensor: key.clone(), reason }.into() };
        let rest = key.strip_prefix(KEY_PREFIX).unwrap_or(&key);
        if rest.contains("lora_embedding_") {
            return Err(bad("embedding LoRA (lora_embedding_A/B) is not supported".into()));
        }
        if rest.contains("lora_magnitude_vector") {
            return Err(bad("DoRA magnitude vectors are not supported".into()));
        }
        let (module, slot) = if let Some(i) = rest.find(".lora_A.") {
            (&rest[..i], 0)
        } else if let Some(i) = rest.find(".lora_B.") {
            (&rest[..i], 1)
        } else {
            return Err(bad("is not a lora_A/lora_B weight (modules_to_save or a bias?); edgelora refuses to ignore it".into()));
        };
        if !rest.ends_with(".weight") {
            return Err(bad("LoRA biases are not supported".into()));
        }
        let (v, dt) = to_f32(&w_path, &key, view.dtype(), view.data())?;
        if view.shape().len() != 2 {
            return Err(bad(format!("shape {:?} is not 2-D", view.shape())));
        }
        found.entry(module.to_string()).or_default()[slot] = Some((key.clone(), view.shape().to_vec(), v, dt));
    }
    if found.is_empty() {
        return Err(invalid(&w_path, "holds no lora_A/lora_B tensors"));
    }

    let mut adapter = LoraAdapter::new(arch.clone());
    let mut modules: Vec<_> = found.into_iter().collect();
    modules.sort_by(|a, b| a.0.cmp(&b.0));
    for (module, [a, b]) in modules {
        let (a, b) = match (a, b) {
            (Some(a), Some(b)) => (a, b),
            (Some((k, ..)), None) => return Err(AdapterError::BadTensor { path: w_path.clone(), tensor: k.replace("lora_A", "lora_B"), reason: "is missing: its lora_A has no partner".into() }.into()),
            (None, Some((k, ..))) => return Err(AdapterError::BadTensor { path: w_path.clone(), tensor: k.replace("lora_B", "lora_A"), reason: "is missing: its lora_B has no partner".into() }.into()),
            (None, None) => unreachable!("an entry has at least one half"),
        };
        let bad = |reason: String| -> Error { AdapterError::BadTensor { path: w_path.clone(), tensor: a.0.clone(), reason }.into() };
        let (rank, n_in) = (a.1[0], a.1[1]);
        let (n_out, rank_b) = (b.1[0], b.1[1]);
        if rank != rank_b || rank == 0 {
            return Err(bad(format!("lora_A {:?} and lora_B {:?} disagree on the rank", a.1, b.1)));
        }
        let want = rules.rank_for(&module);
        if rank != want {
            return Err(bad(format!("rank {rank}, but the config (r / rank_pattern) says {want}")));
        }
        if !rules.targets(&module) {
            return Err(bad(format!("module {module:?} is not among the config's target_modules")));
        }
        if let (Some(layers), Some(l)) = (&rules.layers, layer_of(&module)) {
            if !layers.contains(&l) {
                return Err(bad(format!("layer {l} is not in layers_to_transform {layers:?}")));
            }
        }
        let gguf = names.hf_to_gguf(&module).map_err(&bad)?;
        let mut bv = b.2;
        if let Some(h) = names.qk_heads(&gguf, n_head, n_head_kv) {
            bv = permute_qk_rows(&bv, n_out, rank, h, false).map_err(|e| bad(format!("q/k permutation: {e}")))?;
        }
        let scale = rules.scale_for(&module, rank);
        let dtype = if a.3 == b.3 { a.3 } else { FactorDtype::F32 };
        adapter.tensors.insert(gguf, LoraTensor { rank, n_in, n_out, a: a.2, b: bv, scale, dtype });
    }

    let stored = st_meta.metadata().as_ref().and_then(|m| m.get(MANIFEST_KEY)).and_then(|s| serde_json::from_str::<Manifest>(s).ok());
    adapter.manifest = stored.unwrap_or_else(|| Manifest {
        name: dir.file_name().map(|n| n.to_string_lossy().into_owned()),
        source: Some(format!("peft:{}", dir.display())),
        base_model: cfg.get("base_model_name_or_path").and_then(Value::as_str).map(str::to_string),
        ..Manifest::default()
    });
    if adapter.manifest.base_fingerprint.is_none() {
        adapter.manifest.set_base(base);
    }
    adapter.peft_config = Some(cfg);
    super::validate(&adapter, base, dir)?;
    Ok((adapter, warnings))
}

/// What in the config's targets does not fit the base: each `target_modules` entry that
/// names no linear module of the architecture, a regex that matches none, a
/// `layers_to_transform` index past the last layer.
fn target_problems(rules: &ScaleRules, names: &ArchNames, n_layer: usize) -> Vec<String> {
    let known = || format!("{} has {}", names.arch, names.short_modules().join(", "));
    let mut out = Vec::new();
    match &rules.targets {
        Targets::AllLinear => {}
        Targets::List(list) => {
            for t in list.iter().filter(|t| !names.names_module(t, n_layer)) {
                out.push(format!("target_modules: {t:?} is not a linear module of this {}-layer model ({})", n_layer, known()));
            }
        }
        Targets::Regex(re) => {
            // A validated model has at most 512 layers; the bound keeps a bad header cheap.
            if !names.module_paths(n_layer.min(512)).iter().any(|m| re.is_match(m)) {
                out.push(format!("target_modules: the regex {:?} matches no module of this model ({})", re.as_str(), known()));
            }
        }
    }
    if let Some(layers) = &rules.layers {
        for l in layers.iter().filter(|&&l| l >= n_layer) {
            out.push(format!("layers_to_transform: layer {l} does not exist (the model has {n_layer} layers)"));
        }
    }
    out
}

/// Whether `cfg` (a PEFT config) gives exactly the adapter's ranks and scales.
fn config_fits(cfg: &Value, adapter: &LoraAdapter, names: &ArchNames) -> bool {
    let Ok(rules) = parse_config(Path::new(""), cfg) else { return false };
    adapter.tensors.iter().all(|(g, t)| {
        let Some(hf) = names.gguf_to_hf(g) else { return false };
        let s = rules.scale_for(&hf, t.rank);
        rules.rank_for(&hf) == t.rank && rules.targets(&hf) && (s - t.scale).abs() <= 1e-6 * t.scale.abs().max(1e-30)
    })
}

/// A PEFT config for `adapter`: r = the most common rank, lora_alpha = s·r of the most
/// common scale, `rank_pattern` / `alpha_pattern` (full module paths) for the rest.
fn synthesize_config(adapter: &LoraAdapter, names: &ArchNames) -> Value {
    let r = adapter.nominal_rank();
    let mut alphas: HashMap<u32, usize> = HashMap::new();
    // Written with |s|: a negative scale's sign goes into B (PEFT and edgelora refuse a
    // lora_alpha ≤ 0).
    for t in adapter.tensors.values() {
        *alphas.entry((t.scale.abs() * t.rank as f32).to_bits()).or_default() += 1;
    }
    let alpha = alphas.iter().max_by_key(|(bits, n)| (**n, std::cmp::Reverse(**bits))).map_or(1.0, |(b, _)| f32::from_bits(*b));
    let mut rank_pattern = serde_json::Map::new();
    let mut alpha_pattern = serde_json::Map::new();
    let mut targets = std::collections::BTreeSet::new();
    for (g, t) in &adapter.tensors {
        let hf = names.gguf_to_hf(g).unwrap_or_else(|| g.clone());
        targets.insert(short_module(&hf).to_string());
        if t.rank != r {
            rank_pattern.insert(hf.clone(), json!(t.rank));
        }
        let a = t.scale.abs() * t.rank as f32;
        if a.to_bits() != alpha.to_bits() {
            alpha_pattern.insert(hf, json!(a));
        }
    }
    json!({
        "peft_type": "LORA",
        "task_type": "CAUSAL_LM",
        "base_model_name_or_path": adapter.manifest.base_model,
        "r": r,
        "lora_alpha": alpha,
        "use_rslora": false,
        "rank_pattern": rank_pattern,
        "alpha_pattern": alpha_pattern,
        "target_modules": targets.into_iter().collect::<Vec<_>>(),
        "lora_dropout": 0.0,
        "bias": "none",
        "fan_in_fan_out": false,
        "modules_to_save": null,
        "use_dora": false,
        "inference_mode": true,
        "init_lora_weights": true,
        "layers_to_transform": null,
        "layers_pattern": null,
    })
}

/// Writes `adapter` as a PEFT folder (created if missing; each file written atomically)
/// that transformers/PEFT load. `dtype` None keeps each tensor's own storage type.
pub fn write_peft(adapter: &LoraAdapter, dir: &Path, base: &GgufFile, dtype: Option<FactorDtype>) -> Result<(), Error> {
    let names = ArchNames::for_arch(&adapter.architecture).ok_or_else(|| {
        invalid(dir, format!("architecture {:?} has no HF name map (known: {})", adapter.architecture, ArchNames::known().join(", ")))
    })?;
    super::validate(adapter, base, dir)?;
    let (n_head, n_head_kv) = head_counts(base)?;

    let mut tensors: Vec<(String, Dtype, Vec<usize>, Vec<u8>)> = Vec::new();
    for (g, t) in &adapter.tensors {
        let hf = names.gguf_to_hf(g).ok_or_else(|| invalid(dir, format!("tensor {g:?} has no HF name for {}", adapter.architecture)))?;
        let mut b = t.b.clone();
        if t.scale < 0.0 {
            b.iter_mut().for_each(|x| *x = -*x);
        }
        if let Some(h) = names.qk_heads(g, n_head, n_head_kv) {
            b = permute_qk_rows(&b, t.n_out, t.rank, h, true).map_err(|e| invalid(dir, format!("{g}: q/k permutation: {e}")))?;
        }
        let dt = match dtype.unwrap_or(t.dtype) {
            FactorDtype::F32 => Dtype::F32,
            FactorDtype::BF16 => Dtype::BF16,
            FactorDtype::F16 | FactorDtype::Q8_0 => Dtype::F16,
        };
        let enc = |v: &[f32]| -> Vec<u8> {
            match dt {
                Dtype::F32 => v.iter().flat_map(|x| x.to_le_bytes()).collect(),
                Dtype::BF16 => v.iter().flat_map(|x| bf16::from_f32(*x).to_le_bytes()).collect(),
                _ => v.iter().flat_map(|x| f16::from_f32(*x).to_le_bytes()).collect(),
            }
        };
        tensors.push((format!("{KEY_PREFIX}{hf}.lora_A.weight"), dt, vec![t.rank, t.n_in], enc(&t.a)));
        tensors.push((format!("{KEY_PREFIX}{hf}.lora_B.weight"), dt, vec![t.n_out, t.rank], enc(&b)));
    }
    let views: Vec<(String, safetensors::tensor::TensorView<'_>)> = tensors
        .iter()
        .map(|(k, dt, shape, data)| {
            safetensors::tensor::TensorView::new(*dt, shape.clone(), data).map(|v| (k.clone(), v)).map_err(|e| invalid(dir, format!("{k}: {e}")))
        })
        .collect::<Result<_, _>>()?;
    let mut manifest = adapter.manifest.clone();
    manifest.stamp();
    let mut meta = HashMap::new();
    meta.insert("format".to_string(), "pt".to_string());
    meta.insert(MANIFEST_KEY.to_string(), serde_json::to_string(&manifest).expect("manifest serializes"));
    let st_bytes = safetensors::serialize(views, Some(meta)).map_err(|e| invalid(dir, format!("serializing tensors: {e}")))?;

    let cfg = match &adapter.peft_config {
        Some(c) if config_fits(c, adapter, &names) => c.clone(),
        _ => synthesize_config(adapter, &names),
    };
    let cfg_text = serde_json::to_string_pretty(&cfg).expect("config serializes");
    let write_both = |into: &Path| -> Result<(), Error> {
        // Weights first, the config (what makes a folder a PEFT adapter) last.
        let w_path: PathBuf = into.join(WEIGHTS_FILE);
        atomic_write(&w_path, &st_bytes).map_err(|e| invalid(&dir.join(WEIGHTS_FILE), format!("cannot write: {e}")))?;
        let c_path = into.join(CONFIG_FILE);
        atomic_write(&c_path, cfg_text.as_bytes()).map_err(|e| invalid(&dir.join(CONFIG_FILE), format!("cannot write: {e}")))
    };
    if dir.exists() {
        return write_both(dir);
    }
    // A new folder appears whole or not at all: both files go into a sibling temporary
    // folder, which is renamed into place.
    let parent = dir.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    std::fs::create_dir_all(parent).map_err(|e| invalid(parent, format!("cannot create the folder: {e}")))?;
    let tmp = crate::gguf::temp_path_for(dir);
    std::fs::create_dir(&tmp).map_err(|e| invalid(dir, format!("cannot create the temporary folder {}: {e}", tmp.display())))?;
    let done = write_both(&tmp).and_then(|()| std::fs::rename(&tmp, dir).map_err(|e| invalid(dir, format!("cannot rename {} into place: {e}", tmp.display()))));
    if done.is_err() {
        let _ = std::fs::remove_dir_all(&tmp);
    }
    done
}
