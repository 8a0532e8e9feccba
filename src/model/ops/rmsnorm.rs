//! RMSNorm: y = x / sqrt(mean(x²) + eps) · w.

/// x [n, d] → y [n, d].
pub fn rmsnorm_forward(x: &[f32], w: &[f32], eps: f32) -> Vec<f32> {
    let d = w.len();
    let mut y = vec![0f32; x.len()];
    for (xr, yr) in x.chunks_exact(d).zip(y.chunks_exact_mut(d)) {
        let ms: f64 = xr.iter().map(|v| f64::from(*v) * f64::from(*v)).sum::<f64>() / d as f64;
        let inv = (1.0 / (ms + f64::from(eps)).sqrt()) as f32;
        for ((o, v), g) in yr.iter_mut().zip(xr).zip(w) {
            *o = v * inv * g;
        }
    }
    y
}
