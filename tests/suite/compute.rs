//! Compute backends: the wgpu kernels against the CPU reference. On machines without a
//! GPU, Mesa's software Vulkan (lavapipe) serves; with no adapter at all these tests fail
//! and say what to install.

use edgelora::compute::{cpu::Cpu, gpu::Gpu, Backend, Delta};
use edgelora::gguf::GgmlType;
use edgelora::quant::dequantize_reference;
use half::f16;
use rand::{Rng, SeedableRng};

use crate::common::{max_abs_diff, model_gguf};

fn gpu(limit: u64) -> Gpu {
    match Gpu::with_binding_limit(limit) {
        Ok(g) => {
            eprintln!("GPU adapter: {}", g.adapter());
            g
        }
        Err(e) => panic!("{e}: these tests need a GPU or a software Vulkan driver (apt-get install mesa-vulkan-drivers libvulkan1)"),
    }
}

/// GPU float budget: the shaders compute q·d + m like the reference but a driver may fuse
/// the multiply-add, which changes the last bit: |gpu − ref| ≤ 2⁻²² · max(|ref|, |d|·16 + |m|).
fn within_budget(gpu: &[f32], reference: &[f32]) -> Result<(), String> {
    let scale = reference.iter().fold(0f32, |a, x| a.max(x.abs())).max(1e-30);
    for (i, (a, b)) in gpu.iter().zip(reference).enumerate() {
        if (a - b).abs() > scale * 2f32.powi(-22) {
            return Err(format!("element {i}: gpu {a} vs reference {b}"));
        }
    }
    Ok(())
}

/// The formats that must have a GPU dequantize/matmul kernel: every type the CPU
/// dequantizes but F32 (which needs none).
fn gpu_types() -> Vec<GgmlType> {
    GgmlType::ALL.into_iter().filter(|t| edgelora::quant::can_dequantize(*t) && *t != GgmlType::F32).collect()
}

/// Byte offsets of the f16 scales (d, and m/dmin) inside one block of `t`.
fn f16_fields(t: GgmlType) -> &'static [usize] {
    match t {
        GgmlType::Q4_1 | GgmlType::Q5_1 | GgmlType::Q4_K | GgmlType::Q5_K => &[0, 2],
        GgmlType::Q2_K => &[80, 82],
        GgmlType::Q3_K => &[108],
        GgmlType::Q6_K => &[208],
        _ => &[0],
    }
}

/// `n_blocks` blocks of random bits with finite scales in [−1, 1) (plain float formats:
/// random finite values).
fn random_blocks(t: GgmlType, n_blocks: usize, rng: &mut impl Rng) -> Vec<u8> {
    match t {
        GgmlType::F16 => return (0..n_blocks).flat_map(|_| f16::from_f32(rng.random_range(-1.0f32..1.0)).to_le_bytes()).collect(),
        GgmlType::BF16 => return (0..n_blocks).flat_map(|_| half::bf16::from_f32(rng.random_range(-1.0f32..1.0)).to_le_bytes()).collect(),
        _ => {}
    }
    let ts = t.type_size() as usize;
    let mut v = vec![0u8; n_blocks * ts];
    rng.fill(&mut v[..]);
    for b in v.chunks_exact_mut(ts) {
        for &o in f16_fields(t) {
            b[o..o + 2].copy_from_slice(&f16::from_f32(rng.random_range(-1.0f32..1.0)).to_le_bytes());
        }
    }
    v
}

