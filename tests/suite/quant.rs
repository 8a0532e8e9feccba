//! Dequantization against ggml's own `to_float`, bit for bit.

use edgelora::gguf::GgmlType;
use edgelora::quant::{can_dequantize, dequantize, dequantize_reference, simd, QuantError};
use half::f16;
use rand::{Rng, SeedableRng};

use crate::common::model_gguf;

#[cfg(feature = "llama")]
fn ggml_to_float(t: GgmlType, bytes: &[u8], n: usize) -> Vec<f32> {
    let mut out = vec![0f32; n];
    // SAFETY: the traits table is static; `to_float` reads whole blocks of `t` from
    // `bytes` (sized for n elements, checked by the caller) and writes n floats.
    unsafe {
        let traits = llama_cpp_sys_2::ggml_get_type_traits(t as _);
        let f = (*traits).to_float.expect("type has to_float");
        f(bytes.as_ptr().cast(), out.as_mut_ptr(), n as i64);
    }
    out
}

/// Random blocks whose f16 scale fields are finite.
fn random_blocks(t: GgmlType, n_blocks: usize, rng: &mut impl Rng) -> Vec<u8> {
    let bs = t.type_size() as usize;
    let mut v = vec![0u8; n_blocks * bs];
    rng.fill(&mut v[..]);
    // Byte offsets of the f16 scale fields, which must be finite.
    let halves: Vec<usize> = match t {
        GgmlType::Q4_0 | GgmlType::Q5_0 | GgmlType::Q8_0 => vec![0],
        GgmlType::Q4_1 | GgmlType::Q5_1 | GgmlType::Q4_K | GgmlType::Q5_K => vec![0, 2],
        GgmlType::Q2_K => vec![80, 82],
        GgmlType::Q3_K => vec![108],
        GgmlType::Q6_K => vec![208],
        GgmlType::F16 => (0..bs).step_by(2).collect(),
        _ => vec![],
    };
    for b in v.chunks_exact_mut(bs) {
        for &o in &halves {
            let x = f16::from_f32(rng.random_range(-2.0f32..2.0));
            b[o..o + 2].copy_from_slice(&x.to_le_bytes());
        }
    }
    if t == GgmlType::BF16 {
        for c in v.chunks_exact_mut(2) {
            c.copy_from_slice(&half::bf16::from_f32(rng.random_range(-1e3f32..1e3)).to_le_bytes());
        }
    }
    if t == GgmlType::F32 {
        for c in v.chunks_exact_mut(4) {
            c.copy_from_slice(&rng.random_range(-1e3f32..1e3).to_le_bytes());
        }
    }
    v
}

#[test]
#[cfg(feature = "llama")]
fn dequantize_matches_ggml_bit_for_bit() {
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(3);
    // F32 has no to_float in ggml (it is the identity); every other supported type does.
    for t in GgmlType::ALL.into_iter().filter(|t| can_dequantize(*t) && *t != GgmlType::F32) {
        let n_blocks = if t.block_size() == 1 { 4096 } else { 257 };
        let bytes = random_blocks(t, n_blocks, &mut rng);
        let n = n_blocks * t.block_size() as usize;
        let mut ours = vec![0f32; n];
        dequantize(t, &bytes, &mut ours).unwrap();
        let theirs = ggml_to_float(t, &bytes, n);
        let bad = ours.iter().zip(&theirs).position(|(a, b)| a.to_bits() != b.to_bits());
        assert_eq!(bad, None, "{t}: first mismatch (ours {:?} vs ggml {:?})", bad.map(|i| ours[i]), bad.map(|i| theirs[i]));
    }
}

#[test]
#[cfg(feature = "llama")]
fn dequantize_the_default_models_tensors_like_ggml() {
    let f = model_gguf();
    for name in ["blk.0.attn_q.weight", "blk.29.ffn_down.weight", "token_embd.weight"] {
        let t = f.tensor(name).unwrap();
        let n = t.n_elements() as usize;
        let mut ours = vec![0f32; n];
        dequantize(t.ggml_type, f.tensor_data(t), &mut ours).unwrap();
        let theirs = ggml_to_float(t.ggml_type, f.tensor_data(t), n);
        assert!(ours.iter().zip(&theirs).all(|(a, b)| a.to_bits() == b.to_bits()), "{name} ({})", t.ggml_type);
    }
}

