//! `edgelora adapter convert | compose | verify | synth`.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use clap::{Args, Subcommand};

use edgelora::adapter::{
    self, compose, is_peft_dir, random_lora, read_gguf_lora, validate, write_gguf_lora, write_peft, ComposeMethod, FactorDtype,
    GgufLoraDtype, LoraAdapter, ALL_LINEAR,
};
use edgelora::engine::parse_adapter_arg;
use edgelora::gguf::GgufFile;

#[derive(Subcommand)]
pub enum AdapterCommand {
    /// Convert between PEFT folders and GGUF-LoRA files
    Convert(ConvertArgs),
    /// Combine weighted adapters into one (cat: exact; linear: PEFT's; svd: exact sum at a lower rank)
    Compose(ComposeArgs),
    /// Check an adapter against a model: architecture, targets, shapes, ranks, values
    Verify(VerifyArgs),
    /// Write a synthetic GGUF-LoRA adapter with random A/B for a model (tests, benches, demos)
    Synth(SynthArgs),
    /// Print an adapter's lineage from the manifests: it, its parent, the parent's parent, …
    History(HistoryArgs),
}

#[derive(Args)]
pub struct HistoryArgs {
    /// A GGUF-LoRA file or a PEFT folder trained by edgelora
    adapter: PathBuf,
    /// Also look for parents among the adapters in this folder (repeatable); the child's
    /// own folder and the recorded path are always tried
    #[arg(long, value_name = "DIR")]
    store: Vec<PathBuf>,
    /// Print JSON
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
pub struct ConvertArgs {
    /// A PEFT folder or a GGUF-LoRA file
    input: PathBuf,
    /// Output: a GGUF-LoRA file or a PEFT folder
    output: PathBuf,
    /// The base model (names, q/k permutation, validation, manifest fingerprint)
    #[arg(long, short = 'm', default_value = super::DEFAULT_MODEL)]
    model: PathBuf,
    /// Output format (default: the other one)
    #[arg(long, value_parser = ["gguf", "peft"])]
    to: Option<String>,
    /// Tensor type: f16 or f32 (GGUF default f16; PEFT default: as read)
    #[arg(long, value_parser = ["f16", "f32"])]
    dtype: Option<String>,
    /// Manifest name
    #[arg(long)]
    name: Option<String>,
    /// Manifest version
    #[arg(long = "adapter-version")]
    version: Option<String>,
    /// Accept a PEFT config whose target_modules name modules the model does not have
    /// (a warning on stderr instead of an error)
    #[arg(long)]
    lenient: bool,
}

#[derive(Args)]
pub struct ComposeArgs {
    /// Adapters (GGUF-LoRA files or PEFT folders) with weights
    #[arg(required = true, value_name = "ADAPTER[:WEIGHT]")]
    inputs: Vec<String>,
    /// Output GGUF-LoRA file (or PEFT folder with --to peft)
    #[arg(long)]
    out: PathBuf,
    #[arg(long, value_parser = ["cat", "linear", "svd"], default_value = "cat")]
    method: String,
    /// Target rank for svd
    #[arg(long)]
    rank: Option<usize>,
    /// The base model
    #[arg(long, short = 'm', default_value = super::DEFAULT_MODEL)]
    model: PathBuf,
    #[arg(long, value_parser = ["gguf", "peft"], default_value = "gguf")]
    to: String,
    #[arg(long, value_parser = ["f16", "f32"], default_value = "f16")]
    dtype: String,
    /// Accept a PEFT config whose target_modules name modules the model does not have
    /// (a warning on stderr instead of an error)
    #[arg(long)]
    lenient: bool,
}

#[derive(Args)]
pub struct VerifyArgs {
    /// The base model
    #[arg(long, short = 'm', default_value = super::DEFAULT_MODEL)]
    model: PathBuf,
    /// A GGUF-LoRA file or a PEFT folder
    adapter: PathBuf,
    /// Accept a PEFT config whose target_modules name modules the model does not have
    /// (a warning on stderr instead of an error)
    #[arg(long)]
    lenient: bool,
}

#[derive(Args)]
pub struct SynthArgs {
    /// The base model the adapter is for
    #[arg(long, short = 'm', default_value = super::DEFAULT_MODEL)]
    model: PathBuf,
    /// Output file
    #[arg(long)]
    out: PathBuf,
    /// LoRA rank
    #[arg(long, default_value_t = 16)]
    rank: usize,
    /// LoRA alpha (scale = alpha / rank)
    #[arg(long, default_value_t = 32.0)]
    alpha: f32,
    /// Target modules by GGUF name (attn_q,attn_v,…) or all-linear
    #[arg(long, default_value = "all-linear")]
    targets: String,
    /// A and B are uniform in ±AMPLITUDE
    #[arg(long, default_value_t = 0.02)]
    amplitude: f32,
    #[arg(long, default_value_t = 1)]
    seed: u64,
    #[arg(long, value_parser = ["f16", "f32"], default_value = "f16")]
    dtype: String,
}

pub fn run(c: AdapterCommand) -> Result<()> {
    match c {
        AdapterCommand::Convert(a) => convert(a),
        AdapterCommand::Compose(a) => compose_cmd(a),
        AdapterCommand::Verify(a) => verify(a),
        AdapterCommand::Synth(a) => synth(a),
        AdapterCommand::History(a) => history_cmd(a),
    }
}

fn history_cmd(a: HistoryArgs) -> Result<()> {
    let (chain, end) = edgelora::adapter::history(&a.adapter, &a.store)?;
    if a.json {
        println!("{}", serde_json::to_string_pretty(&serde_json::json!({ "chain": chain, "end": end }))?);
        return Ok(());
    }
    for (i, e) in chain.iter().enumerate() {
        let m = &e.manifest;
        let l = m.lineage.as_ref();
        let round = l.map_or("?".to_string(), |l| l.round.to_string());
        println!("{}round {round}  {}", if i == 0 { "" } else { "↑ " }, e.path.display());
        let field = |k: &str, v: Option<String>| {
            if let Some(v) = v {
                println!("    {k:<16} {v}");
            }
        };
        field("name", m.name.clone().map(|n| m.version.as_ref().map_or(n.clone(), |v| format!("{n} {v}"))));
        field("created", m.created.clone());
        field("source", m.source.clone());
        field("file sha256", Some(e.file_sha256.clone()));
        for d in l.map(|l| l.data.as_slice()).unwrap_or_default() {
            let share = d.fraction.map(|f| format!(" ({:.0}% of every batch)", f * 100.0)).unwrap_or_default();
            println!("    data {:<11} {} sha256 {}{share}", d.role, d.path, &d.fingerprint[..d.fingerprint.len().min(16)]);
        }
        if let Some(h) = &m.hyperparameters {
            let g = |k: &str| h.get(k).map(|v| v.to_string()).unwrap_or_else(|| "?".into());
            println!("    {:<16} rank {} alpha {} lr {} steps {} targets {}", "hyperparameters", g("rank"), g("alpha"), g("lr"), g("steps"), g("targets"));
        }
        if let Some(t) = &m.training {
            let g = |k: &str| t.get(k).filter(|v| !v.is_null()).map(|v| v.to_string()).unwrap_or_else(|| "-".into());
            println!("    {:<16} final train loss {}  eval loss {} → {}", "metrics", g("final_train_loss"), g("eval_loss_before"), g("eval_loss_after"));
        }
        if let Some(p) = l.and_then(|l| l.parent.as_ref()) {
            println!("    {:<16} {} (file sha256 {}…)", "parent", p.path, &p.file_sha256[..p.file_sha256.len().min(16)]);
        }
    }
    match end {
        edgelora::adapter::HistoryEnd::Root => println!("(the oldest adapter has no parent)"),
        edgelora::adapter::HistoryEnd::Cycle => println!("(the chain repeats an adapter: stopped)"),
        edgelora::adapter::HistoryEnd::ParentNotFound { path, looked_in, .. } => {
            println!("(parent {path} not found: tried that path and the adapters in {}; pass --store DIR)", looked_in.iter().map(|d| d.display().to_string()).collect::<Vec<_>>().join(", "))
        }
    }
    Ok(())
}

fn open_base(model: &Path) -> Result<GgufFile> {
    if !model.exists() && model == Path::new(super::DEFAULT_MODEL) {
        bail!("the default model {} is missing: run models/fetch first (or pass --model)", super::DEFAULT_MODEL);
    }
    GgufFile::open(model).with_context(|| format!("reading base model {}", model.display()))
}

/// Reads an adapter for `base`, printing a lenient read's warnings on stderr.
fn read(path: &Path, base: &GgufFile, lenient: bool) -> Result<LoraAdapter> {
    let (adapter, warnings) = adapter::load_with(path, base, adapter::ReadOptions { lenient }).with_context(|| format!("reading adapter {}", path.display()))?;
    for w in warnings {
        eprintln!("{w}");
    }
    Ok(adapter)
}

fn gguf_dtype(s: &str) -> GgufLoraDtype {
    if s == "f32" {
        GgufLoraDtype::F32
    } else {
        GgufLoraDtype::F16
    }
}

fn write_out(adapter: &LoraAdapter, out: &Path, to: &str, dtype: Option<&str>, base: &GgufFile) -> Result<()> {
    if to == "peft" {
        let dt = dtype.map(|d| if d == "f32" { FactorDtype::F32 } else { FactorDtype::F16 });
        write_peft(adapter, out, base, dt).with_context(|| format!("writing PEFT folder {}", out.display()))
    } else {
        write_gguf_lora(adapter, out, gguf_dtype(dtype.unwrap_or("f16"))).with_context(|| format!("writing {}", out.display()))
    }
}

fn convert(a: ConvertArgs) -> Result<()> {
    let base = open_base(&a.model)?;
    let from_peft = a.input.is_dir();
    let mut adapter = read(&a.input, &base, a.lenient)?;
    if a.name.is_some() {
        adapter.manifest.name = a.name.clone();
    }
    if a.version.is_some() {
        adapter.manifest.version = a.version.clone();
    }
    let to = a.to.clone().unwrap_or_else(|| if from_peft { "gguf".into() } else { "peft".into() });
    write_out(&adapter, &a.output, &to, a.dtype.as_deref(), &base)?;
    eprintln!("wrote {} ({to}, {} targets, ranks {:?})", a.output.display(), adapter.tensors.len(), adapter.ranks());
    Ok(())
}

fn compose_cmd(a: ComposeArgs) -> Result<()> {
    let base = open_base(&a.model)?;
    let method = match (a.method.as_str(), a.rank) {
        ("cat", None) => ComposeMethod::Cat,
        ("linear", None) => ComposeMethod::Linear,
        ("svd", Some(r)) => ComposeMethod::Svd(r),
        ("svd", None) => bail!("--method svd needs --rank R"),
        (m, Some(_)) => bail!("--rank applies to --method svd only, not {m}"),
        (m, None) => bail!("unknown method {m}"),
    };
    let mut loaded = Vec::new();
    for arg in &a.inputs {
        let (path, w) = parse_adapter_arg(arg)?;
        let ad = read(&path, &base, a.lenient)?;
        loaded.push((ad, w));
    }
    let refs: Vec<(&LoraAdapter, f32)> = loaded.iter().map(|(a, w)| (a, *w)).collect();
    let (mut out, report) = compose(&refs, method)?;
    out.manifest.set_base(&base);
    validate(&out, &base, &a.out)?;
    write_out(&out, &a.out, &a.to, Some(&a.dtype), &base)?;
    let ranks: Vec<usize> = out.ranks().into_keys().collect();
    eprintln!("wrote {} ({} targets, rank(s) {ranks:?}, retained energy: min {:.6})", a.out.display(), out.tensors.len(), report.min_energy());
    Ok(())
}

fn verify(a: VerifyArgs) -> Result<()> {
    let base = open_base(&a.model)?;
    let adapter = read(&a.adapter, &base, a.lenient).with_context(|| format!("verifying {} against {}", a.adapter.display(), a.model.display()))?;
    let summary = validate(&adapter, &base, &a.adapter)?;
    let mut scales: Vec<String> = summary.targets.values().map(|(r, s)| format!("r{r}·s{s}")).collect();
    scales.sort();
    scales.dedup();
    println!("OK: {} fits {} ({})", a.adapter.display(), a.model.display(), summary.architecture);
    println!("  format: {}", if is_peft_dir(&a.adapter) { "PEFT" } else { "GGUF-LoRA" });
    println!("  targets: {} tensors, modules {}", summary.targets.len(), adapter.target_modules().join(","));
    println!("  rank·scale: {}", scales.join(", "));
    println!("  manifest: {}", serde_json::to_string(&adapter.manifest)?);
    if let (Some(fp), true) = (&adapter.manifest.base_fingerprint, !a.adapter.is_dir()) {
        if *fp != base.tensor_info_fingerprint() {
            println!("  note: the manifest's base fingerprint differs from this model's (made for another file of the same architecture)");
        }
    }
    Ok(())
}

fn synth(a: SynthArgs) -> Result<()> {
    let base = open_base(&a.model)?;
    let modules: Vec<&str> = if a.targets == "all-linear" { ALL_LINEAR.to_vec() } else { a.targets.split(',').map(str::trim).collect() };
    if a.rank == 0 {
        bail!("--rank must be at least 1");
    }
    let adapter = random_lora(&base, &modules, a.rank, a.alpha, a.amplitude, a.seed);
    if adapter.tensors.is_empty() {
        bail!("--targets {:?} matches no blk.*.<module>.weight tensor of {} (modules are GGUF names such as attn_q, ffn_down)", a.targets, a.model.display());
    }
    write_gguf_lora(&adapter, &a.out, gguf_dtype(&a.dtype))?;
    // Read back what was written, as a check of the file.
    let written = read_gguf_lora(&GgufFile::open(&a.out)?)?;
    eprintln!("wrote {} ({} targets, rank {}, alpha {})", a.out.display(), written.tensors.len(), a.rank, a.alpha);
    Ok(())
}