#[test]
fn gpu_dequantize_matches_the_reference() {
    // A 4 KiB binding limit forces many chunks through the splitting code.
    for limit in [u64::MAX, 4096] {
        let g = gpu(limit);
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(5);
        for t in gpu_types() {
            let n_blocks = 777 * 32 / t.block_size() as usize + 1;
            let bytes = random_blocks(t, n_blocks, &mut rng);
            let n = n_blocks * t.block_size() as usize;
            let (mut a, mut b) = (vec![0f32; n], vec![0f32; n]);
            g.dequantize(t, &bytes, &mut a).unwrap();
            dequantize_reference(t, &bytes, &mut b).unwrap();
            within_budget(&a, &b).unwrap_or_else(|e| panic!("{t} (binding limit {limit}): {e}"));
        }
    }
    // A real tensor of the default model.
    let f = model_gguf();
    let t = f.tensor("blk.5.attn_v.weight").unwrap();
    let n = t.n_elements() as usize;
    let (mut a, mut b) = (vec![0f32; n], vec![0f32; n]);
    gpu(u64::MAX).dequantize(t.ggml_type, f.tensor_data(t), &mut a).unwrap();
    dequantize_reference(t.ggml_type, f.tensor_data(t), &mut b).unwrap();
    within_budget(&a, &b).unwrap();
}

#[test]
fn gpu_lora_delta_matches_the_cpu() {
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(6);
    let (n_out, n_in, rank) = (96, 160, 8);
    // f16-representable factors: the GPU reads A and B as f16.
    let mut half = |n: usize| (0..n).map(|_| f16::from_f32(rng.random_range(-0.5f32..0.5)).to_f32()).collect::<Vec<f32>>();
    let (a, b) = (half(rank * n_in), half(n_out * rank));
    let (a2, b2) = (half(4 * n_in), half(n_out * 4));
    let base = half(n_out * n_in);
    let deltas = [Delta { rank, a: &a, b: &b, scale: 0.7 }, Delta { rank: 4, a: &a2, b: &b2, scale: -1.3 }];
    let mut want = base.clone();
    Cpu.lora_delta(&mut want, n_out, n_in, &deltas).unwrap();
    // Both shader variants: native f16 (where the adapter has SHADER_F16) and packed u32.
    let variants: Vec<Gpu> = vec![gpu(u64::MAX), gpu(2048), Gpu::open(u64::MAX, false).unwrap()];
    eprintln!("SHADER_F16 in use: {}", variants[0].uses_f16());
    assert!(!variants[2].uses_f16());
    for (k, g) in variants.iter().enumerate() {
        let limit = k;
        let mut got = base.clone();
        g.lora_delta(&mut got, n_out, n_in, &deltas).unwrap();
        // Sums in another order: f32 rounding only (|Σ| ≤ rank·0.25·2 here).
        let worst = got.iter().zip(&want).map(|(x, y)| (x - y).abs()).fold(0f32, f32::max);
        assert!(worst < 1e-5, "variant {limit}: max |gpu − cpu| = {worst}");
    }
    // Shapes are checked, not trusted.
    let mut wrong = vec![0f32; 10];
    assert!(gpu(u64::MAX).lora_delta(&mut wrong, n_out, n_in, &deltas).is_err());
}

#[test]
fn gpu_rejects_types_without_a_kernel() {
    let mut out = vec![0f32; 256];
    let e = gpu(u64::MAX).dequantize(GgmlType::IQ4_NL, &[0u8; 144], &mut out).unwrap_err();
    assert!(e.to_string().contains("iq4_nl"), "{e}");
}