#[test]
fn dequantize_checks_sizes_and_types() {
    let mut out = vec![0f32; 32];
    assert!(matches!(dequantize(GgmlType::Q4_1, &[0u8; 19], &mut out), Err(QuantError::Size { .. })));
    assert!(matches!(dequantize(GgmlType::Q4_1, &[0u8; 20], &mut out[..31]), Err(QuantError::Size { .. })));
    let mut out = vec![0f32; 256];
    assert_eq!(dequantize(GgmlType::IQ2_XXS, &[0u8; 66], &mut out), Err(QuantError::Unsupported(GgmlType::IQ2_XXS)));
}

#[test]
fn the_f32_model_holds_the_dequantized_weights() {
    let p = crate::common::f32_model_path();
    let f = edgelora::gguf::GgufFile::open(&p).unwrap();
    let q = model_gguf();
    assert_eq!(f.tensors().len(), q.tensors().len());
    assert!(f.tensors().iter().all(|t| t.ggml_type == GgmlType::F32));
    assert_eq!(f.require_u64("general.file_type").unwrap(), 0);
    let t = q.tensor("blk.7.ffn_up.weight").unwrap();
    let mut want = vec![0f32; t.n_elements() as usize];
    dequantize(t.ggml_type, q.tensor_data(t), &mut want).unwrap();
    let (_, got) = f.tensor_bytes("blk.7.ffn_up.weight").unwrap();
    assert_eq!(got, bytemuck::cast_slice::<f32, u8>(&want));
}

#[test]
fn simd_kernels_equal_the_scalar_reference() {
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(11);
    let mut checked = 0;
    for t in GgmlType::ALL.into_iter().filter(|t| can_dequantize(*t) && *t != GgmlType::F32) {
        let bytes = random_blocks(t, 1000, &mut rng);
        let n = 1000 * t.block_size() as usize;
        let (mut fast, mut slow) = (vec![0f32; n], vec![0f32; n]);
        dequantize(t, &bytes, &mut fast).unwrap();
        dequantize_reference(t, &bytes, &mut slow).unwrap();
        assert!(fast.iter().zip(&slow).all(|(a, b)| a.to_bits() == b.to_bits()), "{t}: {} kernel differs", simd::selected());
        // Unaligned input: the same blocks one byte into a buffer.
        let mut shifted = vec![0u8; bytes.len() + 1];
        shifted[1..].copy_from_slice(&bytes);
        dequantize(t, &shifted[1..], &mut fast).unwrap();
        assert!(fast.iter().zip(&slow).all(|(a, b)| a.to_bits() == b.to_bits()), "{t}: unaligned");
        checked += usize::from(simd::kernel(t).is_some());
        // Every kernel set this CPU has (e.g. AVX2 too where AVX-512 is selected).
        for (name, k) in simd::all_kernels(t) {
            let mut out = vec![0f32; n];
            k(&shifted[1..], &mut out);
            assert!(out.iter().zip(&slow).all(|(a, b)| a.to_bits() == b.to_bits()), "{t}: {name} kernel differs");
        }
    }
    eprintln!("dispatch: {} ({checked} SIMD kernels checked)", simd::selected());
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2") && std::env::var_os("EDGELORA_SIMD").is_none() {
        assert_eq!((simd::selected(), checked), ("avx2", 12));
    }
    #[cfg(target_arch = "aarch64")]
    if std::env::var_os("EDGELORA_SIMD").is_none() {
        assert_eq!((simd::selected(), checked), ("neon", 12));
    }
}

