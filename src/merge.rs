//! Merge at load: W' = W + Σ wᵢ·sᵢ·Bᵢ·Aᵢ for every targeted tensor, written straight back
//! into a quantized format and streamed to a new GGUF, one tensor at a time.
//!
//! Targeted tensors are dequantized and get their deltas added in f32 on the chosen
//! compute backend (CPU: SIMD + rows in parallel; GPU: wgpu kernels),
//! and are quantized to the base's own type by default — with the error-minimizing
//! block quantizer (`quant::requant`) for Q4_0/Q4_1/Q8_0, which also tries each block's
//! pre-merge grid, or with ggml's reference quantizer (ported, `quant::ggml_ref`) for the
//! other types; or, with
//! [`Quantizer::Gptq`], into the base's own Q4_0/Q4_1/Q8_0 types with codes chosen by GPTQ
//! and grids refit, both for the smallest output error on calibration inputs, layer by
//! layer ([`calibration`], [`sequential`], `quant::gptq`). Untouched tensors are
//! copied byte for byte from the map (or converted when `--type` asks for another type).
//! The output's metadata is the base's, plus `edgelora.merge.*` recording the adapters,
//! their fingerprints and weights. The file is written atomically.

use std::borrow::Cow;
use std::path::Path;
use std::time::Instant;

use rayon::prelude::*;

use crate::adapter::{validate, LoraAdapter};
use crate::compute::{self, Backend, Delta, Device};
use crate::error::{Error, GgufError};
use crate::gguf::{GgmlType, GgufFile, GgufWriter, MetaValue, TensorInfo, TensorSpec, ValueType};
use crate::quant::{self, blocks::{BlockQ4_0, BlockQ4_1, QK}, gptq, requant};

pub mod calibration;
pub mod sequential;
mod spill;
pub use calibration::Calibration;

/// How quantized tensors are written back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Quantizer {
    /// ggml's reference quantizer (what llama-quantize writes).
    Ggml,
    /// Per-block search for the smallest squared error (Q4_0/Q4_1/Q8_0; ggml's otherwise).
    Refit,
    /// Merged Q4_0/Q4_1/Q8_0 tensors keep their type and get the codes GPTQ chooses, and
    /// grids refit to them, for the smallest output error on calibration inputs (starting
    /// from the base's grids; refit's path for the rest), layer by layer; every
    /// attn_output/ffn_down is re-coded too, targeted or not, to take up the other
    /// projections' errors ([`sequential`]). Slower: the calibration runs the model.
    Gptq,
}

impl Quantizer {
    pub const ALL: [Quantizer; 3] = [Quantizer::Refit, Quantizer::Ggml, Quantizer::Gptq];

    /// The quantizer called `name` ([`Quantizer::name`]).
    pub fn from_name(name: &str) -> Option<Quantizer> {
        Quantizer::ALL.into_iter().find(|q| q.name() == name)
    }

    /// `refit`, `ggml` or `gptq` (the CLI's names).
    pub fn name(self) -> &'static str {
        match self {
            Quantizer::Ggml => "ggml",
            Quantizer::Refit => "refit",
            Quantizer::Gptq => "gptq",
        }
    }

    /// The most faithful quantizer for merging `n_adapters` adapters into `base` written
    /// as `out_type` (`None`: each tensor keeps its type): GPTQ when any weight matrix
    /// comes out as Q4_0/Q4_1/Q8_0 (the types it re-codes), refit otherwise (the other
    /// types' merges are as close as their block format allows). The default of the
    /// offline merge in the CLI and the SDKs; `--merge` at load keeps refit, the fast one.
    pub fn most_faithful(base: &GgufFile, out_type: Option<GgmlType>, n_adapters: usize) -> Quantizer {
        let recodes = |t: GgmlType| matches!(t, GgmlType::Q4_0 | GgmlType::Q4_1 | GgmlType::Q8_0);
        let gptq = n_adapters > 0
            && match out_type {
                Some(t) => recodes(t),
                None => base.tensors().iter().any(|t| t.shape.len() == 2 && recodes(t.ggml_type)),
            };
        if gptq {
            Quantizer::Gptq
        } else {
            Quantizer::Refit
        }
    }
}

