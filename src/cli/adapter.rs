use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use clap::{Args, Subcommand};

use edgelora::adapter::{random_lora, write_gguf_lora, LoraDtype, ALL_LINEAR};
use edgelora::gguf::GgufFile;

#[derive(Subcommand)]
pub enum AdapterCommand {
    /// Write a synthetic GGUF-LoRA adapter with random A/B for a model (tests, benches, demos)
    Synth(SynthArgs),
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
    /// adapter.lora.alpha (scale = alpha / rank)
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
    /// Store A/B as f16 or f32
    #[arg(long, default_value = "f16")]
    dtype: String,
}

pub fn run(c: AdapterCommand) -> Result<()> {
    match c {
        AdapterCommand::Synth(a) => synth(a),
    }
}

fn synth(a: SynthArgs) -> Result<()> {
    let base = GgufFile::open(&a.model).with_context(|| format!("reading base model {}", a.model.display()))?;
    let modules: Vec<&str> = if a.targets == "all-linear" { ALL_LINEAR.to_vec() } else { a.targets.split(',').map(str::trim).collect() };
    let dtype = match a.dtype.as_str() {
        "f16" => LoraDtype::F16,
        "f32" => LoraDtype::F32,
        other => bail!("--dtype {other:?}: expected f16 or f32"),
    };
    if a.rank == 0 {
        bail!("--rank must be at least 1");
    }
    let pairs = random_lora(&base, &modules, a.rank, a.amplitude, a.seed);
    if pairs.is_empty() {
        bail!("--targets {:?} matches no blk.*.<module>.weight tensor of {} (modules are GGUF names such as attn_q, ffn_down)", a.targets, a.model.display());
    }
    write_gguf_lora(&a.out, base.architecture()?, a.alpha, &pairs, dtype)?;
    eprintln!("wrote {} ({} targets, rank {}, alpha {})", a.out.display(), pairs.len(), a.rank, a.alpha);
    Ok(())
}