#[test]
fn fused_dot_kernels_match_dequantize_then_dot() {
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(12);
    let mut checked = 0;
    for t in [GgmlType::Q4_1, GgmlType::Q8_0] {
        let Some(k) = simd::dot_kernel(t) else { continue };
        let bytes = random_blocks(t, 18, &mut rng);
        let n = 18 * 32;
        let x: Vec<f32> = (0..n).map(|_| rng.random_range(-1.0f32..1.0)).collect();
        let mut w = vec![0f32; n];
        dequantize_reference(t, &bytes, &mut w).unwrap();
        let exact: f64 = w.iter().zip(&x).map(|(a, b)| f64::from(*a) * f64::from(*b)).sum();
        let scale: f64 = w.iter().zip(&x).map(|(a, b)| (f64::from(*a) * f64::from(*b)).abs()).sum();
        let got = f64::from(k(&bytes, &x));
        assert!((got - exact).abs() <= 1e-5 * scale.max(1.0), "{t}: {got} vs {exact}");
        checked += 1;
    }
    eprintln!("fused dot kernels checked: {checked}");
    // The split-input (16-bit x) kernels: the error is the input's rounding, at most
    // max|x_block| / 65278 per value, times |w|, plus float rounding.
    for t in [GgmlType::Q4_1, GgmlType::Q8_0, GgmlType::Q4_K, GgmlType::Q6_K] {
        for (name, k) in simd::all_split_dot_kernels(t) {
        for n_blocks in [1, 7, 18, 48] {
            let mut bytes = random_blocks(t, n_blocks, &mut rng);
            if t == GgmlType::Q8_0 {
                // Codes as ggml's quantizer writes them, −127…127 (the AVX2 kernel's sign
                // trick needs that; see its doc).
                bytes.chunks_exact_mut(34).flat_map(|b| b[2..].iter_mut()).filter(|c| **c == 0x80).for_each(|c| *c = 0x81);
            }
            let n = n_blocks * t.block_size() as usize;
            // Blocks of very different magnitudes, as activations have.
            let x: Vec<f32> = (0..n).map(|i| rng.random_range(-1.0f32..1.0) * [1.0, 30.0, 0.01][(i / 32) % 3]).collect();
            let mut w = vec![0f32; n];
            dequantize_reference(t, &bytes, &mut w).unwrap();
            let exact: f64 = w.iter().zip(&x).map(|(a, b)| f64::from(*a) * f64::from(*b)).sum();
            let bound: f64 = w
                .chunks(32)
                .zip(x.chunks(32))
                .map(|(wb, xb)| {
                    let amax = xb.iter().fold(0f32, |m, v| m.max(v.abs()));
                    wb.iter().zip(xb).map(|(a, b)| f64::from(a.abs()) * (f64::from(amax) / 65278.0 + 1e-6 * f64::from(b.abs()))).sum::<f64>()
                })
                .sum();
            let got = f64::from(k(&bytes, &simd::SplitX::new(&x)));
            assert!((got - exact).abs() <= bound + 1e-6, "{t} {name} ({n_blocks} blocks): {got} vs {exact} (bound {bound})");
            checked += 1;
        }
        }
    }
    // The four-row split kernels: each row as the one-row kernel gives it, up to float
    // rounding (the sums run in another order), odd block counts included.
    for t in [GgmlType::Q4_1, GgmlType::Q8_0] {
        let (Some(four), Some(one)) = (simd::split_dot4_kernel(t), simd::split_dot_kernel(t)) else { continue };
        for n_blocks in [1, 2, 7, 18, 48] {
            let rows = random_blocks(t, 4 * n_blocks, &mut rng);
            let row_bytes = rows.len() / 4;
            let n = n_blocks * 32;
            let x: Vec<f32> = (0..n).map(|i| rng.random_range(-1.0f32..1.0) * [1.0, 30.0, 0.01][(i / 32) % 3]).collect();
            let sx = simd::SplitX::new(&x);
            let mut got = [0f32; 4];
            four(&rows, row_bytes, &sx, &mut got);
            for (r, g) in got.iter().enumerate() {
                let row = &rows[r * row_bytes..(r + 1) * row_bytes];
                let want = one(row, &sx);
                let mut w = vec![0f32; n];
                dequantize_reference(t, row, &mut w).unwrap();
                let scale: f64 = w.iter().zip(&x).map(|(a, b)| (f64::from(*a) * f64::from(*b)).abs()).sum();
                assert!((f64::from(*g) - f64::from(want)).abs() <= 1e-5 * scale.max(1.0), "{t} ({n_blocks} blocks) row {r}: four-row {g} vs one-row {want}");
                // AVX2's four-row kernels run the one-row kernel's operations per row.
                if simd::selected_split() == Some("avx2") {
                    assert_eq!(g.to_bits(), want.to_bits(), "{t} ({n_blocks} blocks) row {r}: AVX2 four-row {g} vs one-row {want}");
                }
            }
            // Several inputs at once (the batch kernel): each input's four values are the
            // ones it gets alone, to the bit, for counts on and off the kernels' groups.
            if let Some(four_n) = simd::split_dot4n_kernel(t) {
                let xs: Vec<simd::SplitX> = (0..5).map(|j| simd::SplitX::new(&x.iter().map(|v| v * (j as f32 - 1.5)).collect::<Vec<f32>>())).collect();
                for m in 1..=5 {
                    let mut outs = vec![[f32::NAN; 4]; m];
                    four_n(&rows, row_bytes, &xs[..m], &mut outs);
                    for (j, o) in outs.iter().enumerate() {
                        let mut alone = [0f32; 4];
                        four(&rows, row_bytes, &xs[j], &mut alone);
                        assert_eq!(o.map(f32::to_bits), alone.map(f32::to_bits), "{t} ({n_blocks} blocks): input {j} of {m}");
                    }
                }
            }
            checked += 1;
        }
    }
    eprintln!("dot kernels checked: {checked}");
}

