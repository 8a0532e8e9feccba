//! SwiGLU: silu(gate) · up.

/// gate, up [n, n_ff] → [n, n_ff].
pub fn swiglu_forward(gate: &[f32], up: &[f32]) -> Vec<f32> {
    gate.iter().zip(up).map(|(g, u)| g / (1.0 + (-g).exp()) * u).collect()
}
