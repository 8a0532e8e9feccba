use std::collections::BTreeMap;
use std::path::PathBuf;

use anyhow::Result;
use clap::Args;
use serde_json::json;

use edgelora::gguf::{GgufFile, MetaValue};

#[derive(Args)]
pub struct InspectArgs {
    /// A GGUF model or GGUF-LoRA adapter
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

pub fn run(a: InspectArgs) -> Result<()> {
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
        });
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(());
    }
    println!("{}: {kind}, architecture {arch}, GGUF v{}, alignment {}, {} bytes", a.path.display(), f.version(), f.alignment(), f.file_len());
    println!("tensor-info sha256: {}", f.tensor_info_fingerprint());
    if kind == "adapter" {
        let ranks: Vec<String> = ranks.iter().map(|(r, n)| format!("rank {r} × {n}")).collect();
        println!("LoRA targets: {}", ranks.join(", "));
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
