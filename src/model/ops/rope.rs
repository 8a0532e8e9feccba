//! Rotary position embedding, in place on q or k. Backward is the inverse rotation.

use rayon::prelude::*;

use crate::compute::dense::Real;
use crate::model::config::RopeStyle;

/// The RoPE parameters of a model.
#[derive(Debug, Clone, Copy)]
pub struct Rope<'a> {
    pub n_heads: usize,
    pub head_dim: usize,
    /// Dimensions rotated per head (≤ head_dim).
    pub rope_dim: usize,
    pub base: f32,
    /// Positions are divided by this (linear scaling).
    pub factor: f32,
    pub style: RopeStyle,
    /// Per-pair divisors of the angle (`rope_freqs.weight`, Llama 3.1-style scaling), as
    /// ggml applies them; None = all 1.
    pub freq_factors: Option<&'a [f32]>,
}

impl Rope<'_> {
    /// The angle per position of each rotated pair: base^(−2i/rope_dim) / factor_i, in f64.
    pub fn inv_freq(&self) -> Vec<f64> {
        (0..self.rope_dim / 2)
            .map(|i| f64::from(self.base).powf(-2.0 * i as f64 / self.rope_dim as f64) / self.freq_factors.map_or(1.0, |f| f64::from(f[i])))
            .collect()
    }
}

/// x [n_tok, n_heads, head_dim]: rotates the first `rope_dim` dims of every head of token
/// t by angles (pos_t / factor) · base^(−2i/rope_dim), pairing dims as `style` says.
pub fn rope_forward<T: Real>(x: &mut [T], r: &Rope, positions: &[usize]) {
    rotate(x, r, positions, 1.0);
}

/// dx = Rᵀ·dy, in place on dy [n_tok, n_heads, head_dim] (a rotation's transpose is the
/// rotation by −θ).
pub fn rope_backward<T: Real>(dy: &mut [T], r: &Rope, positions: &[usize]) {
    rotate(dy, r, positions, -1.0);
}

fn rotate<T: Real>(x: &mut [T], r: &Rope, positions: &[usize], sign: f64) {
    let half = r.rope_dim / 2;
    let inv_freq = r.inv_freq();
    let width = r.n_heads * r.head_dim;
    x.par_chunks_mut(width).zip(positions.par_iter()).with_min_len(16).for_each(|(tok, &p)| {
        let pos = p as f64 / f64::from(r.factor);
        // (cos, sin) per pair, shared by every head of the token
        let cs: Vec<(f64, f64)> = inv_freq.iter().map(|f| (sign * pos * f).sin_cos()).map(|(s, c)| (c, s)).collect();
        for head in tok.chunks_exact_mut(r.head_dim) {
            for (i, &(cos, sin)) in cs.iter().enumerate() {
                let (a, b) = match r.style {
                    RopeStyle::Adjacent => (2 * i, 2 * i + 1),
                    RopeStyle::NeoX => (i, i + half),
                };
                let (x0, x1) = (head[a].f64v(), head[b].f64v());
                head[a] = T::of(x0 * cos - x1 * sin);
                head[b] = T::of(x0 * sin + x1 * cos);
            }
        }
    });
}
