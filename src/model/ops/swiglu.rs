//! SwiGLU: y = silu(gate) · up, silu(g) = g · σ(g).

use rayon::prelude::*;

use crate::compute::dense::Real;

/// gate, up [n, n_ff] → y [n, n_ff].
/// f32 through `compute::vexp` (exp sixteen lanes at a time; within 2 ulp of libm's).
pub fn swiglu_forward<T: Real>(gate: &[T], up: &[T]) -> Vec<T> {
    if let (Some(g), Some(u)) = (T::as_f32(gate), T::as_f32(up)) {
        let mut y = vec![T::zero(); g.len()];
        let ys = T::as_f32_mut(&mut y).expect("f32 like the gate");
        ys.par_chunks_mut(4096).zip(g.par_chunks(4096).zip(u.par_chunks(4096))).for_each(|(y, (g, u))| crate::compute::vexp::silu_mul(g, u, y));
        return y;
    }
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
