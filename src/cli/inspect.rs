use std::collections::BTreeMap;
use std::path::PathBuf;

use anyhow::Result;
use clap::Args;
use serde_json::json;

use edgelora::gguf::{GgufFile, MetaValue};

#[derive(Args)]
pub struct InspectArgs {
    /// A GGUF model, a GGUF-LoRA adapter or a PEFT adapter folder
    path: PathBuf,
    /// Print JSON
    #[arg(long)]
    json: bool,
}

fn meta_json(v: &MetaValue) -> serde_json::Value {
    match v {
        MetaValue::String(s) => json!(s),
        MetaValue::Bool(b) => json!(b),
        MetaValue::Array(t, items) if items.len() > 64 => json!({"array": t.name(), "len": items.len()}),
        MetaValue::Array(_, items) => serde_json::Value::Array(items.iter().map(meta_json).collect()),
        other => match (other.as_u64(), other.as_f64()) {
            (Some(u), _) => json!(u),
            (None, Some(f)) => json!(f),
            _ => json!(other.summary()),
        },
    }
}

/// A PEFT folder: its config, tensors and manifest (read without a base model).
fn inspect_peft(a: &InspectArgs) -> Result<()> {
    use anyhow::Context;
    let cfg_path = a.path.join("adapter_config.json");
    let cfg: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&cfg_path).with_context(|| format!("reading {}", cfg_path.display()))?)
        .with_context(|| format!("{}: malformed JSON", cfg_path.display()))?;
    let w_path = a.path.join("adapter_model.safetensors");
    let bytes = std::fs::read(&w_path).with_context(|| format!("reading {}", w_path.display()))?;
    let st = safetensors::SafeTensors::deserialize(&bytes).with_context(|| format!("{}: not a valid safetensors file", w_path.display()))?;
    let (_, meta) = safetensors::SafeTensors::read_metadata(&bytes)?;
    let manifest = meta.metadata().as_ref().and_then(|m| m.get("edgelora.manifest")).cloned();
    let mut tensors: Vec<(String, String, Vec<usize>)> = st.tensors().into_iter().map(|(k, v)| (k, format!("{:?}", v.dtype()), v.shape().to_vec())).collect();
    tensors.sort();
    if a.json {
        let v = json!({
            "path": a.path, "kind": "peft-adapter", "config": cfg,
            "manifest": manifest.and_then(|m| serde_json::from_str::<serde_json::Value>(&m).ok()),
            "tensors": tensors.iter().map(|(k, d, s)| json!({"name": k, "dtype": d, "shape": s})).collect::<Vec<_>>(),
        });
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(());
    }
    println!("{}: PEFT adapter, {} tensors", a.path.display(), tensors.len());
    for k in ["peft_type", "r", "lora_alpha", "use_rslora", "rank_pattern", "alpha_pattern", "target_modules", "base_model_name_or_path"] {
        println!("  {k:<24} {}", cfg.get(k).unwrap_or(&serde_json::Value::Null));
    }
    println!("  manifest                 {}", manifest.unwrap_or_else(|| "none".into()));
    for (k, d, s) in &tensors {
        println!("  {k:<72} {d:<5} {s:?}");
    }
    Ok(())
}

pub fn run(a: InspectArgs) -> Result<()> {
    if a.path.is_dir() {
        return inspect_peft(&a);
    }
    let f = GgufFile::open(&a.path)?;
    let kind = match f.get("general.type").and_then(MetaValue::as_str) {
        Some("adapter") => "adapter",
        _ => "model",
    };
    let arch = f.get("general.architecture").and_then(MetaValue::as_str).unwrap_or("?");
    let n_params: u64 = f.tensors().iter().map(|t| t.n_elements()).sum();
    let mut by_type: BTreeMap<String, (usize, u64)> = BTreeMap::new();
    for t in f.tensors() {
        let e = by_type.entry(t.ggml_type.name().to_string()).or_default();
        e.0 += 1;
        e.1 += t.size;
    }
    // Adapter: rank per target from lora_a's shape [in, r].
    let ranks: BTreeMap<u64, usize> = f
        .tensors()
        .iter()
        .filter(|t| t.name.ends_with(".lora_a") && t.shape.len() == 2)
        .fold(BTreeMap::new(), |mut m, t| {
            *m.entry(t.shape[1]).or_default() += 1;
            m
        });
    if a.json {
        let v = json!({
            "path": a.path,
            "kind": kind,
            "architecture": arch,
            "gguf_version": f.version(),
            "alignment": f.alignment(),
            "file_bytes": f.file_len(),
            "tensor_info_sha256": f.tensor_info_fingerprint(),
            "metadata": f.metadata().iter().map(|(k, v)| (k.clone(), meta_json(v))).collect::<serde_json::Map<_, _>>(),
            "tensors": f.tensors().iter().map(|t| json!({"name": t.name, "type": t.ggml_type.name(), "shape": t.shape, "bytes": t.size})).collect::<Vec<_>>(),
            "totals": {"tensors": f.tensors().len(), "elements": n_params, "bytes": f.tensor_bytes_total(),
                       "by_type": by_type.iter().map(|(k, (n, b))| (k.clone(), json!({"tensors": n, "bytes": b}))).collect::<serde_json::Map<_, _>>()},
            "lora_ranks": ranks.iter().map(|(r, n)| (r.to_string(), json!(n))).collect::<serde_json::Map<_, _>>(),
            "lineage": edgelora::adapter::Manifest::from_gguf(&f).lineage,
        });
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(());
    }
    println!("{}: {kind}, architecture {arch}, GGUF v{}, alignment {}, {} bytes", a.path.display(), f.version(), f.alignment(), f.file_len());
    println!("tensor-info sha256: {}", f.tensor_info_fingerprint());
    if kind == "adapter" {
        let ranks: Vec<String> = ranks.iter().map(|(r, n)| format!("rank {r} × {n}")).collect();
        println!("LoRA targets: {}", ranks.join(", "));
        if let Some(l) = edgelora::adapter::Manifest::from_gguf(&f).lineage {
            match &l.parent {
                Some(p) => println!("lineage: round {}, parent {} (fingerprint {})", l.round, p.path, p.fingerprint),
                None => println!("lineage: round {}, no parent", l.round),
            }
        }
    }
    println!("\nmetadata ({}):", f.metadata().len());
    for (k, v) in f.metadata() {
        println!("  {k:<48} {:<7} {}", v.value_type().name(), v.summary());
    }
    println!("\ntensors ({}):", f.tensors().len());
    println!("  {:<40} {:<6} {:<22} {:>12}", "name", "type", "shape", "bytes");
    for t in f.tensors() {
        println!("  {:<40} {:<6} {:<22} {:>12}", t.name, t.ggml_type.name(), format!("{:?}", t.shape), t.size);
    }
    println!("\ntotals: {} tensors, {} elements, {} bytes", f.tensors().len(), n_params, f.tensor_bytes_total());
    for (k, (n, b)) in &by_type {
        println!("  {k:<6} {n:>5} tensors {b:>12} bytes");
    }
    Ok(())
}
