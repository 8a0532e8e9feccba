//! GPTQ (Frantar et al., 2022) for merge: writes W + ΔW back into the blocks the base
//! already has, keeping each block's grid (scale, and min for Q4_1) and choosing only the
//! codes, so that the layer's *outputs* on calibration inputs stay close to those of
//! W + ΔW — not each weight on its own.
//!
//! Why codes only: a LoRA delta is mostly smaller than half a grid step, so rounding each
//! merged weight to its grid gives the base back (the adapter is lost), and new grids move
//! every weight of the block (noise the on-the-fly model never had). Error feedback keeps
//! the old grids and carries each weight's rounding error onto the weights not yet
//! rounded, in the directions the inputs do not see.
//!
//! The algorithm, per output row (rows are independent, run in parallel): with
//! H = XᵀX + λ·I over calibration inputs X [tokens, n_in] and H⁻¹ = UᵀU (U upper
//! triangular), columns are rounded in order of decreasing H_jj ("act order"); after
//! rounding column i with error e, row i of U scaled by e / U_ii is subtracted from the
//! columns after it. This minimizes ‖(W − Q)·Xᵀ‖² greedily.

use nalgebra::DMatrix;
use rayon::prelude::*;

use super::blocks::{BlockQ4_0, BlockQ4_1, BlockQ8_0, QK};
use crate::compute::dense::{matmul, Layout};
use crate::gguf::GgmlType;

/// Why GPTQ could not run.
#[derive(Debug, thiserror::Error)]
pub enum GptqError {
    #[error("GPTQ keeps the base's Q4_0, Q4_1 or Q8_0 blocks, not {0}")]
    Unsupported(GgmlType),
    #[error("GPTQ inputs: {0}")]
    Inputs(String),
}

/// The types whose blocks GPTQ re-codes.
pub fn supports(t: GgmlType) -> bool {
    matches!(t, GgmlType::Q4_0 | GgmlType::Q4_1 | GgmlType::Q8_0)
}

/// XᵀX of one layer input, summed over calibration rows.
pub struct InputStats {
    n: usize,
    rows: usize,
    /// [n, n] row-major, f32 sums of the rows flushed so far.
    xtx: Vec<f32>,
    /// Rows not yet summed: added in batches of at least [`FLUSH_ROWS`] (a product per
    /// handful of rows would be memory-bound on the n × n sums).
    pending: Vec<f32>,
}

/// Rows [`InputStats`] gathers before adding them to XᵀX.
const FLUSH_ROWS: usize = 256;

impl InputStats {
    pub fn new(n: usize) -> InputStats {
        InputStats { n, rows: 0, xtx: vec![0.0; n * n], pending: Vec::new() }
    }

    /// Adds the rows of `x` [rows, n].
    pub fn add(&mut self, x: &[f32]) {
        self.rows += x.len() / self.n;
        self.pending.extend_from_slice(&x[..x.len() / self.n * self.n]);
        if self.pending.len() >= FLUSH_ROWS * self.n {
            self.flush();
        }
    }

    fn flush(&mut self) {
        let rows = self.pending.len() / self.n;
        // xtx [n, n] += xᵀ [n, rows] · x [rows, n]
        matmul(&mut self.xtx, &self.pending, Layout::T, &self.pending, Layout::N, self.n, self.n, rows, true);
        self.pending.clear();
    }

    /// Input rows seen.
    pub fn rows(&self) -> usize {
        self.rows
    }

    pub fn n(&self) -> usize {
        self.n
    }
}

/// What the column loop needs from H: the order columns are rounded in and U
/// (H⁻¹ = UᵀU) in that order.
pub struct Factor {
    n: usize,
    /// perm[i]: the column rounded i-th.
    perm: Vec<usize>,
    /// [n, n] row-major, upper triangle used.
    u: Vec<f32>,
}

impl Factor {
    /// From the inputs' XᵀX, with `damp` times the mean of its diagonal added to the
    /// diagonal. Inputs that were always zero get H_jj = 1 (their columns round plainly).
    pub fn new(mut stats: InputStats, damp: f64) -> Result<Factor, GptqError> {
        stats.flush();
        let n = stats.n;
        if stats.rows == 0 {
            return Err(GptqError::Inputs("no calibration rows".into()));
        }
        let diag: Vec<f64> = (0..n).map(|j| f64::from(stats.xtx[j * n + j])).collect();
        let mean = diag.iter().sum::<f64>() / n as f64;
        let mut perm: Vec<usize> = (0..n).collect();
        perm.sort_by(|&a, &b| diag[b].total_cmp(&diag[a]));
        // With J the order reversal: J·H·J = L·Lᵀ (Cholesky), so H⁻¹ = (J·L⁻¹·J)ᵀ·(J·L⁻¹·J)
        // and U = J·L⁻¹·J is upper triangular — one factorization and one triangular
        // inverse, no full inverse.
        let at = |i: usize| perm[n - 1 - i];
        let mut h = DMatrix::<f64>::from_fn(n, n, |i, j| f64::from(stats.xtx[at(i) * n + at(j)]));
        for i in 0..n {
            if h[(i, i)] <= 0.0 {
                h[(i, i)] = 1.0;
            }
            h[(i, i)] += damp * mean.max(1e-12);
        }
        let l = h.cholesky().ok_or_else(|| GptqError::Inputs("XᵀX + λI is not positive definite".into()))?.unpack();
        // m = L⁻¹ (lower), row by row: m[i] = (e_i − Σ_{k<i} L[i,k]·m[k]) / L[i,i]
        let mut m = vec![0f64; n * n];
        for i in 0..n {
            let (done, rest) = m.split_at_mut(i * n);
            let row = &mut rest[..n];
            row[i] = 1.0;
            for k in 0..i {
                let c = l[(i, k)];
                row[..=k].iter_mut().zip(&done[k * n..k * n + k + 1]).for_each(|(r, v)| *r -= c * v);
            }
            let inv = 1.0 / l[(i, i)];
            row[..=i].iter_mut().for_each(|r| *r *= inv);
        }
        let mut u = vec![0f32; n * n];
        for i in 0..n {
            for j in i..n {
                u[i * n + j] = m[(n - 1 - i) * n + (n - 1 - j)] as f32;
            }
        }
        Ok(Factor { n, perm, u })
    }
}

