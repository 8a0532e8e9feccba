//! The engine's ops, one per file, each a `*_forward` with its `*_backward` beside it
//! (the backward reads as the forward reversed). Activations are row-major
//! `[n_tokens, width]`, generic over [`Real`](crate::compute::dense::Real): f32 to run and
//! train, f64 for the finite-difference checks. Frozen tensors (the quantized base, norm
//! weights, biases) get no gradient; only inputs and LoRA factors do.

pub mod attention;
pub mod cross_entropy;
pub mod embedding;
pub mod geglu;
pub mod linear;
pub mod rmsnorm;
pub mod rope;
pub mod swiglu;
