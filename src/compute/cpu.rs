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
}
