//! Quantizers written to match ggml's reference (`quantize_row_*_ref`) bit for bit, with a
//! SIMD kernel beside the scalar twin. The other types' ports are scalar (`ggml_ref`, which
//! calls this one for Q4_1). The test suite checks both against ggml on random data.

use std::sync::OnceLock;

use half::f16;

use super::blocks::{BlockQ4_1, QK};

/// ggml's Q4_1 reference: min/max grid, d = (max − min)/15, codes ⌊(x − min)/d + ½⌋ ≤ 15.
pub fn quantize_row_q4_1_scalar(x: &[f32], out: &mut [BlockQ4_1]) {
    for (xb, y) in x.chunks_exact(QK).zip(out.iter_mut()) {
        let (mut min, mut max) = (f32::MAX, -f32::MAX);
        for &v in xb {
            if v < min {
                min = v;
            }
            if v > max {
                max = v;
            }
        }
        let d = (max - min) / 15.0;
        let id = if d != 0.0 { 1.0 / d } else { 0.0 };
        y.d = f16::from_f32(d);
        y.m = f16::from_f32(min);
        for j in 0..QK / 2 {
            let x0 = (xb[j] - min) * id;
            let x1 = (xb[j + QK / 2] - min) * id;
            let q0 = ((x0 + 0.5) as i8).min(15) as u8;
            let q1 = ((x1 + 0.5) as i8).min(15) as u8;
            y.qs[j] = q0 | (q1 << 4);
        }
    }
}

/// [`quantize_row_q4_1_scalar`] with the fastest kernel this CPU has (same bytes).
pub fn quantize_row_q4_1(x: &[f32], out: &mut [BlockQ4_1]) {
    static K: OnceLock<fn(&[f32], &mut [BlockQ4_1])> = OnceLock::new();
    K.get_or_init(|| {
        #[cfg(target_arch = "x86_64")]
        {
            if std::arch::is_x86_feature_detected!("avx2") {
                return x86::q4_1;
            }
        }
        quantize_row_q4_1_scalar
    })(x, out)
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::*;

    use half::f16;

    use super::{BlockQ4_1, QK};

    #[target_feature(enable = "avx2")]
    fn q4_1_avx2(x: &[f32], out: &mut [BlockQ4_1]) {
        for (xb, y) in x.chunks_exact(QK).zip(out.iter_mut()) {
            // SAFETY: 32 readable floats in `xb`; unaligned loads.
            let v = unsafe { [0, 8, 16, 24].map(|k| _mm256_loadu_ps(xb.as_ptr().add(k))) };
            let mut lo = _mm256_min_ps(_mm256_min_ps(v[0], v[1]), _mm256_min_ps(v[2], v[3]));
            let mut hi = _mm256_max_ps(_mm256_max_ps(v[0], v[1]), _mm256_max_ps(v[2], v[3]));
            let mut l = [0f32; 8];
            let mut h = [0f32; 8];
            // SAFETY: 8 writable floats each.
            unsafe {
                _mm256_storeu_ps(l.as_mut_ptr(), lo);
                _mm256_storeu_ps(h.as_mut_ptr(), hi);
            }
            let min = l.iter().copied().fold(f32::MAX, f32::min);
            let max = h.iter().copied().fold(-f32::MAX, f32::max);
            let d = (max - min) / 15.0;
            let id = if d != 0.0 { 1.0 / d } else { 0.0 };
            y.d = f16::from_f32(d);
            y.m = f16::from_f32(min);
            lo = _mm256_set1_ps(min);
            hi = _mm256_set1_ps(id);
            let half = _mm256_set1_ps(0.5);
            let fifteen = _mm256_set1_epi32(15);
            // (x − min)·id, then + ½ as a separate rounding (no FMA), truncated, capped at 15.
            let codes = v.map(|x| _mm256_min_epi32(_mm256_cvttps_epi32(_mm256_add_ps(_mm256_mul_ps(_mm256_sub_ps(x, lo), hi), half)), fifteen));
            let mut q = [0i32; 32];
            for (k, c) in codes.iter().enumerate() {
                // SAFETY: 8 writable i32 at 8k.
                unsafe { _mm256_storeu_si256(q.as_mut_ptr().add(8 * k).cast(), *c) };
            }
            for j in 0..QK / 2 {
                y.qs[j] = q[j] as u8 | ((q[j + QK / 2] as u8) << 4);
            }
        }
    }

    pub fn q4_1(x: &[f32], out: &mut [BlockQ4_1]) {
        // SAFETY: handed out only after detecting AVX2.
        unsafe { q4_1_avx2(x, out) }
    }
}