/// GPTQ's damping: this fraction of the mean diagonal of XᵀX is added to its diagonal.
pub const GPTQ_DAMP: f64 = 0.01;

/// Rounds of grid refit + GPTQ after GPTQ on the base's grids (see [`gptq::recode`]):
/// held-out KL of the rslora_r8_all merge 0.056 (0 rounds), 0.042 (1), 0.038 (3), 0.040
/// (8), 0.038 (20), each round ≈ 6 s there.
pub const GPTQ_GRID_ROUNDS: usize = 3;

/// GPTQ re-codes a tensor only when its input was seen in at least this many calibration
/// rows per input column (fewer: XᵀX is too poorly known, and the codes would fit the
/// calibration rows rather than the model); such tensors take refit's path.
pub const GPTQ_MIN_ROWS_PER_INPUT: usize = 2;

#[derive(Debug, Clone)]
pub struct MergeOptions {
    /// Output type for weight tensors; `None` keeps each tensor's type.
    pub out_type: Option<GgmlType>,
    pub quantizer: Quantizer,
    /// Where dequantize + delta run (requantization runs on the CPU).
    pub device: Device,
    /// GPTQ's calibration (read by [`Quantizer::Gptq`] only).
    pub calibration: Calibration,
    /// How [`merge_files`] reads the adapters (lenient PEFT targets: warnings in
    /// [`MergeStats::warnings`]).
    pub read: crate::adapter::ReadOptions,
}

impl Default for MergeOptions {
    fn default() -> Self {
        MergeOptions { out_type: None, quantizer: Quantizer::Refit, device: Device::Cpu, calibration: Calibration::default(), read: Default::default() }
    }
}

/// One adapter to merge: the adapter, its weight, a label for the record.
pub struct MergeInput<'a> {
    pub adapter: &'a LoraAdapter,
    pub weight: f32,
    pub label: String,
}

/// What a merge did.
#[derive(Debug, Clone, Default)]
pub struct MergeStats {
    pub merged: usize,
    pub copied: usize,
    pub converted: usize,
    /// Tensors left in their type because `out_type` does not fit their row length.
    pub kept_type: Vec<String>,
    /// With GPTQ: merged tensors written by refit instead (too few calibration rows for
    /// their input, or a type GPTQ does not re-code).
    pub gptq_refit: Vec<String>,
    /// With GPTQ: tensors no adapter targets that were re-coded all the same — every
    /// attn_output and ffn_down, whose drift target takes up the merged projections'
    /// errors (see [`sequential`]). Recorded in `edgelora.merge.gptq_compensated`.
    pub gptq_compensated: Vec<String>,
    pub bytes: u64,
    pub secs: f64,
    /// What a lenient read of the adapters let through.
    pub warnings: Vec<String>,
}

/// `general.file_type` for an all-`t` model (llama.cpp's `llama_ftype`).
fn file_type(t: GgmlType) -> Option<u32> {
    use GgmlType::*;
    Some(match t {
        F32 => 0,
        F16 => 1,
        Q4_0 => 2,
        Q4_1 => 3,
        Q8_0 => 7,
        Q5_0 => 8,
        Q5_1 => 9,
        Q2_K => 10,
        Q3_K => 12,
        Q4_K => 15,
        Q5_K => 17,
        Q6_K => 18,
        BF16 => 32,
        _ => return None,
    })
}

fn is_weight(t: &TensorInfo) -> bool {
    t.shape.len() >= 2 && !matches!(t.ggml_type, GgmlType::I8 | GgmlType::I16 | GgmlType::I32 | GgmlType::I64 | GgmlType::F64)
}

