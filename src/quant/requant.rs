//! Error-minimizing quantizers for the 32-wide block formats, used when merge writes
//! W + ΔW back into the base's format. ggml's reference quantizers take the block's
//! min/max (or absmax) as the grid; here each block tries several grids — the min/max
//! one, shrunken ranges, a least-squares refit of (d, m) to its own rounding, and the
//! grid the block had before the merge — and keeps the one with the smallest squared
//! error, measured with d and m rounded to f16 as they are stored.

use half::f16;

use super::blocks::{BlockQ4_0, BlockQ4_1, BlockQ8_0, QK};

/// Squared error of a Q4_1 grid (d, m) on `x`, with the codes it implies.
fn q4_1_codes(x: &[f32], d: f16, m: f16, q: &mut [u8; QK]) -> f32 {
    let (df, mf) = (d.to_f32(), m.to_f32());
    let inv = if df != 0.0 { 1.0 / df } else { 0.0 };
    let mut err = 0.0;
    for (i, &v) in x.iter().enumerate() {
        // Round half up by truncation after the clamp (faster than f32::round).
        let c = (((v - mf) * inv + 0.5).clamp(0.0, 15.99)) as u8;
        q[i] = c;
        let e = v - (f32::from(c) * df + mf);
        err += e * e;
    }
    err
}

/// Least-squares (d, m) for fixed codes: minimizes Σ (x − (q·d + m))².
fn refit(x: &[f32], q: &[u8; QK]) -> Option<(f32, f32)> {
    let n = x.len() as f64;
    let (mut sq, mut sqq, mut sx, mut sqx) = (0f64, 0f64, 0f64, 0f64);
    for (&v, &c) in x.iter().zip(q) {
        let (c, v) = (f64::from(c), f64::from(v));
        sq += c;
        sqq += c * c;
        sx += v;
        sqx += c * v;
    }
    let det = n * sqq - sq * sq;
    if det.abs() < 1e-12 {
        return None;
    }
    let d = (n * sqx - sq * sx) / det;
    let m = (sx - d * sq) / n;
    Some((d as f32, m as f32))
}

/// The best Q4_1 block for `x` (32 values); `hint` is a grid to try as well (the
/// block's grid before the merge).
pub fn quantize_block_q4_1(x: &[f32], hint: Option<(f16, f16)>) -> BlockQ4_1 {
    let (mut lo, mut hi) = (f32::INFINITY, f32::NEG_INFINITY);
    for &v in x {
        lo = lo.min(v);
        hi = hi.max(v);
    }
    let mut best = (f32::INFINITY, f16::ZERO, f16::ZERO, [0u8; QK]);
    let mut q = [0u8; QK];
    let mut consider = |d: f32, m: f32, best: &mut (f32, f16, f16, [u8; QK])| {
        if !(d.is_finite() && m.is_finite()) || d < 0.0 {
            return;
        }
        let (dh, mh) = (f16::from_f32(d), f16::from_f32(m));
        let e = q4_1_codes(x, dh, mh, &mut q);
        if e < best.0 {
            *best = (e, dh, mh, q);
        }
    };
    // Shrunken ranges around min/max, then a least-squares refit of each.
    for step in 0..=2 {
        let shrink = step as f32 * 0.04;
        let (a, b) = (lo + (hi - lo) * shrink * 0.5, hi - (hi - lo) * shrink * 0.5);
        let d = (b - a) / 15.0;
        consider(d, a, &mut best);
    }
    if let Some((d, m)) = hint.map(|(d, m)| (d.to_f32(), m.to_f32())) {
        consider(d, m, &mut best);
    }
    // Two rounds of refit on the current best codes.
    for _ in 0..2 {
        let codes = best.3;
        if let Some((d, m)) = refit(x, &codes) {
            consider(d, m, &mut best);
        }
    }
    let qs = std::array::from_fn(|j| best.3[j] | (best.3[j + QK / 2] << 4));
    BlockQ4_1 { d: best.1, m: best.2, qs }
}

/// The best Q4_0 block (x = d·(q − 8)): scales around absmax/8 and a least-squares refit.
pub fn quantize_block_q4_0(x: &[f32], hint: Option<f16>) -> BlockQ4_0 {
    let mut amax = 0f32;
    let mut maxv = 0f32;
    for &v in x {
        if v.abs() > amax {
            amax = v.abs();
            maxv = v;
        }
    }
    let codes = |d: f16, q: &mut [u8; QK]| -> f32 {
        let df = d.to_f32();
        let inv = if df != 0.0 { 1.0 / df } else { 0.0 };
        let mut err = 0.0;
        for (i, &v) in x.iter().enumerate() {
            let c = (v * inv + 8.0).round().clamp(0.0, 15.0);
            q[i] = c as u8;
            let e = v - (c - 8.0) * df;
            err += e * e;
        }
        err
    };
    let mut best = (f32::INFINITY, f16::ZERO, [0u8; QK]);
    let mut q = [0u8; QK];
    let mut candidates: Vec<f32> = (0..=10).map(|k| maxv / (-8.0 + k as f32 * 0.1)).collect();
    candidates.extend(hint.map(f16::to_f32));
    for d in candidates {
        if !d.is_finite() {
            continue;
        }
        let dh = f16::from_f32(d);
        let e = codes(dh, &mut q);
        if e < best.0 {
            best = (e, dh, q);
        }
    }
    // Least squares for d with codes fixed: d = Σ x(q−8) / Σ (q−8)².
    let (mut num, mut den) = (0f64, 0f64);
    for (&v, &c) in x.iter().zip(&best.2) {
        let c = f64::from(c) - 8.0;
        num += f64::from(v) * c;
        den += c * c;
    }
    if den > 0.0 {
        let dh = f16::from_f32((num / den) as f32);
        let e = codes(dh, &mut q);
        if e < best.0 {
            best = (e, dh, q);
        }
    }
    let qs = std::array::from_fn(|j| best.2[j] | (best.2[j + QK / 2] << 4));
    BlockQ4_0 { d: best.1, qs }
}

/// The best Q8_0 block (x = d·q, |q| ≤ 127): absmax/127 and a least-squares refit.
pub fn quantize_block_q8_0(x: &[f32]) -> BlockQ8_0 {
    let amax = x.iter().fold(0f32, |a, v| a.max(v.abs()));
    let codes = |d: f16, q: &mut [i8; QK]| -> f32 {
        let df = d.to_f32();
        let inv = if df != 0.0 { 1.0 / df } else { 0.0 };
        let mut err = 0.0;
        for (i, &v) in x.iter().enumerate() {
            let c = (v * inv).round().clamp(-127.0, 127.0);
            q[i] = c as i8;
            let e = v - c * df;
            err += e * e;
        }
        err
    };
    let mut q = [0i8; QK];
    let d0 = f16::from_f32(amax / 127.0);
    let mut best = (codes(d0, &mut q), d0, q);
    let (mut num, mut den) = (0f64, 0f64);
    for (&v, &c) in x.iter().zip(&best.2) {
        num += f64::from(v) * f64::from(c);
        den += f64::from(c) * f64::from(c);
    }
    if den > 0.0 {
        let dh = f16::from_f32((num / den) as f32);
        let e = codes(dh, &mut q);
        if e < best.0 {
            best = (e, dh, q);
        }
    }
    BlockQ8_0 { d: best.1, qs: best.2 }
}

