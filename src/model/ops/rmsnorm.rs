//! RMSNorm: y = x · inv · w with inv = 1 / sqrt(mean(x²) + eps), per row of w.len()
//! values. The same op normalizes each head of q or k (`qwen3`'s q/k norms): a
//! [n, heads·head_dim] activation is [n·heads, head_dim] rows for a head_dim-wide w.

use rayon::prelude::*;

use crate::compute::dense::Real;

/// x [n, d] → y [n, d].
pub fn rmsnorm_forward<T: Real>(x: &[T], w: &[T], eps: f32) -> Vec<T> {
    let d = w.len();
    let mut y = vec![T::zero(); x.len()];
    y.par_chunks_mut(d).zip(x.par_chunks(d)).with_min_len(8).for_each(|(yr, xr)| {
        let inv = T::of(inv_rms(xr, eps));
        for ((o, v), g) in yr.iter_mut().zip(xr).zip(w) {
            *o = *v * inv * *g;
        }
    });
    y
}

/// dx [n, d] += ∂L/∂x given dy [n, d] (w is frozen: no dw).
/// With g = dy ⊙ w: dx = inv · (g − x · inv² · Σ(g ⊙ x) / d).
pub fn rmsnorm_backward<T: Real>(dx: &mut [T], dy: &[T], x: &[T], w: &[T], eps: f32) {
    let d = w.len();
    dx.par_chunks_mut(d).zip(dy.par_chunks(d)).zip(x.par_chunks(d)).with_min_len(8).for_each(|((dxr, dyr), xr)| {
        let inv = inv_rms(xr, eps);
        let gx: f64 = dyr.iter().zip(w).zip(xr).map(|((dy, w), x)| (*dy * *w * *x).f64v()).sum();
        let c = T::of(inv * inv * gx / d as f64);
        let inv = T::of(inv);
        for (((o, dy), w), x) in dxr.iter_mut().zip(dyr).zip(w).zip(xr) {
            *o += inv * (*dy * *w - *x * c);
        }
    });
}

fn inv_rms<T: Real>(x: &[T], eps: f32) -> f64 {
    let ms: f64 = x.iter().map(|v| v.f64v() * v.f64v()).sum::<f64>() / x.len() as f64;
    1.0 / (ms + f64::from(eps)).sqrt()
}
