//! The one linear layer every projection goes through: y = x·Wᵀ + b + Σ sᵢ·(x·Aᵢᵀ)·Bᵢᵀ,
//! with W frozen in its block format and the LoRA factors of the active adapters.

use crate::adapter::LoraTensor;
use crate::compute::cpu::dot;
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
        for (xr, yr) in x.chunks_exact(w.n_in).zip(y.chunks_exact_mut(w.n_out)) {
            // ax [r] = A · x
            let ax: Vec<f32> = t.a.chunks_exact(w.n_in).map(|ar| dot(ar, xr)).collect();
            // y += s · B · ax
            for (o, yo) in yr.iter_mut().enumerate() {
                *yo += s * t.b[o * t.rank..(o + 1) * t.rank].iter().zip(&ax).map(|(b, v)| b * v).sum::<f32>();
            }
        }
    }
    Ok(y)
}
