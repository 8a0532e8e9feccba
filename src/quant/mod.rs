//! Block formats: layouts (`blocks`) and dequantization (`reference`, the scalar source
//! of truth, cross-checked bit-exactly against ggml's `to_float` in the test suite).
//!
//! Dequantization covers F32, F16, BF16, Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q2_K, Q3_K, Q4_K,
//! Q5_K and Q6_K. Quantization is ggml's reference quantizers ported (`ggml_ref`), so that
//! its output is ggml's bit for bit without linking llama.cpp; `requant` adds an
//! error-minimizing quantizer for the 32-wide formats used by merge.

pub mod blocks;
pub mod ggml_ref;
pub mod gptq;
pub mod quantize;
pub mod reference;
pub mod requant;
pub mod simd;

use crate::gguf::GgmlType;

/// Why a tensor could not be dequantized.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum QuantError {
    #[error("dequantizing {0} is not supported (supported: f32, f16, bf16, q4_0, q4_1, q5_0, q5_1, q8_0, q2_K..q6_K)")]
    Unsupported(GgmlType),
    #[error("{ggml_type}: {bytes} bytes do not hold {n} elements (expected {expected} bytes)")]
    Size { ggml_type: GgmlType, bytes: usize, n: usize, expected: u64 },
}

/// Types [`quantize_ggml`] writes.
pub fn can_quantize(t: GgmlType) -> bool {
    ggml_ref::supports(t)
}

/// Quantizes `src` (rows of `n_per_row` values) to `t` exactly as llama.cpp's tools do:
/// with [`ggml_ref`], our port of ggml's reference quantizers (the test suite checks its
/// bytes against `ggml_quantize_chunk` for every type), in every build — with or without
/// llama.cpp — so a merge writes the same file either way.
pub fn quantize_ggml(t: GgmlType, src: &[f32], n_per_row: usize) -> Result<Vec<u8>, QuantError> {
    if !can_quantize(t) {
        return Err(QuantError::Unsupported(t));
    }
    let size_err = || QuantError::Size { ggml_type: t, bytes: 0, n: src.len(), expected: 0 };
    if n_per_row == 0 || !src.len().is_multiple_of(n_per_row) || !(n_per_row as u64).is_multiple_of(t.block_size()) {
        return Err(size_err());
    }
    let row_bytes = t.bytes_for(n_per_row as u64).ok_or_else(size_err)? as usize;
    let mut out = vec![0u8; row_bytes * (src.len() / n_per_row)];
    // Chunks of rows in parallel; the quantizers are pure functions of their rows.
    const ROWS: usize = 64;
    use rayon::prelude::*;
    let all_written = out.par_chunks_mut(row_bytes * ROWS).zip(src.par_chunks(n_per_row * ROWS)).all(|(dst, rows)| ggml_ref::quantize_rows(t, rows, n_per_row, dst));
    if !all_written {
        return Err(size_err());
    }
    Ok(out)
}

/// Whether [`dequantize`] handles `t`.
pub fn can_dequantize(t: GgmlType) -> bool {
    use GgmlType::*;
    matches!(t, F32 | F16 | BF16 | Q4_0 | Q4_1 | Q5_0 | Q5_1 | Q8_0 | Q2_K | Q3_K | Q4_K | Q5_K | Q6_K)
}

fn check(t: GgmlType, bytes: &[u8], out: &[f32]) -> Result<(), QuantError> {
    if !can_dequantize(t) {
        return Err(QuantError::Unsupported(t));
    }
    let expected = t.bytes_for(out.len() as u64);
    if expected != Some(bytes.len() as u64) {
        return Err(QuantError::Size { ggml_type: t, bytes: bytes.len(), n: out.len(), expected: expected.unwrap_or(0) });
    }
    Ok(())
}

/// Dequantizes `bytes` (whole blocks of type `t`) into `out`, whose length is the element
/// count, with the SIMD kernel the CPU supports (bit-identical to the reference).
/// Sizes are checked; the bytes need no particular alignment.
pub fn dequantize(t: GgmlType, bytes: &[u8], out: &mut [f32]) -> Result<(), QuantError> {
    check(t, bytes, out)?;
    match simd::kernel(t) {
        Some(k) => {
            k(bytes, out);
            Ok(())
        }
        None => dequantize_reference(t, bytes, out),
    }
}

/// The scalar reference dequantizer (the SIMD kernels' twin and source of truth).
pub fn dequantize_reference(t: GgmlType, bytes: &[u8], out: &mut [f32]) -> Result<(), QuantError> {
    use GgmlType::*;
    check(t, bytes, out)?;
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
        Q2_K => reference::dequantize_q2_k(&bytemuck::pod_collect_to_vec(bytes), out),
        Q3_K => reference::dequantize_q3_k(&bytemuck::pod_collect_to_vec(bytes), out),
        Q4_K => reference::dequantize_q4_k(&bytemuck::pod_collect_to_vec(bytes), out),
        Q5_K => reference::dequantize_q5_k(&bytemuck::pod_collect_to_vec(bytes), out),
        Q6_K => reference::dequantize_q6_k(&bytemuck::pod_collect_to_vec(bytes), out),
        _ => unreachable!("checked by can_dequantize"),
    }
    Ok(())
}
