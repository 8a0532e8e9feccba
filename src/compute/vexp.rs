//! exp over f32 slices, sixteen lanes at a time (AVX-512), for the forward's softmax and
//! SiLU: e^x = 2^k · e^r with k = round(x·log₂e), r = x − k·ln2 (|r| ≤ ln2/2, in two
//! parts), e^r by its Taylor polynomial to r⁷ (truncation < 1e-8 relative) — within 2 ulp
//! of the correctly rounded value (the unit test holds it to that against f64). Below
//! −87.3 the result is 0, above 88.7 it is clamped to e^88.7 (f32's overflow). Elsewhere,
//! and for the tails, `f32::exp`.

#[cfg(target_arch = "x86_64")]
use std::sync::OnceLock;

/// v[i] = e^v[i].
pub fn exp_in_place(v: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    if avx512() {
        // SAFETY: AVX-512F detected.
        unsafe { x86::exp_in_place(v) };
        return;
    }
    v.iter_mut().for_each(|x| *x = x.exp());
}

/// y[i] = silu(g[i])·u[i] = g / (1 + e^−g) · u.
pub fn silu_mul(g: &[f32], u: &[f32], y: &mut [f32]) {
    assert!(g.len() == u.len() && u.len() == y.len(), "silu_mul: {} gates, {} ups, {} outputs", g.len(), u.len(), y.len());
    #[cfg(target_arch = "x86_64")]
    if avx512() {
        // SAFETY: AVX-512F detected; lengths equal (asserted).
        unsafe { x86::silu_mul(g, u, y) };
        return;
    }
    for ((y, &g), &u) in y.iter_mut().zip(g).zip(u) {
        *y = g / (1.0 + (-g).exp()) * u;
    }
}

/// Whether the vector kernels run here.
pub fn vectorized() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        avx512()
    }
    #[cfg(not(target_arch = "x86_64"))]
    false
}

#[cfg(target_arch = "x86_64")]
fn avx512() -> bool {
    static HAS: OnceLock<bool> = OnceLock::new();
    *HAS.get_or_init(|| std::arch::is_x86_feature_detected!("avx512f"))
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::*;

    /// e^x on 16 lanes (see the module comment).
    #[inline]
    #[target_feature(enable = "avx512f")]
    fn exp16(x: __m512) -> __m512 {
        let under = _mm512_cmp_ps_mask::<_CMP_LT_OQ>(x, _mm512_set1_ps(-87.3));
        let x = _mm512_min_ps(x, _mm512_set1_ps(88.7));
        let k = _mm512_roundscale_ps::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(_mm512_mul_ps(x, _mm512_set1_ps(std::f32::consts::LOG2_E)));
        // ln2 in two parts: the first exact in few bits, so k·LN2_HI is exact.
        let r = _mm512_fnmadd_ps(k, _mm512_set1_ps(0.693_145_75), x);
        let r = _mm512_fnmadd_ps(k, _mm512_set1_ps(1.428_606_8e-6), r);
        // Σ r^i / i!, i = 0..7, by Horner.
        let mut p = _mm512_set1_ps(1.0 / 5040.0);
        for c in [1.0 / 720.0, 1.0 / 120.0, 1.0 / 24.0, 1.0 / 6.0, 0.5, 1.0, 1.0] {
            p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(c));
        }
        _mm512_maskz_mov_ps(!under, _mm512_scalef_ps(p, k))
    }

    /// SAFETY: AVX-512F.
    #[target_feature(enable = "avx512f")]
    pub unsafe fn exp_in_place(v: &mut [f32]) {
        let mut chunks = v.chunks_exact_mut(16);
        for c in chunks.by_ref() {
            // SAFETY: 16 floats.
            unsafe { _mm512_storeu_ps(c.as_mut_ptr(), exp16(_mm512_loadu_ps(c.as_ptr()))) };
        }
        let rest = chunks.into_remainder();
        let mut buf = [0f32; 16];
        buf[..rest.len()].copy_from_slice(rest);
        // SAFETY: 16 floats.
        unsafe { _mm512_storeu_ps(buf.as_mut_ptr(), exp16(_mm512_loadu_ps(buf.as_ptr()))) };
        rest.copy_from_slice(&buf[..rest.len()]);
    }

    /// SAFETY: AVX-512F; g, u and y of one length.
    #[target_feature(enable = "avx512f")]
    pub unsafe fn silu_mul(g: &[f32], u: &[f32], y: &mut [f32]) {
        let one = _mm512_set1_ps(1.0);
        let f = |g: __m512, u: __m512| _mm512_mul_ps(_mm512_div_ps(g, _mm512_add_ps(one, exp16(_mm512_sub_ps(_mm512_setzero_ps(), g)))), u);
        let n = y.len() / 16 * 16;
        for i in (0..n).step_by(16) {
            // SAFETY: 16 floats at i of each (i + 16 ≤ n ≤ len).
            unsafe { _mm512_storeu_ps(y.as_mut_ptr().add(i), f(_mm512_loadu_ps(g.as_ptr().add(i)), _mm512_loadu_ps(u.as_ptr().add(i)))) };
        }
        let (mut gb, mut ub, mut yb) = ([0f32; 16], [0f32; 16], [0f32; 16]);
        let m = y.len() - n;
        gb[..m].copy_from_slice(&g[n..]);
        ub[..m].copy_from_slice(&u[n..]);
        // SAFETY: 16 floats each.
        unsafe { _mm512_storeu_ps(yb.as_mut_ptr(), f(_mm512_loadu_ps(gb.as_ptr()), _mm512_loadu_ps(ub.as_ptr()))) };
        y[n..].copy_from_slice(&yb[..m]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Distance in units in the last place between two finite f32s of one sign.
    fn ulps(a: f32, b: f32) -> u32 {
        (a.to_bits() as i64 - b.to_bits() as i64).unsigned_abs() as u32
    }

    #[test]
    fn exp_is_within_two_ulp_of_the_rounded_value_and_silu_follows_it() {
        // A sweep over the range softmax and SiLU use, both tails, and lengths with tails.
        let xs: Vec<f32> = (0..20_001).map(|i| -90.0 + i as f32 * 0.0089).chain([0.0, -0.0, 1e-30, -1e-30, 88.0, -87.0]).collect();
        let mut e = xs.clone();
        exp_in_place(&mut e);
        for (&x, &got) in xs.iter().zip(&e) {
            let want = (x as f64).exp() as f32;
            if x < -87.3 {
                assert_eq!(got, 0.0, "e^{x}");
            } else if want.is_normal() {
                assert!(ulps(got, want) <= 2, "e^{x}: {got} vs {want} ({} ulp, vectorized {})", ulps(got, want), vectorized());
            } else {
                assert!((got - want).abs() <= f32::MIN_POSITIVE, "e^{x}: {got} vs {want}");
            }
        }
        for n in [0, 1, 15, 16, 17, 1536] {
            let g: Vec<f32> = (0..n).map(|i| (i as f32 * 0.37).sin() * 12.0).collect();
            let u: Vec<f32> = (0..n).map(|i| (i as f32 * 0.11).cos()).collect();
            let mut y = vec![0f32; n];
            silu_mul(&g, &u, &mut y);
            for i in 0..n {
                let want = (g[i] as f64) / (1.0 + (-(g[i] as f64)).exp()) * u[i] as f64;
                assert!((y[i] as f64 - want).abs() <= 4e-7 * want.abs().max(1e-30) + 1e-37, "silu({}) · {}: {} vs {want}", g[i], u[i], y[i]);
            }
        }
    }
}
