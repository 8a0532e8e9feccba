//! SwiGLU: y = silu(gate) · up, silu(g) = g · σ(g).

use crate::compute::dense::Real;

/// gate, up [n, n_ff] → y [n, n_ff].
pub fn swiglu_forward<T: Real>(gate: &[T], up: &[T]) -> Vec<T> {
    gate.iter().zip(up).map(|(&g, &u)| g / (T::one() + (-g).exp()) * u).collect()
}

/// dgate = dy · up · σ(g)·(1 + g·(1 − σ(g))); dup = dy · silu(g).
pub fn swiglu_backward<T: Real>(dy: &[T], gate: &[T], up: &[T]) -> (Vec<T>, Vec<T>) {
    let mut dgate = Vec::with_capacity(dy.len());
    let mut dup = Vec::with_capacity(dy.len());
    for ((&d, &g), &u) in dy.iter().zip(gate).zip(up) {
        let sig = T::one() / (T::one() + (-g).exp());
        dgate.push(d * u * sig * (T::one() + g * (T::one() - sig)));
        dup.push(d * g * sig);
    }
    (dgate, dup)
}
