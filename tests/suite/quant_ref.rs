//! Our port of ggml's reference quantizers (`quant::ggml_ref`) against ggml itself
//! (`ggml_quantize_chunk` without an importance matrix), byte for byte.
#![cfg(feature = "llama")]

use edgelora::gguf::GgmlType;
use edgelora::quant::ggml_ref::{quantize_rows, supports};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

const TYPES: [GgmlType; 13] = {
    use GgmlType::*;
    [F32, F16, BF16, Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q2_K, Q3_K, Q4_K, Q5_K, Q6_K]
};

fn ggml(t: GgmlType, src: &[f32], n_per_row: usize) -> Vec<u8> {
    let mut dst = vec![0u8; t.bytes_for(src.len() as u64).unwrap() as usize];
    let n_rows = (src.len() / n_per_row) as i64;
    // SAFETY: `src` holds n_rows whole rows and `dst` the bytes ggml writes for them; no
    // importance matrix, which none of these types requires.
    let written = unsafe {
        llama_cpp_sys_2::ggml_quantize_chunk(t as _, src.as_ptr(), dst.as_mut_ptr().cast(), 0, n_rows, n_per_row as i64, std::ptr::null())
    };
    assert_eq!(written, dst.len(), "{t}");
    dst
}

fn ours(t: GgmlType, src: &[f32], n_per_row: usize) -> Vec<u8> {
    let mut dst = vec![0u8; t.bytes_for(src.len() as u64).unwrap() as usize];
    assert!(quantize_rows(t, src, n_per_row, &mut dst), "{t}: refused");
    dst
}

/// Asserts our bytes are ggml's, naming the first difference.
fn assert_same(t: GgmlType, kind: &str, src: &[f32], n_per_row: usize) {
    let (a, b) = (ours(t, src, n_per_row), ggml(t, src, n_per_row));
    if let Some(off) = a.iter().zip(&b).position(|(x, y)| x != y) {
        let size = t.type_size() as usize;
        let block = off / size;
        let n = t.block_size() as usize;
        panic!(
            "{t} on {kind}: first differing byte {off} (block {block}, byte {} of {size}): ours {:#04x}, ggml {:#04x}; block input starts {:?}",
            off % size,
            a[off],
            b[off],
            &src[block * n..(block * n + 8).min(src.len())]
        );
    }
}

