//! Rotary position embedding, in place on q or k.

use crate::model::config::RopeStyle;

/// x [n_tok, n_heads, head_dim]: rotates the first `rope_dim` dims of every head of token
/// t by angles (pos_t / factor) · base^(−2i/rope_dim), pairing dims as `style` says.
pub fn rope_forward(x: &mut [f32], n_heads: usize, head_dim: usize, positions: &[usize], rope_dim: usize, base: f32, factor: f32, style: RopeStyle) {
    let half = rope_dim / 2;
    for (tok, &p) in x.chunks_exact_mut(n_heads * head_dim).zip(positions) {
        let pos = p as f64 / f64::from(factor);
        for head in tok.chunks_exact_mut(head_dim) {
            for i in 0..half {
                let theta = pos * f64::from(base).powf(-2.0 * i as f64 / rope_dim as f64);
                let (sin, cos) = theta.sin_cos();
                let (a, b) = match style {
                    RopeStyle::Adjacent => (2 * i, 2 * i + 1),
                    RopeStyle::NeoX => (i, i + half),
                };
                let (x0, x1) = (f64::from(head[a]), f64::from(head[b]));
                head[a] = (x0 * cos - x1 * sin) as f32;
                head[b] = (x0 * sin + x1 * cos) as f32;
            }
        }
    }
}
