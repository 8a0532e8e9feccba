//! SwiGLU: y = silu(gate) · up, silu(g) = g · σ(g).

use rayon::prelude::*;

use crate::compute::dense::Real;

/// gate, up [n, n_ff] → y [n, n_ff].
pub fn swiglu_forward<T: Real>(gate: &[T], up: &[T]) -> Vec<T> {
    gate.par_iter().zip(up.par_iter()).with_min_len(4096).map(|(&g, &u)| g / (T::one() + (-g).exp()) * u).collect()
}

/// dgate = dy · up · σ(g)·(1 + g·(1 − σ(g))); dup = dy · silu(g).
pub fn swiglu_backward<T: Real>(dy: &[T], gate: &[T], up: &[T]) -> (Vec<T>, Vec<T>) {
    dy.par_iter()
        .zip(gate.par_iter().zip(up.par_iter()))
        .with_min_len(4096)
        .map(|(&d, (&g, &u))| {
            let sig = T::one() / (T::one() + (-g).exp());
            (d * u * sig * (T::one() + g * (T::one() - sig)), d * g * sig)
        })
        .unzip()
}
