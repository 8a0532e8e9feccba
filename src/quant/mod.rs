//! Block formats: layouts (`blocks`) and dequantization (`reference`, the scalar source
//! of truth, cross-checked bit-exactly against ggml's `to_float` in the test suite).
//!
//! Dequantization covers F32, F16, BF16, Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q2_K, Q3_K, Q4_K,
//! Q5_K and Q6_K. Quantization calls ggml's own quantizer (`ggml_quantize_chunk`, through
//! the sys crate) so that its output is ggml's bit for bit; `requant` adds an
//! error-minimizing quantizer for the 32-wide formats used by merge.

pub mod blocks;
pub mod gptq;
pub mod quantize;
pub mod reference;
pub mod requant;
pub mod simd;

use bytemuck::Zeroable;

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
    use GgmlType::*;
    matches!(t, F32 | F16 | BF16 | Q4_0 | Q4_1 | Q5_0 | Q5_1 | Q8_0 | Q2_K | Q3_K | Q4_K | Q5_K | Q6_K)
}

/// Quantizes `src` (rows of `n_per_row` values) to `t` exactly as llama.cpp's tools do:
/// with ggml's own quantizer (`ggml_quantize_chunk`), or for Q4_1 with our SIMD twin of
/// it (`quantize`), tested byte-identical.
pub fn quantize_ggml(t: GgmlType, src: &[f32], n_per_row: usize) -> Result<Vec<u8>, QuantError> {
    if !can_quantize(t) {
        return Err(QuantError::Unsupported(t));
    }
    let size_err = || QuantError::Size { ggml_type: t, bytes: 0, n: src.len(), expected: 0 };
    if n_per_row == 0 || !src.len().is_multiple_of(n_per_row) {
        return Err(size_err());
    }
    let row_bytes = t.bytes_for(n_per_row as u64).ok_or_else(size_err)? as usize;
    let n_rows = src.len() / n_per_row;
    if t == GgmlType::Q4_1 {
        // Our twin of ggml's Q4_1 reference (same bytes, SIMD): rows in parallel.
        use rayon::prelude::*;
        let mut blocks = vec![blocks::BlockQ4_1::zeroed(); src.len() / blocks::QK];
        blocks.par_chunks_mut(4096).zip(src.par_chunks(4096 * blocks::QK)).for_each(|(b, x)| quantize::quantize_row_q4_1(x, b));
        return Ok(bytemuck::cast_slice(&blocks).to_vec());
    }
    let mut out = vec![0u8; row_bytes * n_rows];
    // Chunks of rows in parallel; ggml's quantizers are pure functions of their rows.
    const ROWS: usize = 64;
    use rayon::prelude::*;
    let written: usize = out
        .par_chunks_mut(row_bytes * ROWS)
        .zip(src.par_chunks(n_per_row * ROWS))
        .map(|(dst, rows)| {
            let n = rows.len() / n_per_row;
            // SAFETY: `rows` holds n × n_per_row floats and `dst` n × row_bytes bytes, the
            // size ggml writes for this type and row length; no importance matrix is
            // passed, which every type accepted by `can_quantize` allows.
            unsafe {
                llama_cpp_sys_2::ggml_quantize_chunk(t as _, rows.as_ptr(), dst.as_mut_ptr().cast(), 0, n as i64, n_per_row as i64, std::ptr::null())
            }
        })
        .sum();
    if written != out.len() {
        return Err(QuantError::Size { ggml_type: t, bytes: written, n: src.len(), expected: out.len() as u64 });
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