#[test]
fn matmul_on_cpu_and_gpu_matches_an_f64_reference() {
    let f = model_gguf();
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(8);
    let g = gpu(u64::MAX);
    let small = gpu(16384); // forces chunks of output rows
    for (name, n_x) in [("blk.2.attn_q.weight", 3), ("blk.2.ffn_down.weight", 2)] {
        let t = f.tensor(name).unwrap();
        let (n_in, n_out) = (t.shape[0] as usize, t.shape[1] as usize);
        let x: Vec<f32> = (0..n_x * n_in).map(|_| rng.random_range(-1.0f32..1.0)).collect();
        let mut w = vec![0f32; n_in * n_out];
        dequantize_reference(t.ggml_type, f.tensor_data(t), &mut w).unwrap();
        let want: Vec<f64> = (0..n_x * n_out)
            .map(|k| {
                let (r, o) = (k / n_out, k % n_out);
                (0..n_in).map(|i| f64::from(x[r * n_in + i]) * f64::from(w[o * n_in + i])).sum()
            })
            .collect();
        let scale = want.iter().fold(0f64, |m, v| m.max(v.abs()));
        for (label, y) in [
            ("cpu", Cpu.matmul(t.ggml_type, f.tensor_data(t), n_out, n_in, &x, n_x).unwrap()),
            ("gpu", g.matmul(t.ggml_type, f.tensor_data(t), n_out, n_in, &x, n_x).unwrap()),
            ("gpu chunked", small.matmul(t.ggml_type, f.tensor_data(t), n_out, n_in, &x, n_x).unwrap()),
        ] {
            let worst = y.iter().zip(&want).map(|(a, b)| (f64::from(*a) - b).abs()).fold(0f64, f64::max);
            assert!(worst < 1e-4 * scale, "{name} {label}: max error {worst} (scale {scale})");
        }
    }
    assert!(Cpu.matmul(GgmlType::Q4_1, &[0u8; 20], 2, 32, &[0.0; 32], 1).is_err(), "shape mismatch accepted");
}

#[test]
fn gpu_matmul_reads_every_block_format() {
    // Random blocks of each format as W [5, 512]; y = x·Wᵀ against an f64 sum over the
    // reference dequantization, error bounded relative to Σ|x·w|.
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(10);
    let g = gpu(u64::MAX);
    let (n_out, n_in, n_x) = (5, 512, 2);
    for t in gpu_types() {
        let bytes = random_blocks(t, n_out * n_in / t.block_size() as usize, &mut rng);
        let mut w = vec![0f32; n_out * n_in];
        dequantize_reference(t, &bytes, &mut w).unwrap();
        let x: Vec<f32> = (0..n_x * n_in).map(|_| rng.random_range(-1.0f32..1.0)).collect();
        let y = g.matmul(t, &bytes, n_out, n_in, &x, n_x).unwrap();
        for (k, got) in y.iter().enumerate() {
            let (r, o) = (k / n_out, k % n_out);
            let terms = (0..n_in).map(|i| f64::from(x[r * n_in + i]) * f64::from(w[o * n_in + i]));
            let (want, mag): (f64, f64) = terms.fold((0.0, 0.0), |(s, m), v| (s + v, m + v.abs()));
            assert!((f64::from(*got) - want).abs() <= 1e-5 * mag.max(1e-30), "{t} y[{r}, {o}]: gpu {got} vs {want}");
        }
    }
}

#[test]
fn gemv_short_equals_row_dot_products() {
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(14);
    for (n_out, r) in [(1, 8), (7, 16), (576, 16), (1537, 32), (19, 64), (5, 12), (9, 72), (3, 0)] {
        let m: Vec<f32> = (0..n_out * r).map(|_| rng.random_range(-1.0f32..1.0)).collect();
        let v: Vec<f32> = (0..r).map(|_| rng.random_range(-1.0f32..1.0)).collect();
        let mut y: Vec<f32> = (0..n_out).map(|_| rng.random_range(-1.0f32..1.0)).collect();
        let want: Vec<f64> = y.iter().enumerate().map(|(o, y0)| f64::from(*y0) + (0..r).map(|k| f64::from(m[o * r + k]) * f64::from(v[k])).sum::<f64>()).collect();
        edgelora::compute::cpu::gemv_short(&m, &v, &mut y);
        for (o, (a, b)) in y.iter().zip(&want).enumerate() {
            assert!((f64::from(*a) - b).abs() < 1e-5, "[{n_out}, {r}] output {o}: {a} vs {b}");
        }
    }
}