/// A block's grid: value(q) = q·d + m for q in 0..=top.
#[derive(Clone, Copy)]
struct Grid {
    d: f32,
    m: f32,
    top: f32,
}

impl Grid {
    /// The nearest code to `v` and its value.
    fn round(self, v: f32) -> (u8, f32) {
        let q = if self.d != 0.0 { ((v - self.m) / self.d).round().clamp(0.0, self.top) } else { 0.0 };
        (q as u8, q * self.d + self.m)
    }
}

/// Re-codes `w` [n_out, n_in] (the merged values) into the grids of `original` (the
/// tensor's pre-merge blocks, type `t`) with GPTQ under `f`. Returns the new blocks'
/// bytes: same grids, new codes.
pub fn recode(t: GgmlType, original: &[u8], w: &[f32], n_in: usize, f: &Factor) -> Result<Vec<u8>, GptqError> {
    if !supports(t) {
        return Err(GptqError::Unsupported(t));
    }
    let bs = t.type_size() as usize;
    let blocks = n_in / QK;
    if f.n != n_in || !n_in.is_multiple_of(QK) || !w.len().is_multiple_of(n_in) || original.len() != w.len() / QK * bs {
        return Err(GptqError::Inputs(format!("H of {} inputs, rows of {n_in}, {} values, {} bytes of {t}", f.n, w.len(), original.len())));
    }
    let grid = |b: &[u8]| -> Grid {
        match t {
            GgmlType::Q4_1 => {
                let blk: BlockQ4_1 = bytemuck::pod_read_unaligned(b);
                Grid { d: blk.d.to_f32(), m: blk.m.to_f32(), top: 15.0 }
            }
            GgmlType::Q4_0 => {
                let d = bytemuck::pod_read_unaligned::<BlockQ4_0>(b).d.to_f32();
                Grid { d, m: -8.0 * d, top: 15.0 }
            }
            _ => {
                let d = bytemuck::pod_read_unaligned::<BlockQ8_0>(b).d.to_f32();
                Grid { d, m: -128.0 * d, top: 255.0 }
            }
        }
    };
    let mut out = original.to_vec();
    out.par_chunks_mut(blocks * bs).zip(w.par_chunks(n_in)).for_each(|(row_bytes, row)| {
        let grids: Vec<Grid> = row_bytes.chunks(bs).map(grid).collect();
        // v: the row in rounding order, updated as errors are carried forward.
        let mut v: Vec<f32> = f.perm.iter().map(|&j| row[j]).collect();
        let mut codes = vec![0u8; n_in];
        for i in 0..n_in {
            let j = f.perm[i];
            let (q, value) = grids[j / QK].round(v[i]);
            codes[j] = q;
            let urow = &f.u[i * n_in..(i + 1) * n_in];
            let e = (v[i] - value) / urow[i];
            v[i + 1..].iter_mut().zip(&urow[i + 1..]).for_each(|(x, u)| *x -= e * u);
        }
        for (b, blk) in row_bytes.chunks_mut(bs).enumerate() {
            let c = &codes[b * QK..(b + 1) * QK];
            match t {
                // codes after the header: [d] or [d, m] (f16 each)
                GgmlType::Q8_0 => blk[2..].iter_mut().zip(c).for_each(|(o, &q)| *o = (i16::from(q) - 128) as i8 as u8),
                _ => {
                    let head = if t == GgmlType::Q4_1 { 4 } else { 2 };
                    for k in 0..QK / 2 {
                        blk[head + k] = c[k] | (c[k + QK / 2] << 4);
                    }
                }
            }
        }
    });
    Ok(out)
}

/// ‖(W − Q)·Xᵀ‖² for values `w` and their quantization `q` (both [n_out, n_in]) under
/// inputs `x` [rows, n_in]: the output error GPTQ minimizes.
pub fn output_error(w: &[f32], q: &[f32], x: &[f32], n_in: usize) -> f64 {
    let diff: Vec<f64> = w.iter().zip(q).map(|(a, b)| f64::from(*a) - f64::from(*b)).collect();
    let x64: Vec<f64> = x.iter().map(|&v| f64::from(v)).collect();
    let (n_out, rows) = (w.len() / n_in, x.len() / n_in);
    let mut y = vec![0f64; rows * n_out];
    // y [rows, n_out] = x [rows, n_in] · diffᵀ [n_in, n_out]
    matmul(&mut y, &x64, Layout::N, &diff, Layout::T, rows, n_out, n_in, false);
    y.iter().map(|v| v * v).sum()
}
