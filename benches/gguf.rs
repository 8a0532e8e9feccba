//! GGUF parsing and dequantization throughput on the default model (scalar reference vs
//! the SIMD kernel the CPU dispatches to), and per block format on a quantized random
//! matrix. `cargo bench --bench gguf` (needs models/fetch).

use std::path::Path;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use edgelora::gguf::GgufFile;
use edgelora::gguf::GgmlType;
use edgelora::quant::{dequantize, dequantize_reference, quantize_ggml, simd};

fn model() -> std::path::PathBuf {
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("models/SmolLM2-135M-Instruct.Q4_1.gguf");
    assert!(p.exists(), "{} is missing: run models/fetch", p.display());
    p
}

fn open_header(c: &mut Criterion) {
    let path = model();
    c.bench_function("gguf_open_default_model", |b| b.iter(|| GgufFile::open(&path).unwrap()));
}

fn dequantize_tensors(c: &mut Criterion) {
    let f = GgufFile::open(model()).unwrap();
    let mut g = c.benchmark_group("dequantize");
    for name in ["blk.0.ffn_up.weight", "token_embd.weight"] {
        let t = f.tensor(name).unwrap();
        let mut out = vec![0f32; t.n_elements() as usize];
        g.throughput(Throughput::Elements(t.n_elements()));
        g.bench_function(format!("reference/{}", t.ggml_type), |b| {
            b.iter(|| dequantize_reference(t.ggml_type, f.tensor_data(t), &mut out).unwrap())
        });
        g.bench_function(format!("dispatched ({})/{}", simd::selected(), t.ggml_type), |b| {
            b.iter(|| dequantize(t.ggml_type, f.tensor_data(t), &mut out).unwrap())
        });
        for (name, k) in simd::all_kernels(t.ggml_type) {
            g.bench_function(format!("{name}/{}", t.ggml_type), |b| b.iter(|| k(f.tensor_data(t), &mut out)));
        }
    }
    g.finish();
}

/// Every format with a SIMD kernel: a 256 × 1536 matrix (values in ±1) quantized by
/// ggml's quantizer, dequantized by the reference and by the dispatched kernel.
fn dequantize_formats(c: &mut Criterion) {
    let (rows, cols) = (256, 1536);
    let x: Vec<f32> = (0..rows * cols).map(|i| ((i * 7919) % 2001) as f32 / 1000.0 - 1.0).collect();
    let mut g = c.benchmark_group("dequantize_formats");
    g.throughput(Throughput::Elements((rows * cols) as u64));
    for t in GgmlType::ALL.into_iter().filter(|t| simd::kernel(*t).is_some()) {
        let bytes = quantize_ggml(t, &x, cols).unwrap();
        let mut out = vec![0f32; rows * cols];
        g.bench_function(format!("reference/{t}"), |b| b.iter(|| dequantize_reference(t, &bytes, &mut out).unwrap()));
        g.bench_function(format!("{}/{t}", simd::selected()), |b| b.iter(|| dequantize(t, &bytes, &mut out).unwrap()));
    }
    g.finish();
}

/// One decoding step's product y = x·Wᵀ (one input row) through the CPU backend for a
/// 1536 × 2048 matrix in each format with a fused/split dot kernel (compare runs with
/// `EDGELORA_SIMD=avx2`, which keeps the f32 kernels and decodes Q4_K by dequantize + GEMM).
fn matvec_formats(c: &mut Criterion) {
    use edgelora::compute::{cpu::Cpu, Backend};
    let (rows, cols) = (1536, 2048);
    let w: Vec<f32> = (0..rows * cols).map(|i| ((i * 7919) % 2001) as f32 / 1000.0 - 1.0).collect();
    let x: Vec<f32> = (0..cols).map(|i| ((i * 104_729) % 2001) as f32 / 1000.0 - 1.0).collect();
    let mut g = c.benchmark_group("matvec_formats");
    g.throughput(Throughput::Elements((rows * cols) as u64));
    for t in [GgmlType::Q4_1, GgmlType::Q8_0, GgmlType::Q4_K, GgmlType::Q6_K] {
        let bytes = quantize_ggml(t, &w, cols).unwrap();
        g.bench_function(format!("{}/{t}", simd::selected()), |b| b.iter(|| Cpu.matmul(t, &bytes, rows, cols, &x, 1).unwrap()));
    }
    g.finish();
}

/// y = x·Wᵀ by input rows (a batch of decoding sequences, a short prompt) through the CPU
/// backend, for the default model's ffn_up shape [1536, 576] in Q4_1 and Q8_0: where the
/// split kernels hand over to the tiled kernel, and the tiled kernel to the GEMM. Set
/// `EDGELORA_SPLIT_ROWS=0|8` to time the split or the tiled kernel at every count, and
/// `RAYON_NUM_THREADS` for the thread count (the figures by `cpu::AVX2_SPLIT_ROWS` and
/// `cpu::TILE_ROWS` come from this shape).
fn matmul_rows(c: &mut Criterion) {
    use edgelora::compute::{cpu::Cpu, Backend};
    let (rows, cols) = (1536, 576);
    let w: Vec<f32> = (0..rows * cols).map(|i| ((i * 7919) % 2001) as f32 / 1000.0 - 1.0).collect();
    let mut g = c.benchmark_group("matmul_rows");
    for t in [GgmlType::Q4_1, GgmlType::Q8_0] {
        let bytes = quantize_ggml(t, &w, cols).unwrap();
        for n_x in [1, 2, 3, 4, 6, 8, 16, 48, 64] {
            let x: Vec<f32> = (0..n_x * cols).map(|i| ((i * 104_729) % 2001) as f32 / 1000.0 - 1.0).collect();
            g.throughput(Throughput::Elements((n_x * rows * cols) as u64));
            g.bench_function(format!("{}/{t}/{n_x} rows", simd::selected()), |b| b.iter(|| Cpu.matmul(t, &bytes, rows, cols, &x, n_x).unwrap()));
        }
    }
    g.finish();
}

criterion_group!(benches, open_header, dequantize_tensors, dequantize_formats, matvec_formats, matmul_rows);
criterion_main!(benches);
