//! The one linear layer every projection goes through: y = x·Wᵀ + b + Σ sᵢ·(x·Aᵢᵀ)·Bᵢᵀ,
//! with W frozen in its block format and the LoRA factors of the active adapters.

use crate::adapter::LoraTensor;
use crate::compute::dense::{matmul, Layout, Real};
use crate::compute::{Backend, ComputeError};
use crate::model::weights::Weight;

/// x [n, n_in] → y [n, n_out]. `loras`: (factors, weight) of each active adapter that
/// targets this weight; the effective scale is weight · factors.scale.
pub fn linear_forward(backend: &dyn Backend, x: &[f32], w: &Weight, bias: Option<&[f32]>, loras: &[(&LoraTensor, f32)]) -> Result<Vec<f32>, ComputeError> {
    let n = x.len() / w.n_in;
    let mut y = backend.matmul(w.t, w.bytes, w.n_out, w.n_in, x, n)?;
    if let Some(b) = bias {
        for row in y.chunks_exact_mut(w.n_out) {
            row.iter_mut().zip(b).for_each(|(v, b)| *v += b);
        }
    }
    for (t, weight) in loras {
        let s = weight * t.scale;
        // ax [n, r] = x · Aᵀ;  y += s · ax · Bᵀ
        let mut ax = vec![0f32; n * t.rank];
        if n <= crate::compute::cpu::FEW_ROWS {
            // Decoding, short prompts: rows of dot products (a GEMM call costs more to set
            // up here).
            for (axr, xr) in ax.chunks_exact_mut(t.rank).zip(x.chunks_exact(w.n_in)) {
                for (v, ar) in axr.iter_mut().zip(t.a.chunks_exact(w.n_in)) {
                    *v = s * f32::dot(ar, xr);
                }
            }
            for (yr, axr) in y.chunks_exact_mut(w.n_out).zip(ax.chunks_exact(t.rank)) {
                crate::compute::cpu::gemv_short(&t.b, axr, yr);
            }
            continue;
        }
        matmul(&mut ax, x, Layout::N, &t.a, Layout::T, n, t.rank, w.n_in, false);
        ax.iter_mut().for_each(|v| *v *= s);
        matmul(&mut y, &ax, Layout::N, &t.b, Layout::T, n, w.n_out, t.rank, true);
    }
    Ok(y)
}

/// One linear layer's trainable LoRA factors: A [r, n_in], B [n_out, r], scale s.
#[derive(Clone, Copy)]
pub struct LoraRef<'a, T> {
    pub a: &'a [T],
    pub b: &'a [T],
    pub rank: usize,
    pub scale: T,
}

/// Training forward on a dense (dequantized, frozen) W [n_out, n_in]:
/// y [n, n_out] = x·Wᵀ + bias + s·(x·Aᵀ)·Bᵀ. Returns (y, ax [n, r]); backward reads ax.
pub fn lora_linear_forward<T: Real>(x: &[T], w: &[T], n_in: usize, n_out: usize, bias: Option<&[T]>, lora: Option<LoraRef<T>>) -> (Vec<T>, Vec<T>) {
    let n = x.len() / n_in;
    let mut y = vec![T::zero(); n * n_out];
    matmul(&mut y, x, Layout::N, w, Layout::T, n, n_out, n_in, false);
    if let Some(b) = bias {
        for row in y.chunks_exact_mut(n_out) {
            row.iter_mut().zip(b).for_each(|(v, b)| *v += *b);
        }
    }
    let mut ax = Vec::new();
    if let Some(l) = lora {
        // ax [n, r] = x · Aᵀ
        ax = vec![T::zero(); n * l.rank];
        matmul(&mut ax, x, Layout::N, l.a, Layout::T, n, l.rank, n_in, false);
        // y += s · ax · Bᵀ
        let sax: Vec<T> = ax.iter().map(|v| *v * l.scale).collect();
        matmul(&mut y, &sax, Layout::N, l.b, Layout::T, n, n_out, l.rank, true);
    }
    (y, ax)
}

/// Backward of [`lora_linear_forward`] (W and bias frozen: no dW, no db):
///   dx [n, n_in] += dy·W + s·(dy·B)·A    (when `dx` is given)
///   dB [n_out, r] += s·dyᵀ·ax
///   dA [r, n_in]  += s·(dy·B)ᵀ·x
pub fn lora_linear_backward<T: Real>(dx: Option<&mut [T]>, dy: &[T], x: &[T], w: &[T], n_in: usize, n_out: usize, lora: Option<(LoraRef<T>, &[T], &mut [T], &mut [T])>) {
    let n = dy.len() / n_out;
    if let Some((l, ax, da, db)) = lora {
        // dyb [n, r] = s · dy · B
        let mut dyb_s = vec![T::zero(); n * l.rank];
        matmul(&mut dyb_s, dy, Layout::N, l.b, Layout::N, n, l.rank, n_out, false);
        dyb_s.iter_mut().for_each(|v| *v = *v * l.scale);
        // dB += s · dyᵀ · ax
        let sax: Vec<T> = ax.iter().map(|v| *v * l.scale).collect();
        matmul(db, dy, Layout::T, &sax, Layout::N, n_out, l.rank, n, true);
        // dA += (s · dy · B)ᵀ · x
        matmul(da, &dyb_s, Layout::T, x, Layout::N, l.rank, n_in, n, true);
        if let Some(dx) = dx {
            matmul(dx, dy, Layout::N, w, Layout::N, n, n_in, n_out, true);
            matmul(dx, &dyb_s, Layout::N, l.a, Layout::N, n, n_in, l.rank, true);
        }
        return;
    }
    if let Some(dx) = dx {
        matmul(dx, dy, Layout::N, w, Layout::N, n, n_in, n_out, true);
    }
}
