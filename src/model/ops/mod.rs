//! The engine's ops, one per file, each a `*_forward` (the training issue adds the
//! `*_backward` beside it). Activations are row-major f32 `[n_tokens, width]`.

pub mod attention;
pub mod embedding;
pub mod linear;
pub mod rmsnorm;
pub mod rope;
pub mod swiglu;