#[test]
fn simd_dot_equals_the_scalar_twin_up_to_rounding() {
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(9);
    for n in [0, 1, 7, 31, 32, 33, 576, 1537] {
        let a: Vec<f32> = (0..n).map(|_| rng.random_range(-1.0f32..1.0)).collect();
        let b: Vec<f32> = (0..n).map(|_| rng.random_range(-1.0f32..1.0)).collect();
        let exact: f64 = a.iter().zip(&b).map(|(x, y)| f64::from(*x) * f64::from(*y)).sum();
        let (fast, slow) = (edgelora::compute::cpu::dot(&a, &b), edgelora::compute::cpu::dot_scalar(&a, &b));
        let bound = 1e-5 * (n as f64).max(1.0);
        assert!((f64::from(fast) - exact).abs() < bound && (f64::from(slow) - exact).abs() < bound, "n {n}: {fast} {slow} {exact}");
    }
}


#[test]
fn tiled_few_row_products_match_an_f64_reference_in_every_format() {
    // Cpu::matmul with 3..=48 input rows takes the tiled kernel (W decoded a tile at a
    // time; Q4_1/Q8_0 up to SPLIT_ROWS rows take the per-row integer kernels where the
    // CPU has them, held to the same reference): odd output counts (a short last tile),
    // row counts off the 4-row blocking.
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(21);
    let (n_out, n_in) = (37, 512);
    for t in [GgmlType::Q4_0, GgmlType::Q4_1, GgmlType::Q8_0, GgmlType::Q4_K, GgmlType::Q6_K, GgmlType::F16] {
        let bytes = random_blocks(t, n_out * n_in / t.block_size() as usize, &mut rng);
        let mut w = vec![0f32; n_out * n_in];
        dequantize_reference(t, &bytes, &mut w).unwrap();
        for n_x in [3, 4, 5, 17, 48] {
            assert!(edgelora::compute::cpu::TILE_ROWS.contains(&n_x));
            let x: Vec<f32> = (0..n_x * n_in).map(|_| rng.random_range(-1.0f32..1.0)).collect();
            let y = Cpu.matmul(t, &bytes, n_out, n_in, &x, n_x).unwrap();
            assert_eq!(y.len(), n_x * n_out);
            for (k, got) in y.iter().enumerate() {
                let (r, o) = (k / n_out, k % n_out);
                let terms = (0..n_in).map(|i| f64::from(x[r * n_in + i]) * f64::from(w[o * n_in + i]));
                let (want, mag): (f64, f64) = terms.fold((0.0, 0.0), |(s, m), v| (s + v, m + v.abs()));
                assert!((f64::from(*got) - want).abs() <= 1e-5 * mag.max(1e-30), "{t} n_x {n_x} y[{r}, {o}]: {got} vs {want}");
            }
        }
    }
    // Every tile kernel this CPU has (the scalar twin, AVX2, AVX-512) on one tile: TILE
    // rows of W × 8 rows of x (two of the kernels' 4-row blocks), k past one vector.
    let k = 80;
    let tile = edgelora::compute::tile::TILE;
    let w: Vec<f32> = (0..tile * k).map(|_| rng.random_range(-1.0f32..1.0)).collect();
    let x: Vec<f32> = (0..8 * k).map(|_| rng.random_range(-1.0f32..1.0)).collect();
    let kernels = edgelora::compute::tile::all_kernels();
    assert!(kernels.len() >= 2 || !cfg!(target_arch = "x86_64"), "an x86_64 CI host has AVX2: {:?}", kernels.iter().map(|k| k.0).collect::<Vec<_>>());
    for (name, kernel) in kernels {
        let mut out = vec![f32::NAN; 8 * tile];
        kernel(&w, &x, k, &mut out);
        for r in 0..8 {
            for o in 0..tile {
                let want: f64 = (0..k).map(|i| f64::from(x[r * k + i]) * f64::from(w[o * k + i])).sum();
                assert!((f64::from(out[r * tile + o]) - want).abs() < 1e-4, "{name} tile [{r}, {o}]: {} vs {want}", out[r * tile + o]);
            }
        }
    }
}