/// The deltas of every input targeting `name`, weighted.
pub(crate) fn deltas<'a>(name: &str, inputs: &'a [MergeInput]) -> Vec<Delta<'a>> {
    inputs
        .iter()
        .filter_map(|inp| inp.adapter.tensors.get(name).map(|t| Delta { rank: t.rank, a: &t.a, b: &t.b, scale: inp.weight * t.scale }))
        .collect()
}

/// Quantizes merged values to `t`, using the pre-merge bytes as grid hints when the
/// type is unchanged.
fn requantize(t: GgmlType, values: &[f32], n_in: usize, original: Option<&[u8]>, quantizer: Quantizer) -> Result<Vec<u8>, quant::QuantError> {
    match (quantizer, t) {
        // Rows in parallel (a block per task would drown in scheduling), blocks in order.
        (Quantizer::Refit | Quantizer::Gptq, GgmlType::Q4_1) => {
            let hints: Option<Vec<BlockQ4_1>> = original.map(bytemuck::pod_collect_to_vec);
            let per_row = n_in / QK;
            let rows: Vec<Vec<BlockQ4_1>> = values
                .par_chunks(n_in)
                .enumerate()
                .map(|(r, row)| {
                    row.chunks(QK)
                        .enumerate()
                        .map(|(j, x)| requant::quantize_block_q4_1(x, hints.as_ref().map(|h| (h[r * per_row + j].d, h[r * per_row + j].m))))
                        .collect()
                })
                .collect();
            Ok(rows.iter().flat_map(|r| bytemuck::cast_slice::<BlockQ4_1, u8>(r).iter().copied()).collect())
        }
        (Quantizer::Refit | Quantizer::Gptq, GgmlType::Q4_0) => {
            let hints: Option<Vec<BlockQ4_0>> = original.map(bytemuck::pod_collect_to_vec);
            let per_row = n_in / QK;
            let rows: Vec<Vec<BlockQ4_0>> = values
                .par_chunks(n_in)
                .enumerate()
                .map(|(r, row)| {
                    row.chunks(QK).enumerate().map(|(j, x)| requant::quantize_block_q4_0(x, hints.as_ref().map(|h| h[r * per_row + j].d))).collect()
                })
                .collect();
            Ok(rows.iter().flat_map(|r| bytemuck::cast_slice::<BlockQ4_0, u8>(r).iter().copied()).collect())
        }
        (Quantizer::Refit | Quantizer::Gptq, GgmlType::Q8_0) => {
            let rows: Vec<Vec<_>> = values.par_chunks(n_in).map(|row| row.chunks(QK).map(requant::quantize_block_q8_0).collect()).collect();
            Ok(rows.iter().flat_map(|r: &Vec<quant::blocks::BlockQ8_0>| bytemuck::cast_slice::<_, u8>(r).iter().copied()).collect())
        }
        _ => quant::quantize_ggml(t, values, n_in),
    }
}

