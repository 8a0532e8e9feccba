//! GeGLU with the tanh-approximated GELU (gemma3's `gelu_pytorch_tanh`, ggml's `gelu`):
//! y = gelu(gate) · up,  gelu(g) = ½·g·(1 + tanh(z)),  z = √(2/π)·(g + 0.044715·g³).

use rayon::prelude::*;

use crate::compute::dense::Real;

/// √(2/π).
const C: f64 = 0.797_884_560_802_865_4;
const A: f64 = 0.044_715;

/// gate, up [n, n_ff] → y [n, n_ff].
pub fn geglu_forward<T: Real>(gate: &[T], up: &[T]) -> Vec<T> {
    let (c, a, half) = (T::of(C), T::of(A), T::of(0.5));
    gate.par_iter().zip(up.par_iter()).with_min_len(4096).map(|(&g, &u)| half * g * (T::one() + (c * (g + a * g * g * g)).tanh()) * u).collect()
}

/// dgate = dy · up · gelu'(g), gelu'(g) = ½·(1 + tanh z) + ½·g·(1 − tanh² z)·√(2/π)·(1 + 3·0.044715·g²);
/// dup = dy · gelu(g).
pub fn geglu_backward<T: Real>(dy: &[T], gate: &[T], up: &[T]) -> (Vec<T>, Vec<T>) {
    let (c, a, half, three) = (T::of(C), T::of(A), T::of(0.5), T::of(3.0));
    dy.par_iter()
        .zip(gate.par_iter().zip(up.par_iter()))
        .with_min_len(4096)
        .map(|(&d, (&g, &u))| {
            let th = (c * (g + a * g * g * g)).tanh();
            let gelu = half * g * (T::one() + th);
            let dgelu = half * (T::one() + th) + half * g * (T::one() - th * th) * c * (T::one() + three * a * g * g);
            (d * u * dgelu, d * gelu)
        })
        .unzip()
}
