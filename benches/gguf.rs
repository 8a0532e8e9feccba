//! GGUF parsing and dequantization throughput on the default model (scalar reference vs
//! the SIMD kernel the CPU dispatches to). `cargo bench --bench gguf` (needs models/fetch).

use std::path::Path;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use edgelora::gguf::GgufFile;
use edgelora::quant::{dequantize, dequantize_reference, simd};

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

criterion_group!(benches, open_header, dequantize_tensors);
criterion_main!(benches);
