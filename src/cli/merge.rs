//! `edgelora merge`: adapters merged into the quantized weights, streamed to a new GGUF.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};

use edgelora::compute::Device;
use edgelora::engine::parse_adapter_arg;
use edgelora::gguf::GgmlType;
use edgelora::merge::{merge_files, MergeOptions, MergeStats, Quantizer};

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
    /// Block quantizer: refit (smallest block error, Q4_0/Q4_1/Q8_0) or ggml (llama.cpp's reference)
    #[arg(long, value_parser = ["refit", "ggml"], default_value = "refit")]
    quantizer: String,
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

/// Loads the adapters named by `args` and merges them into `model`, writing `out`.
pub fn merge_args_into(model: &Path, args: &[String], out: &Path, out_type: Option<GgmlType>, quantizer: Quantizer, device: Device, show: bool) -> Result<MergeStats> {
    let adapters = args.iter().map(|a| parse_adapter_arg(a)).collect::<Result<Vec<_>, _>>()?;
    let bar = if show {
        let b = ProgressBar::new(0);
        b.set_style(ProgressStyle::with_template("{bar:40} {pos}/{len} tensors {msg}").expect("valid template"));
        b
    } else {
        ProgressBar::hidden()
    };
    let stats = merge_files(model, &adapters, out, &MergeOptions { out_type, quantizer, device }, &mut |done, total, name| {
        bar.set_length(total as u64);
        bar.set_position(done as u64);
        bar.set_message(name.to_string());
    })
    .with_context(|| format!("merging into {}", out.display()))?;
    bar.finish_and_clear();
    Ok(stats)
}

pub fn run(a: MergeArgs) -> Result<()> {
    let out_type = parse_type(&a.out_type)?;
    if a.adapters.is_empty() && out_type.is_none() {
        bail!("nothing to do: give --adapter, or --type to re-encode");
    }
    let quantizer = if a.quantizer == "ggml" { Quantizer::Ggml } else { Quantizer::Refit };
    let device = if a.device == "gpu" { Device::Gpu } else { Device::Cpu };
    let s = merge_args_into(&a.model, &a.adapters, &a.out, out_type, quantizer, device, true)?;
    eprintln!(
        "wrote {} ({} bytes) in {:.2} s: {} tensors merged, {} converted, {} copied{}",
        a.out.display(),
        s.bytes,
        s.secs,
        s.merged,
        s.converted,
        s.copied,
        if s.kept_type.is_empty() { String::new() } else { format!(", {} kept their type (row length does not fit {})", s.kept_type.len(), a.out_type) }
    );
    Ok(())
}