/// A standard normal sample (Box–Muller).
fn normal(rng: &mut ChaCha8Rng) -> f32 {
    let u1 = 1.0 - rng.random::<f64>();
    let u2 = rng.random::<f64>();
    ((-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()) as f32
}

/// Named inputs of `rows` rows of `n` values each.
fn data_kinds(rows: usize, n: usize) -> Vec<(String, Vec<f32>)> {
    let mut rng = ChaCha8Rng::seed_from_u64(0x9a11);
    let len = rows * n;
    let mut kinds = Vec::new();
    for scale in [1e-3f32, 1.0, 100.0] {
        kinds.push((format!("normal ×{scale}"), (0..len).map(|_| normal(&mut rng) * scale).collect()));
    }
    // Outliers: one value in ~50 is 20–80× larger.
    kinds.push(("outliers".into(), (0..len).map(|_| normal(&mut rng) * if rng.random_range(0..50) == 0 { rng.random_range(20.0..80.0) } else { 1.0 }).collect()));
    kinds.push(("all zero".into(), vec![0.0; len]));
    kinds.push(("constant rows".into(), (0..len).map(|i| [0.37f32, -2.5, 1e-6, 3.0][(i / n) % 4]).collect()));
    // Exact halves and quarters (ties in x/d + ½ and in nearest_int), and small integers.
    kinds.push(("halves".into(), (0..len).map(|_| rng.random_range(-16i32..=16) as f32 * 0.5).collect()));
    kinds.push(("quarters".into(), (0..len).map(|_| rng.random_range(-32i32..=32) as f32 * 0.25).collect()));
    kinds.push(("small integers".into(), (0..len).map(|_| rng.random_range(-8i32..=8) as f32).collect()));
    // Tiny values: f16's subnormal range (below 6.1e-5) and under its smallest (6e-8).
    for scale in [1e-5f32, 1e-7, 1e-9] {
        kinds.push((format!("tiny ×{scale}"), (0..len).map(|_| normal(&mut rng) * scale).collect()));
    }
    // Sparse: mostly zero, so many groups (16 or 32 values) are all zero in a live block.
    kinds.push(("sparse".into(), (0..len).map(|_| if rng.random_range(0..40) == 0 { normal(&mut rng) } else { 0.0 }).collect()));
    // One sign only, and groups of very different magnitudes within a super-block.
    kinds.push(("positive".into(), (0..len).map(|_| rng.random_range(0.0f32..1.0)).collect()));
    kinds.push(("negative".into(), (0..len).map(|_| -rng.random_range(0.1f32..2.0)).collect()));
    kinds.push(("mixed magnitudes".into(), (0..len).map(|i| normal(&mut rng) * 10f32.powi((i / 16 % 7) as i32 - 3)).collect()));
    kinds
}

#[test]
fn reference_quantizers_match_ggml_byte_for_byte() {
    let (rows, n) = (256, 512);
    for (kind, x) in data_kinds(rows, n) {
        for t in TYPES {
            assert!(supports(t));
            assert_same(t, &kind, &x, n);
        }
    }
    // Rows of 256 (one super-block each) too.
    let x: Vec<f32> = {
        let mut rng = ChaCha8Rng::seed_from_u64(7);
        (0..300 * 256).map(|_| normal(&mut rng)).collect()
    };
    for t in TYPES {
        assert_same(t, "normal, rows of 256", &x, 256);
    }
}

#[test]
fn reference_conversions_match_ggml_on_edge_values() {
    // f16/bf16 rounding boundaries, overflow, subnormals, and non-finite values.
    let mut x = vec![
        0.0f32, -0.0, 1.0, 65504.0, 65519.0, 65520.0, -65520.0, 1e10, 6.1035156e-5, 6.0e-8, 2.9802322e-8, 2.98e-8, 3.0e-8, 1e-45,
        f32::MIN_POSITIVE, f32::MAX, f32::INFINITY, f32::NEG_INFINITY, f32::NAN, -f32::NAN, f32::from_bits(0x7f80_0001), f32::from_bits(0xffc1_2345),
    ];
    // Exact ties between neighbouring f16 and bf16 values.
    x.extend((0..64).map(|i| f32::from_bits(0x3f80_1000 + (i << 13))));
    x.extend((0..64).map(|i| f32::from_bits(0x3f80_8000 + (i << 16))));
    let mut rng = ChaCha8Rng::seed_from_u64(3);
    x.extend((0..4096).map(|_| f32::from_bits(rng.random())));
    for t in [GgmlType::F32, GgmlType::F16, GgmlType::BF16] {
        assert_same(t, "edge values", &x, x.len());
    }
}

#[test]
fn reference_quantizers_survive_non_finite_input() {
    let mut rng = ChaCha8Rng::seed_from_u64(5);
    let mut x: Vec<f32> = (0..16 * 256).map(|_| normal(&mut rng)).collect();
    for (i, v) in [f32::NAN, f32::INFINITY, f32::NEG_INFINITY, f32::MAX, f32::MIN_POSITIVE / 4.0].into_iter().enumerate() {
        x[i * 700 + 3] = v;
    }
    x[3000..3256].fill(f32::NAN);
    for t in TYPES {
        let _ = ours(t, &x, 256);
    }
}

#[test]
fn quantize_rows_refuses_what_it_cannot_write() {
    let x = vec![0.5f32; 512];
    let mut dst = vec![0u8; GgmlType::Q4_K.bytes_for(512).unwrap() as usize];
    assert!(!quantize_rows(GgmlType::Q8_1, &x, 512, &mut vec![0u8; 2048]), "unsupported type");
    assert!(!supports(GgmlType::IQ4_NL));
    assert!(!quantize_rows(GgmlType::Q4_K, &x, 128, &mut dst), "row not a whole number of blocks");
    assert!(!quantize_rows(GgmlType::Q4_K, &x, 0, &mut dst), "empty rows");
    assert!(!quantize_rows(GgmlType::Q4_K, &x, 384, &mut dst), "rows do not tile src");
    assert!(!quantize_rows(GgmlType::Q4_K, &x, 512, &mut dst[1..]), "dst too short");
    assert!(quantize_rows(GgmlType::Q4_K, &x, 512, &mut dst));
    // Unaligned output is fine (the blocks are copied out as bytes).
    let mut buf = vec![0u8; dst.len() + 1];
    assert!(quantize_rows(GgmlType::Q4_K, &x, 512, &mut buf[1..]));
    assert_eq!(&buf[1..], &dst[..]);
}