#[test]
fn shared_input_matmuls_equal_one_call_per_weight() {
    use edgelora::compute::MatrixRef;
    let f = model_gguf();
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(9);
    let w = |name: &str| {
        let t = f.tensor(name).unwrap();
        (MatrixRef { t: t.ggml_type, bytes: f.tensor_data(t), n_out: t.shape[1] as usize }, t.shape[0] as usize)
    };
    // q/k/v (576 → 576, 192, 192) and gate/up (576 → 1536 each) of the default Q4_1 model,
    // plus the Q8_0 embedding (the tied output head) beside a Q4_1 weight (mixed formats in one pass).
    let sets = [vec![w("blk.3.attn_q.weight"), w("blk.3.attn_k.weight"), w("blk.3.attn_v.weight")], vec![w("blk.3.ffn_gate.weight"), w("blk.3.ffn_up.weight")], vec![w("blk.3.attn_q.weight"), w("token_embd.weight")]];
    let (n_in_of_head, _) = w("token_embd.weight");
    assert_eq!(n_in_of_head.t, GgmlType::Q8_0, "the head is the Q8_0 weight this test mixes in");
    for set in &sets {
        let n_in = set[0].1;
        let ws: Vec<MatrixRef> = set.iter().map(|(m, _)| *m).collect();
        // One row (the shared pass) and three rows (one call per weight inside).
        for n_x in [1, 3] {
            let x: Vec<f32> = (0..n_x * n_in).map(|_| rng.random_range(-1.0f32..1.0)).collect();
            let shared = Cpu.matmul_shared(&ws, n_in, &x, n_x).unwrap();
            assert_eq!(shared.len(), ws.len());
            for (i, m) in ws.iter().enumerate() {
                // The same kernels on the same row groups: equal to the bit.
                assert_eq!(shared[i], Cpu.matmul(m.t, m.bytes, m.n_out, n_in, &x, n_x).unwrap(), "weight {i} of {} at {n_x} rows", ws.len());
            }
        }
    }
    // Up to split_rows() input rows, each row's products are the ones it gets alone (the
    // per-row integer kernels), in both formats; beyond, the tiled kernel (rounding only).
    for (m, n_in) in [w("blk.3.ffn_up.weight"), w("token_embd.weight")] {
        let rows = edgelora::compute::cpu::split_rows();
        let x: Vec<f32> = (0..(rows + 1) * n_in).map(|_| rng.random_range(-1.0f32..1.0)).collect();
        let alone: Vec<Vec<f32>> = x.chunks_exact(n_in).map(|r| Cpu.matmul(m.t, m.bytes, m.n_out, n_in, r, 1).unwrap()).collect();
        // (Where the CPU has the four-row kernels: AVX512-VNNI or AVX2.)
        for n_x in (2..=rows).filter(|_| edgelora::quant::simd::split_dot4_kernel(m.t).is_some()) {
            let y = Cpu.matmul(m.t, m.bytes, m.n_out, n_in, &x[..n_x * n_in], n_x).unwrap();
            for (r, yr) in y.chunks_exact(m.n_out).enumerate() {
                assert!(yr == alone[r].as_slice(), "{} at {n_x} rows: row {r} differs from its solo product", m.t);
            }
        }
        // No rows: no products (and no division by the row count).
        assert!(Cpu.matmul(m.t, m.bytes, m.n_out, n_in, &[], 0).unwrap().is_empty());
        let y = Cpu.matmul(m.t, m.bytes, m.n_out, n_in, &x, rows + 1).unwrap();
        let d = y.chunks_exact(m.n_out).zip(&alone).map(|(a, b)| max_abs_diff(a, b)).fold(0f32, f32::max);
        assert!(d < 1e-2, "{} at {} rows: {d}", m.t, rows + 1);
    }
    // Shapes are checked, not trusted: a weight one row short.
    let (q, n_in) = w("blk.3.attn_q.weight");
    let (k, _) = w("blk.3.attn_k.weight");
    let short = MatrixRef { n_out: k.n_out + 1, ..k };
    let e = Cpu.matmul_shared(&[q, short], n_in, &vec![0.5; n_in], 1).unwrap_err();
    assert!(e.to_string().contains("bytes for [193, 576]"), "{e}");
}
