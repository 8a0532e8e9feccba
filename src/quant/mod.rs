//! Block formats: layouts (`blocks`) and dequantization (`reference`, the scalar source
//! of truth, cross-checked bit-exactly against ggml's `to_float` in the test suite).
//!
//! Covered today: F32, F16, BF16, Q4_0, Q4_1, Q5_0, Q5_1, Q8_0. The K-quants, SIMD
//! kernels and quantizers belong to the compute-backends issue.

pub mod blocks;
pub mod reference;

use crate::gguf::GgmlType;

/// Why a tensor could not be dequantized.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum QuantError {
    #[error("dequantizing {0} is not supported yet (supported: f32, f16, bf16, q4_0, q4_1, q5_0, q5_1, q8_0)")]
    Unsupported(GgmlType),
    #[error("{ggml_type}: {bytes} bytes do not hold {n} elements (expected {expected} bytes)")]
    Size { ggml_type: GgmlType, bytes: usize, n: usize, expected: u64 },
}

/// Whether [`dequantize`] handles `t`.
pub fn can_dequantize(t: GgmlType) -> bool {
    use GgmlType::*;
    matches!(t, F32 | F16 | BF16 | Q4_0 | Q4_1 | Q5_0 | Q5_1 | Q8_0)
}

/// Dequantizes `bytes` (whole blocks of type `t`) into `out`, whose length is the element
/// count. Sizes are checked; the bytes need no particular alignment.
pub fn dequantize(t: GgmlType, bytes: &[u8], out: &mut [f32]) -> Result<(), QuantError> {
    use GgmlType::*;
    if !can_dequantize(t) {
        return Err(QuantError::Unsupported(t));
    }
    let expected = t.bytes_for(out.len() as u64);
    if expected != Some(bytes.len() as u64) {
        return Err(QuantError::Size { ggml_type: t, bytes: bytes.len(), n: out.len(), expected: expected.unwrap_or(0) });
    }
    // Copy into aligned storage of the block type (mapped tensor data is only 32-byte
    // aligned at its start, and a slice of it may not be); pod_collect_to_vec does that.
    match t {
        F32 => {
            for (y, c) in out.iter_mut().zip(bytes.chunks_exact(4)) {
                *y = f32::from_le_bytes(c.try_into().expect("4 bytes"));
            }
        }
        F16 => reference::dequantize_f16(&bytemuck::pod_collect_to_vec(bytes), out),
        BF16 => reference::dequantize_bf16(&bytemuck::pod_collect_to_vec(bytes), out),
        Q4_0 => reference::dequantize_q4_0(&bytemuck::pod_collect_to_vec(bytes), out),
        Q4_1 => reference::dequantize_q4_1(&bytemuck::pod_collect_to_vec(bytes), out),
        Q5_0 => reference::dequantize_q5_0(&bytemuck::pod_collect_to_vec(bytes), out),
        Q5_1 => reference::dequantize_q5_1(&bytemuck::pod_collect_to_vec(bytes), out),
        Q8_0 => reference::dequantize_q8_0(&bytemuck::pod_collect_to_vec(bytes), out),
        _ => unreachable!("checked by can_dequantize"),
    }
    Ok(())
}
