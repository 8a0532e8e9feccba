//! Compute backends: the narrow set of kernels merge needs (and the native engine will
//! build on), on the CPU (`cpu`: SIMD dequantizers + rayon) or a GPU through wgpu
//! (`gpu`: one WGSL file per kernel in `shaders/`).
//!
//! Kernels: `dequantize` (block bytes → f32), `lora_delta` (acc += s·B·A), `matmul`
//! (y = x·Wᵀ with W in its block format) and `matmul_shared` (several W of one input:
//! q/k/v, gate/up) — the last two for the native engine.

pub mod amx;
pub mod bf16;
pub mod blocked;
pub mod cholesky;
pub mod cpu;
pub mod dense;
pub mod packed;
pub mod tile;
pub mod vexp;
pub mod gpu;

use crate::gguf::GgmlType;

/// Why a compute call failed.
#[derive(Debug, thiserror::Error)]
pub enum ComputeError {
    #[error("no usable GPU adapter: {0} (use the CPU backend)")]
    NoAdapter(String),
    #[error("GPU device request failed: {0}")]
    Device(String),
    #[error("{0} is not supported by the {1} backend")]
    Unsupported(GgmlType, &'static str),
    #[error("bad kernel arguments: {0}")]
    Shape(String),
    #[error("GPU: {0}")]
    Gpu(String),
    #[error(transparent)]
    Quant(#[from] crate::quant::QuantError),
}

/// One LoRA factor pair to add: acc [n_out, n_in] += scale · B [n_out, rank] · A [rank, n_in].
#[derive(Debug, Clone, Copy)]
pub struct Delta<'a> {
    pub rank: usize,
    pub a: &'a [f32],
    pub b: &'a [f32],
    pub scale: f32,
}

/// The kernels every backend provides.
pub trait Backend: Send + Sync {
    fn name(&self) -> String;
    /// `out` (its length is the element count) = dequantize(`bytes` of type `t`).
    fn dequantize(&self, t: GgmlType, bytes: &[u8], out: &mut [f32]) -> Result<(), ComputeError>;
    /// `acc` [n_out, n_in] += Σ scale·B·A over `deltas`.
    fn lora_delta(&self, acc: &mut [f32], n_out: usize, n_in: usize, deltas: &[Delta]) -> Result<(), ComputeError>;
    /// y [n_x, n_out] = x [n_x, n_in] · Wᵀ, with W [n_out, n_in] as `t` blocks in `w`.
    fn matmul(&self, t: GgmlType, w: &[u8], n_out: usize, n_in: usize, x: &[f32], n_x: usize) -> Result<Vec<f32>, ComputeError>;
    /// Several products of one input (q/k/v, gate/up): `ys[i]` [n_x, n_out_i] = x · W_iᵀ.
    /// A backend may prepare the input once and share one parallel pass among them; the
    /// default runs [`Backend::matmul`] on each.
    fn matmul_shared(&self, ws: &[MatrixRef], n_in: usize, x: &[f32], n_x: usize) -> Result<Vec<Vec<f32>>, ComputeError> {
        ws.iter().map(|w| self.matmul(w.t, w.bytes, w.n_out, n_in, x, n_x)).collect()
    }
    /// Whether a model on this backend should keep packed copies of its matrices for
    /// decoding ([`packed`]: the CPU with AVX512-VNNI).
    fn packs_weights(&self) -> bool {
        false
    }
}

/// A weight matrix in its block format, for [`Backend::matmul_shared`]: W [n_out, n_in]
/// as `t` blocks.
#[derive(Debug, Clone, Copy)]
pub struct MatrixRef<'a> {
    pub t: GgmlType,
    pub bytes: &'a [u8],
    pub n_out: usize,
}

fn check_delta(acc: &[f32], n_out: usize, n_in: usize, d: &Delta) -> Result<(), ComputeError> {
    if acc.len() != n_out * n_in || d.a.len() != d.rank * n_in || d.b.len() != n_out * d.rank {
        return Err(ComputeError::Shape(format!(
            "acc {} for [{n_out}, {n_in}], A {} for [{}, {n_in}], B {} for [{n_out}, {}]",
            acc.len(),
            d.a.len(),
            d.rank,
            d.b.len(),
            d.rank
        )));
    }
    Ok(())
}

/// Which backend to run on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Device {
    Cpu,
    Gpu,
}

/// The backend for `device`: the GPU one fails with [`ComputeError::NoAdapter`] when no
/// adapter exists (callers may then fall back to the CPU).
pub fn backend(device: Device) -> Result<Box<dyn Backend>, ComputeError> {
    match device {
        Device::Cpu => Ok(Box::new(cpu::Cpu)),
        Device::Gpu => Ok(Box::new(gpu::Gpu::new()?)),
    }
}