#[test]
#[cfg(feature = "llama")]
fn q4_1_quantizer_matches_ggmls_reference_byte_for_byte() {
    use edgelora::quant::blocks::BlockQ4_1;
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(13);
    let n_rows = 64;
    let n_per_row = 576;
    let mut x: Vec<f32> = (0..n_rows * n_per_row).map(|_| rng.random_range(-2.0f32..2.0)).collect();
    // Edge cases: a constant block (d = 0), a block of one value repeated but one, huge range.
    x[..32].fill(0.25);
    x[32..64].fill(-1.0);
    x[63] = 3.0;
    x[64] = 1e6;
    // Real weights too (dequantized Q4_1 values sit exactly on grids).
    let f = model_gguf();
    let t = f.tensor("blk.4.ffn_gate.weight").unwrap();
    let mut real = vec![0f32; t.n_elements() as usize];
    dequantize(t.ggml_type, f.tensor_data(t), &mut real).unwrap();
    for (label, data, row) in [("random", &x[..], n_per_row), ("real", &real[..], t.shape[0] as usize)] {
        let mut ours = vec![BlockQ4_1 { d: f16::ZERO, m: f16::ZERO, qs: [0; 16] }; data.len() / 32];
        let mut scalar = ours.clone();
        edgelora::quant::quantize::quantize_row_q4_1(data, &mut ours);
        edgelora::quant::quantize::quantize_row_q4_1_scalar(data, &mut scalar);
        let mut theirs = vec![0u8; data.len() / 32 * 20];
        // SAFETY: `data` holds whole rows; `theirs` the bytes ggml writes for them.
        unsafe {
            llama_cpp_sys_2::ggml_quantize_chunk(GgmlType::Q4_1 as _, data.as_ptr(), theirs.as_mut_ptr().cast(), 0, (data.len() / row) as i64, row as i64, std::ptr::null());
        }
        assert!(bytemuck::cast_slice::<BlockQ4_1, u8>(&scalar) == &theirs[..], "{label}: scalar twin differs from ggml");
        assert!(bytemuck::cast_slice::<BlockQ4_1, u8>(&ours) == &theirs[..], "{label}: SIMD kernel differs from ggml");
        // And through the public entry point.
        assert_eq!(edgelora::quant::quantize_ggml(GgmlType::Q4_1, data, row).unwrap(), theirs, "{label}");
    }
}

