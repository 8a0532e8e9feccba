//! `edgelora merge`: adapters merged into the quantized weights, streamed to a new GGUF.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};

use edgelora::compute::Device;
use edgelora::engine::parse_adapter_arg;
use edgelora::gguf::GgmlType;
use edgelora::merge::{merge_files, Calibration, MergeOptions, MergeStats, Quantizer};

#[derive(Args)]
pub struct MergeArgs {
    /// The base model
    #[arg(long, short = 'm', default_value = super::DEFAULT_MODEL)]
    model: PathBuf,
    /// Adapters (GGUF-LoRA files or PEFT folders) with their weights; none = a plain re-encode
    #[arg(long = "adapter", short = 'a', value_name = "PATH[:SCALE]")]
    adapters: Vec<String>,
    /// Output GGUF
    #[arg(long)]
    out: PathBuf,
    /// Weight type: same (each tensor keeps its type), f32, f16, bf16, q8_0, q4_0, q4_1, q5_0, q5_1, q2_k … q6_k
    #[arg(long = "type", default_value = "same")]
    out_type: String,
    /// Block quantizer: auto (the most faithful the output type allows: gptq for Q4_0/Q4_1/Q8_0, refit otherwise), refit (smallest block error, Q4_0/Q4_1/Q8_0; fast), ggml (llama.cpp's reference) or gptq (Q4_0/Q4_1/Q8_0 codes and grids for the smallest output error on calibration inputs, from the base's grids; minutes)
    #[arg(long, value_parser = auto_quantizer_names(), default_value = "auto")]
    quantizer: String,
    /// Load PEFT adapters whose target_modules name modules the model does not have
    /// (a warning on stderr instead of an error)
    #[arg(long)]
    lenient: bool,
    /// Calibration text for gptq, paragraphs separated by blank lines (default: 256 × 64 tokens sampled from the adapted model)
    #[arg(long, value_name = "FILE")]
    calibration: Option<PathBuf>,
    /// Where dequantize + delta run: cpu, or gpu (wgpu; fails if no adapter)
    #[arg(long, value_parser = ["cpu", "gpu"], default_value = "cpu")]
    device: String,
}

fn parse_type(s: &str) -> Result<Option<GgmlType>> {
    if s == "same" {
        return Ok(None);
    }
    GgmlType::ALL
        .into_iter()
        .find(|t| t.name().eq_ignore_ascii_case(s))
        .filter(|t| edgelora::quant::can_quantize(*t))
        .map(Some)
        .ok_or_else(|| anyhow::anyhow!("--type {s:?}: expected same, f32, f16, bf16, q8_0, q4_0, q4_1, q5_0, q5_1, q2_k, q3_k, q4_k, q5_k or q6_k"))
}

/// The `--quantizer` values: [`Quantizer::name`] of each.
pub fn quantizer_names() -> clap::builder::PossibleValuesParser {
    clap::builder::PossibleValuesParser::new(Quantizer::ALL.map(Quantizer::name))
}

/// The offline merge's `--quantizer` values: `auto` and [`Quantizer::name`] of each.
fn auto_quantizer_names() -> clap::builder::PossibleValuesParser {
    let mut v = vec!["auto"];
    v.extend(Quantizer::ALL.map(Quantizer::name));
    clap::builder::PossibleValuesParser::new(v)
}

/// Longest calibration sequence, in tokens.
const MAX_CALIBRATION_TOKENS: usize = 512;

/// GPTQ's calibration sequences: `file` split at blank lines, each paragraph tokenized
/// with the model's vocabulary (special tokens such as chat markers parsed) and cut at
/// 512 tokens.
pub fn calibration_tokens(model: &Path, file: &Path) -> Result<Vec<Vec<i32>>> {
    let text = std::fs::read_to_string(file).with_context(|| format!("reading calibration text {}", file.display()))?;
    let vocab = edgelora::engine::Vocabulary::open(model)
        .with_context(|| format!("loading {}'s vocabulary to tokenize the calibration text", model.display()))?;
    let mut seqs = Vec::new();
    for para in text.split("\n\n").map(str::trim).filter(|p| !p.is_empty()) {
        let mut ids = vocab.tokenize_text(para, false)?;
        ids.truncate(MAX_CALIBRATION_TOKENS);
        seqs.push(ids);
    }
    if seqs.is_empty() {
        bail!("the calibration text {} holds no text", file.display());
    }
    Ok(seqs)
}

