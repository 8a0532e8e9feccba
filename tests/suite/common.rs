use std::path::{Path, PathBuf};
use std::sync::OnceLock;

#[cfg(feature = "llama")]
use edgelora::engine::{Runtime, RuntimeOptions};
use edgelora::gguf::{GgmlType, GgufFile, GgufWriter, MetaValue, TensorSpec};
use rand::{Rng, SeedableRng};

pub const MODEL_FILE: &str = "SmolLM2-135M-Instruct.Q4_1.gguf";

/// The default model; a missing file fails the test with the command that fetches it.
pub fn model_path() -> PathBuf {
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("models").join(MODEL_FILE);
    assert!(p.exists(), "the default model {} is missing: run `models/fetch` first", p.display());
    p
}

pub fn model_gguf() -> &'static GgufFile {
    static G: OnceLock<GgufFile> = OnceLock::new();
    G.get_or_init(|| GgufFile::open(model_path()).expect("default model parses"))
}

/// The default model dequantized to F32 by edgelora (made once per test run). llama.cpp
/// runs an F32 model without quantizing activations, so results there are stable to
/// float rounding; on Q4_1 (activations rounded to Q8_1) a 1e-5 relative change in one
/// delta moved logits by 0.3 here.
pub fn f32_model_path() -> PathBuf {
    static P: OnceLock<PathBuf> = OnceLock::new();
    P.get_or_init(|| {
        let p = Path::new(env!("CARGO_TARGET_TMPDIR")).join("SmolLM2-135M-Instruct.F32.gguf");
        edgelora::convert::dequantize_model(model_gguf(), &p).expect("dequantize the default model");
        p
    })
    .clone()
}

/// A runtime on the F32 model with an F32 KV cache and no flash attention (whose CPU
/// kernel rounds Q to F16): nothing is rounded below f32.
#[cfg(feature = "llama")]
pub fn f32_runtime() -> Runtime {
    let opts = RuntimeOptions { threads: 1, n_ctx: 1024, f32_kv_cache: true, flash_attention: Some(false), ..RuntimeOptions::default() };
    Runtime::load(f32_model_path(), opts).expect("F32 model loads")
}

/// A runtime on the default model with one thread (tests run in parallel on few cores).
#[cfg(feature = "llama")]
pub fn runtime() -> Runtime {
    let opts = RuntimeOptions { threads: 1, n_ctx: 1024, ..RuntimeOptions::default() };
    Runtime::load(model_path(), opts).expect("default model loads")
}

/// A fresh temporary directory for a test's files.
pub fn tmpdir() -> tempfile::TempDir {
    tempfile::tempdir().expect("temp dir")
}

pub fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max)
}

/// KL(P‖Q) between the softmax distributions of two logit vectors, in f64.
pub fn kl(p: &[f32], q: &[f32]) -> f64 {
    let lse = |l: &[f32]| {
        let m = l.iter().fold(f32::NEG_INFINITY, |a, &b| a.max(b)) as f64;
        m + l.iter().map(|&x| (x as f64 - m).exp()).sum::<f64>().ln()
    };
    let (a, b) = (lse(p), lse(q));
    p.iter().zip(q).map(|(&x, &y)| ((x as f64 - a).exp()) * ((x as f64 - a) - (y as f64 - b))).sum()
}

/// A tiny random `llama` (or `qwen2`, with q/k/v biases) model as F32 GGUF.
pub fn tiny_model(path: &std::path::Path, arch: &str, seed: u64) -> GgufFile {
    tiny_model_with_rope(path, arch, seed, None, None)
}

/// As [`tiny_model`], with RoPE scaling: a `rope_freqs.weight` tensor (head_dim/2 = 2
/// divisors) and/or linear scaling metadata.
pub fn tiny_model_with_rope(path: &std::path::Path, arch: &str, seed: u64, freqs: Option<[f32; 2]>, linear: Option<f32>) -> GgufFile {
    let (n_layer, d, n_head, n_kv, ff, vocab) = (2usize, 16usize, 4usize, 2usize, 24usize, 40usize);
    let kv = d / n_head * n_kv;
    let key = |k: &str| format!("{arch}.{k}");
    let meta = vec![
        ("general.architecture".to_string(), MetaValue::String(arch.into())),
        ("general.name".to_string(), MetaValue::String(format!("tiny-{arch}"))),
        (key("block_count"), MetaValue::U32(n_layer as u32)),
        (key("embedding_length"), MetaValue::U32(d as u32)),
        (key("attention.head_count"), MetaValue::U32(n_head as u32)),
        (key("attention.head_count_kv"), MetaValue::U32(n_kv as u32)),
        (key("feed_forward_length"), MetaValue::U32(ff as u32)),
        (key("context_length"), MetaValue::U32(64)),
        (key("attention.layer_norm_rms_epsilon"), MetaValue::F32(1e-5)),
        (key("rope.freq_base"), MetaValue::F32(1000.0)),
    ];
    let mut meta = meta;
    if let Some(f) = linear {
        meta.push((key("rope.scaling.type"), MetaValue::String("linear".into())));
        meta.push((key("rope.scaling.factor"), MetaValue::F32(f)));
    }
    let mut tensors: Vec<(String, Vec<u64>)> = vec![("token_embd.weight".into(), vec![d as u64, vocab as u64]), ("output_norm.weight".into(), vec![d as u64])];
    for i in 0..n_layer {
        let m = |s: &str, a: usize, b: usize| (format!("blk.{i}.{s}"), vec![a as u64, b as u64]);
        tensors.extend([m("attn_q.weight", d, d), m("attn_k.weight", d, kv), m("attn_v.weight", d, kv), m("attn_output.weight", d, d), m("ffn_gate.weight", d, ff), m("ffn_up.weight", d, ff), m("ffn_down.weight", ff, d)]);
        tensors.push((format!("blk.{i}.attn_norm.weight"), vec![d as u64]));
        tensors.push((format!("blk.{i}.ffn_norm.weight"), vec![d as u64]));
        if arch == "qwen2" {
            tensors.push((format!("blk.{i}.attn_q.bias"), vec![d as u64]));
            tensors.push((format!("blk.{i}.attn_k.bias"), vec![kv as u64]));
            tensors.push((format!("blk.{i}.attn_v.bias"), vec![kv as u64]));
        }
    }
    if freqs.is_some() {
        tensors.push(("rope_freqs.weight".into(), vec![(d / n_head / 2) as u64]));
    }
    let specs: Vec<TensorSpec> = tensors.iter().map(|(n, s)| TensorSpec::new(n, s, GgmlType::F32)).collect();
    let mut w = GgufWriter::create(path, &meta, &specs).unwrap();
    let mut r = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    for (name, shape) in &tensors {
        if name == "rope_freqs.weight" {
            w.write_tensor(name, bytemuck::cast_slice(&freqs.unwrap())).unwrap();
            continue;
        }
        let n: u64 = shape.iter().product();
        let vals: Vec<f32> = (0..n).map(|_| if name.contains("norm") { r.random_range(0.8..1.2) } else { r.random_range(-0.5..0.5) }).collect();
        w.write_tensor(name, bytemuck::cast_slice(&vals)).unwrap();
    }
    w.finish().unwrap();
    GgufFile::open(path).unwrap()
}