#[test]
fn gptq_recode_lowers_the_output_error_and_grid_refits_lower_it_further() {
    use edgelora::quant::gptq::{output_error, recode, Factor, InputStats};
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(21);
    let (n_in, n_out, rows) = (128, 24, 2048);
    // Correlated, anisotropic inputs: x = z·M, M random with column scales from 4 to 0.04.
    let m: Vec<f32> = (0..n_in * n_in).map(|i| rng.random_range(-1.0f32..1.0) * 4.0 * 0.01f32.powf((i % n_in) as f32 / n_in as f32)).collect();
    let mut inputs = |rows: usize| -> Vec<f32> {
        let z: Vec<f32> = (0..rows * n_in).map(|_| rng.random_range(-1.0f32..1.0)).collect();
        let mut x = vec![0f32; rows * n_in];
        edgelora::compute::dense::matmul(&mut x, &z, edgelora::compute::dense::Layout::N, &m, edgelora::compute::dense::Layout::N, rows, n_in, n_in, false);
        x
    };
    let (calib, held_out) = (inputs(rows), inputs(rows));
    let mut w0: Vec<f32> = (0..n_out * n_in).map(|_| rng.random_range(-1.0f32..1.0)).collect();
    // One all-zero block: its scale is 0 (no grid to refit; must stay finite).
    w0[..32].iter_mut().for_each(|v| *v = 0.0);
    // A low-rank delta smaller than the grid steps (as a LoRA delta is).
    let (a, b): (Vec<f32>, Vec<f32>) = ((0..4 * n_in).map(|_| rng.random_range(-0.25f32..0.25)).collect(), (0..n_out * 4).map(|_| rng.random_range(-0.25f32..0.25)).collect());
    let mut stats = InputStats::new(n_in);
    stats.add(&calib[..rows / 2 * n_in]);
    stats.add(&calib[rows / 2 * n_in..]);
    assert_eq!(stats.rows(), rows);
    let f = Factor::new(stats, 0.01).unwrap();
    for t in [GgmlType::Q4_0, GgmlType::Q4_1, GgmlType::Q8_0] {
        let base = edgelora::quant::quantize_ggml(t, &w0, n_in).unwrap();
        let mut target = vec![0f32; w0.len()];
        dequantize(t, &base, &mut target).unwrap();
        let base_values = target.clone();
        for r in 0..n_out {
            for c in 0..n_in {
                let d: f32 = (0..4).map(|k| b[r * 4 + k] * a[k * n_in + c]).sum();
                target[r * n_in + c] += if t == GgmlType::Q8_0 { d * 0.02 } else { d };
            }
        }
        let ours = recode(t, &base, &target, n_in, &f, 0).unwrap();
        // No refit rounds: same grids, every block's header (d, and m for Q4_1) is the base's.
        let (bs, head) = (t.type_size() as usize, if t == GgmlType::Q4_1 { 4 } else { 2 });
        assert!(ours.chunks(bs).zip(base.chunks(bs)).all(|(o, b)| o[..head] == b[..head]), "{t}: a grid changed");
        let refit = recode(t, &base, &target, n_in, &f, 3).unwrap();
        assert_eq!(refit.len(), base.len());
        // Round-to-nearest on the same grids: what recode does without error feedback.
        let mut nearest = base.clone();
        for (blk, vals) in nearest.chunks_mut(bs).zip(target.chunks(32)) {
            let d = f16::from_le_bytes([blk[0], blk[1]]).to_f32();
            let (lo, top) = match t {
                GgmlType::Q4_1 => (f16::from_le_bytes([blk[2], blk[3]]).to_f32(), 15.0),
                GgmlType::Q4_0 => (-8.0 * d, 15.0),
                _ => (-128.0 * d, 255.0),
            };
            let q: Vec<u8> = vals.iter().map(|&v| if d == 0.0 { 0 } else { ((v - lo) / d).round().clamp(0.0, top) as u8 }).collect();
            if t == GgmlType::Q8_0 {
                blk[2..].iter_mut().zip(&q).for_each(|(o, &c)| *o = (i16::from(c) - 128) as i8 as u8);
            } else {
                (0..16).for_each(|k| blk[head + k] = q[k] | (q[k + 16] << 4));
            }
        }
        let err = |bytes: &[u8]| {
            let mut v = vec![0f32; target.len()];
            dequantize(t, bytes, &mut v).unwrap();
            output_error(&target, &v, &held_out, n_in)
        };
        let mut decoded = vec![0f32; target.len()];
        dequantize(t, &refit, &mut decoded).unwrap();
        assert!(decoded.iter().all(|v| v.is_finite()), "{t}: non-finite value after the grid refits");
        let (e_gptq, e_refit, e_nearest, e_base) = (err(&ours), err(&refit), err(&nearest), err(&base));
        eprintln!("{t}: held-out output error: gptq {e_gptq:.4e}, with grid refits {e_refit:.4e}, nearest code {e_nearest:.4e}, base (delta dropped) {e_base:.4e}");
        assert!(e_gptq < 0.75 * e_nearest.min(e_base), "{t}: gptq {e_gptq} vs nearest {e_nearest} / base {e_base}");
        assert!(e_refit < 0.97 * e_gptq, "{t}: grid refits {e_refit} vs gptq on the base's grids {e_gptq}");
        assert!(output_error(&target, &base_values, &held_out, n_in) == e_base);
    }
    // A Hessian of the wrong width is refused.
    let q = edgelora::quant::quantize_ggml(GgmlType::Q4_1, &w0[..64 * 4], 64).unwrap();
    assert!(recode(GgmlType::Q4_1, &q, &w0[..64 * 4], 64, &f, 0).is_err());
    assert!(recode(GgmlType::Q4_K, &q, &w0[..64 * 4], 64, &f, 0).is_err());
}