/// Loads the adapters named by `args` and merges them into `model`, writing `out`.
pub fn merge_args_into(model: &Path, args: &[String], out: &Path, opts: &MergeOptions, show: bool) -> Result<MergeStats> {
    let adapters = args.iter().map(|a| parse_adapter_arg(a)).collect::<Result<Vec<_>, _>>()?;
    let bar = if show {
        let b = ProgressBar::new(0);
        b.set_style(ProgressStyle::with_template("{bar:40} {pos}/{len} tensors {msg}").expect("valid template"));
        b
    } else {
        ProgressBar::hidden()
    };
    if opts.quantizer == Quantizer::Gptq {
        // Before the first tensor: calibration (most of gptq's time); merge reports its steps.
        bar.set_message("gptq: calibration");
        bar.enable_steady_tick(std::time::Duration::from_millis(500));
    }
    let stats = merge_files(model, &adapters, out, opts, &mut |done, total, name| {
        bar.set_length(total as u64);
        bar.set_position(done as u64);
        bar.set_message(name.to_string());
    })
    .with_context(|| format!("merging into {}", out.display()))?;
    bar.finish_and_clear();
    for w in &stats.warnings {
        eprintln!("{w}");
    }
    Ok(stats)
}

pub fn run(a: MergeArgs) -> Result<()> {
    let out_type = parse_type(&a.out_type)?;
    if a.adapters.is_empty() && out_type.is_none() {
        bail!("nothing to do: give --adapter, or --type to re-encode");
    }
    let quantizer = match Quantizer::from_name(&a.quantizer) {
        Some(q) => q,
        None => {
            let base = edgelora::gguf::GgufFile::open(&a.model).with_context(|| format!("reading base model {}", a.model.display()))?;
            Quantizer::most_faithful(&base, out_type, a.adapters.len())
        }
    };
    let calibration = match (&a.calibration, quantizer) {
        (Some(f), Quantizer::Gptq) => Calibration::Tokens(calibration_tokens(&a.model, f)?),
        (Some(_), _) => bail!("--calibration is only read by --quantizer gptq"),
        (None, _) => Calibration::default(),
    };
    let device = if a.device == "gpu" { Device::Gpu } else { Device::Cpu };
    let read = edgelora::adapter::ReadOptions { lenient: a.lenient };
    let s = merge_args_into(&a.model, &a.adapters, &a.out, &MergeOptions { out_type, quantizer, device, calibration, read }, true)?;
    let closer = match quantizer {
        Quantizer::Gptq => "",
        _ if a.adapters.is_empty() => "",
        _ => "; gptq is closer to the adapters on the fly for Q4_0/Q4_1/Q8_0 weights (--quantizer gptq)",
    };
    eprintln!(
        "wrote {} ({} bytes) in {:.2} s with the {} quantizer{closer}: {} tensors merged, {} converted, {} copied{}{}",
        a.out.display(),
        s.bytes,
        s.secs,
        quantizer.name(),
        s.merged,
        s.converted,
        s.copied,
        if s.gptq_compensated.is_empty() { String::new() } else { format!(", {} re-coded by gptq to compensate (attn_output/ffn_down)", s.gptq_compensated.len()) },
        if s.kept_type.is_empty() { String::new() } else { format!(", {} kept their type (row length does not fit {})", s.kept_type.len(), a.out_type) }
    );
    if !s.gptq_refit.is_empty() {
        eprintln!("gptq: {} merged tensor(s) written by refit (too few calibration rows for their input, not Q4_0/Q4_1/Q8_0, a fused tensor: phi3's attn_qkv, ffn_up, or any of a gemma3 model's): {}", s.gptq_refit.len(), s.gptq_refit.join(", "));
    }
    Ok(())
}
