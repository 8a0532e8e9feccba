//! The CPU backend: the SIMD dequantizers from `quant` and rayon over rows.

use rayon::prelude::*;

use super::{check_delta, Backend, ComputeError, Delta};
use crate::gguf::GgmlType;
use crate::quant;

pub struct Cpu;

impl Backend for Cpu {
    fn name(&self) -> String {
        format!("cpu ({})", quant::simd::selected())
    }

    fn dequantize(&self, t: GgmlType, bytes: &[u8], out: &mut [f32]) -> Result<(), ComputeError> {
        Ok(quant::dequantize(t, bytes, out)?)
    }

    fn lora_delta(&self, acc: &mut [f32], n_out: usize, n_in: usize, deltas: &[Delta]) -> Result<(), ComputeError> {
        for d in deltas {
            check_delta(acc, n_out, n_in, d)?;
            acc.par_chunks_mut(n_in).enumerate().for_each(|(o, row)| {
                for j in 0..d.rank {
                    let c = d.scale * d.b[o * d.rank + j];
                    if c == 0.0 {
                        continue;
                    }
                    for (y, x) in row.iter_mut().zip(&d.a[j * n_in..(j + 1) * n_in]) {
                        *y += c * x;
                    }
                }
            });
        }
        Ok(())
    }

    fn matmul(&self, t: GgmlType, w: &[u8], n_out: usize, n_in: usize, x: &[f32], n_x: usize) -> Result<Vec<f32>, ComputeError> {
        let row_bytes = t.bytes_for(n_in as u64).ok_or_else(|| ComputeError::Shape(format!("{n_in} is not a whole number of {t} blocks")))? as usize;
        if w.len() != row_bytes * n_out || x.len() != n_x * n_in {
            return Err(ComputeError::Shape(format!("W {} bytes for [{n_out}, {n_in}] {t}, x {} for [{n_x}, {n_in}]", w.len(), x.len())));
        }
        // Output rows in parallel: each dequantizes its weight row once (SIMD) and dots it
        // with every input row.
        let cols: Vec<Vec<f32>> = w
            .par_chunks(row_bytes)
            .map(|row| {
                let mut buf = vec![0f32; n_in];
                quant::dequantize(t, row, &mut buf)?;
                Ok(x.chunks_exact(n_in).map(|xr| xr.iter().zip(&buf).map(|(a, b)| a * b).sum()).collect())
            })
            .collect::<Result<_, quant::QuantError>>()?;
        let mut y = vec![0f32; n_x * n_out];
        for (o, col) in cols.iter().enumerate() {
            for (r, v) in col.iter().enumerate() {
                y[r * n_out + o] = *v;
            }
        }
        Ok(y)
    }
}