/// Merges `inputs` into `base` and writes the result to `out`. `progress(done, total,
/// tensor)` is called after each tensor (and, with GPTQ, with done = 0 and a
/// `gptq: …` step before the first).
pub fn merge(
    base: &GgufFile,
    inputs: &[MergeInput],
    out: &Path,
    opts: &MergeOptions,
    progress: &mut dyn FnMut(usize, usize, &str),
) -> Result<MergeStats, Error> {
    let t0 = Instant::now();
    // The output is a model llama.cpp will load: its base must pass the same checks.
    crate::model::validate::check_model(base)?;
    let backend: Box<dyn Backend> = compute::backend(opts.device).map_err(|e| crate::error::EngineError::Backend(e.to_string()))?;
    for inp in inputs {
        validate(inp.adapter, base, Path::new(&inp.label))?;
        if !inp.weight.is_finite() {
            return Err(crate::error::EngineError::BadScale { name: inp.label.clone(), scale: inp.weight }.into());
        }
    }
    let targeted = |name: &str| inputs.iter().any(|i| i.adapter.tensors.contains_key(name));
    let total = base.tensors().len();
    let mut stats = MergeStats::default();

    // Decide every tensor's output type first: the header is written before the data.
    let mut plan = Vec::with_capacity(base.tensors().len());
    for t in base.tensors() {
        let mut ty = t.ggml_type;
        if let Some(want) = opts.out_type.filter(|_| is_weight(t)) {
            if t.shape[0] % want.block_size() == 0 && quant::can_quantize(want) {
                ty = want;
            } else if want != t.ggml_type {
                stats.kept_type.push(t.name.clone());
            }
        }
        let merge = targeted(&t.name);
        if (merge || ty != t.ggml_type) && !(quant::can_dequantize(t.ggml_type) && quant::can_quantize(ty)) {
            return Err(GgufError::BadTensor {
                path: base.path().to_path_buf(),
                name: t.name.clone(),
                reason: format!("cannot re-encode {} as {} (dequantize/quantize not supported for this type)", t.ggml_type, ty),
            }
            .into());
        }
        plan.push((ty, merge));
    }

    let mut metadata = base.metadata().to_vec();
    if let Some(ft) = opts.out_type.and_then(file_type) {
        match metadata.iter_mut().find(|(k, _)| k == "general.file_type") {
            Some((_, v)) => *v = MetaValue::U32(ft),
            None => metadata.push(("general.file_type".into(), MetaValue::U32(ft))),
        }
    }
    let strs = |f: &dyn Fn(&MergeInput) -> String| MetaValue::Array(ValueType::String, inputs.iter().map(|i| MetaValue::String(f(i))).collect());
    metadata.retain(|(k, _)| !k.starts_with("edgelora.merge."));
    metadata.push(("edgelora.merge.adapters".into(), strs(&|i| i.label.clone())));
    metadata.push(("edgelora.merge.names".into(), strs(&|i| i.adapter.manifest.name.clone().unwrap_or_default())));
    // The fingerprints (hashes of every factor) are filled in on the writer thread, while
    // the first tensors are re-encoded.
    let fingerprints_at = metadata.len();
    metadata.push(("edgelora.merge.weights".into(), MetaValue::Array(ValueType::F32, inputs.iter().map(|i| MetaValue::F32(i.weight)).collect())));
    metadata.push(("edgelora.merge.quantizer".into(), MetaValue::String(opts.quantizer.name().into())));

    // GPTQ: merged tensors that keep a type it re-codes get their blocks from the
    // layer-by-layer pass before any tensor is written; the other merged tensors go
    // refit's path (and are listed).
    // attn_output and ffn_down are re-coded even where no adapter targets them: their
    // drift target takes up the errors of the merged projections before them (seed_r16_qv,
    // q/v only, every-position KL on held-out text 0.0084 → 0.0044).
    let mut recoded_bytes = spill::Spilled::default();
    if opts.quantizer == Quantizer::Gptq {
        let keeps = |t: &TensorInfo, ty: GgmlType| ty == t.ggml_type && gptq::supports(ty);
        let mut recoded: std::collections::HashSet<&str> = base.tensors().iter().zip(&plan).filter(|(t, (ty, m))| *m && keeps(t, *ty)).map(|(t, _)| t.name.as_str()).collect();
        // gemma3: no layer-by-layer pass (its recipe is not in `sequential`): refit.
        let layered = crate::model::config::ModelConfig::from_gguf(base).map(|c| sequential::supports(&c)).unwrap_or(true);
        if !recoded.is_empty() && layered {
            let residual_writer = |name: &str| name.ends_with(".attn_output.weight") || name.ends_with(".ffn_down.weight");
            recoded.extend(base.tensors().iter().zip(&plan).filter(|(t, (ty, m))| !*m && keeps(t, *ty) && residual_writer(&t.name)).map(|(t, _)| t.name.as_str()));
            // The re-coded blocks wait in a temporary file beside the output (made first:
            // an unwritable directory fails before the calibration's minutes).
            let dir = match out.parent() {
                Some(d) if !d.as_os_str().is_empty() => d,
                _ => Path::new("."),
            };
            let mut spill = spill::Spill::new(dir)?;
            progress(0, total, "gptq: sampling calibration tokens");
            let sequences = calibration::sequences(base, inputs, &opts.calibration)?;
            let wanted = |name: &str| recoded.contains(name);
            let recoder = sequential::Recoder { wanted: &wanted, damp: GPTQ_DAMP, rounds: GPTQ_GRID_ROUNDS, min_rows_per_input: GPTQ_MIN_ROWS_PER_INPUT, drift_ridge: Some(sequential::DRIFT_RIDGE) };
            sequential::recode_layers(base, inputs, &sequences, &recoder, &mut |name, bytes| spill.push(name, &bytes), &mut |l, n| progress(0, total, &format!("gptq: layer {l}/{n}")))?;
            recoded_bytes = spill.finish()?;
        }
        for (t, (_, m)) in base.tensors().iter().zip(&plan) {
            match (*m, recoded_bytes.contains(&t.name)) {
                (true, false) => stats.gptq_refit.push(t.name.clone()),
                (false, true) => stats.gptq_compensated.push(t.name.clone()),
                _ => {}
            }
        }
        let names = stats.gptq_compensated.iter().map(|n| MetaValue::String(n.clone())).collect();
        metadata.push(("edgelora.merge.gptq_compensated".into(), MetaValue::Array(ValueType::String, names)));
    }

    let specs: Vec<TensorSpec> = base.tensors().iter().zip(&plan).map(|(t, (ty, _))| TensorSpec::new(t.name.clone(), &t.shape, *ty)).collect();
    // f32 work buffers reused across tensors (fresh ones would page-fault in every
    // tensor); freed when the merge ends.
    let buffers: std::sync::Mutex<Vec<Vec<f32>>> = std::sync::Mutex::new(Vec::new());
    // The bytes to write for one tensor: a borrowed copy, or its re-encoding.
    let encode = |t: &TensorInfo, ty: GgmlType, merge: bool| -> Result<Cow<'_, [u8]>, Error> {
        let data = base.tensor_data(t);
        if let Some(bytes) = recoded_bytes.get(&t.name) {
            return Ok(Cow::Borrowed(bytes));
        }
        if !merge && ty == t.ggml_type {
            return Ok(Cow::Borrowed(data));
        }
        let bad = |reason: String| GgufError::BadTensor { path: base.path().to_path_buf(), name: t.name.clone(), reason };
        let n_in = t.shape[0] as usize;
        let mut values = buffers.lock().unwrap_or_else(|e| e.into_inner()).pop().unwrap_or_default();
        // Every value is overwritten by the dequantization below: no need to clear.
        values.resize(t.n_elements() as usize, 0.0);
        if merge && t.ggml_type != GgmlType::F32 {
            backend.dequantize(t.ggml_type, data, &mut values).map_err(|e| bad(e.to_string()))?;
        } else {
            quant::dequantize(t.ggml_type, data, &mut values).map_err(|e| bad(e.to_string()))?;
        }
        if merge {
            let n_out = values.len() / n_in;
            backend.lora_delta(&mut values, n_out, n_in, &deltas(&t.name, inputs)).map_err(|e| bad(e.to_string()))?;
        }
        let hint = if ty == t.ggml_type { Some(data) } else { None };
        let bytes = requantize(ty, &values, n_in, hint, opts.quantizer).map_err(|e| bad(e.to_string()))?;
        buffers.lock().unwrap_or_else(|e| e.into_inner()).push(values);
        Ok(Cow::Owned(bytes))
    };
    // Tensors are re-encoded a window at a time in parallel (on the CPU; one at a time on
    // a GPU) and written in file order by a writer thread one window behind, so the file
    // I/O overlaps the next window's work. Memory stays bounded by two windows.
    const WINDOW_BYTES: u64 = 16 << 20;
    let items: Vec<(&TensorInfo, GgmlType, bool)> = base.tensors().iter().zip(&plan).map(|(t, (ty, m))| (t, *ty, *m)).collect();
    type Window<'a> = Vec<(&'a TensorInfo, Cow<'a, [u8]>)>;
    let (tx, rx) = std::sync::mpsc::sync_channel::<Window<'_>>(1);
    let w = std::thread::scope(|scope| -> Result<GgufWriter, Error> {
        let writer = scope.spawn(move || -> Result<GgufWriter, Error> {
            let fingerprints = inputs.iter().map(|i| MetaValue::String(i.adapter.fingerprint())).collect();
            metadata.insert(fingerprints_at, ("edgelora.merge.fingerprints".into(), MetaValue::Array(ValueType::String, fingerprints)));
            let mut w = GgufWriter::create_with_version(out, base.version(), &metadata, &specs)?;
            for window in rx {
                for (t, bytes) in window {
                    w.write_tensor(&t.name, &bytes)?;
                }
            }
            Ok(w)
        });
        let mut failed = None;
        let (mut k, mut done) = (0, 0);
        while k < items.len() {
            let mut end = k + 1;
            let mut budget = items[k].0.n_elements() * 4;
            while opts.device == Device::Cpu && end < items.len() && budget + items[end].0.n_elements() * 4 <= WINDOW_BYTES {
                budget += items[end].0.n_elements() * 4;
                end += 1;
            }
            let outs: Result<Vec<Cow<'_, [u8]>>, Error> = items[k..end].par_iter().map(|(t, ty, m)| encode(t, *ty, *m)).collect();
            let outs = match outs {
                Ok(o) => o,
                Err(e) => {
                    failed = Some(e);
                    break;
                }
            };
            let mut window = Vec::with_capacity(outs.len());
            for ((t, ty, m), out) in items[k..end].iter().zip(outs) {
                match (m, *ty == t.ggml_type) {
                    (true, _) => stats.merged += 1,
                    // listed in gptq_compensated
                    (false, true) if recoded_bytes.contains(&t.name) => {}
                    (false, true) => stats.copied += 1,
                    (false, false) => stats.converted += 1,
                }
                done += 1;
                progress(done, total, &t.name);
                window.push((*t, out));
            }
            if tx.send(window).is_err() {
                break; // the writer failed: its error is returned below
            }
            k = end;
        }
        drop(tx);
        let w = writer.join().unwrap_or_else(|panic| std::panic::resume_unwind(panic))?;
        match failed {
            // Dropping the unfinished writer removes its temporary file.
            Some(e) => Err(e),
            None => Ok(w),
        }
    })?;
    w.finish()?;
    stats.bytes = std::fs::metadata(out).map(|m| m.len()).unwrap_or(0);
    stats.secs = t0.elapsed().as_secs_f64();
    Ok(stats)
}

/// Opens `model`, reads each adapter (GGUF-LoRA file or PEFT folder, validated against
/// the model) with its weight, and merges them into `out`. The entry point the CLI, the
/// C ABI and the JNI glue share.
pub fn merge_files(
    model: &Path,
    adapters: &[(std::path::PathBuf, f32)],
    out: &Path,
    opts: &MergeOptions,
    progress: &mut dyn FnMut(usize, usize, &str),
) -> Result<MergeStats, Error> {
    let base = GgufFile::open(model)?;
    let mut warnings = Vec::new();
    let mut loaded = Vec::new();
    for (path, w) in adapters {
        let (a, warned) = crate::adapter::load_with(path, &base, opts.read)?;
        warnings.extend(warned);
        loaded.push((a, *w, path.display().to_string()));
    }
    let inputs: Vec<MergeInput> = loaded.iter().map(|(a, w, l)| MergeInput { adapter: a, weight: *w, label: l.clone() }).collect();
    let mut stats = merge(&base, &inputs, out, opts, progress)?;
    stats.warnings = warnings;
    Ok(stats)
}
