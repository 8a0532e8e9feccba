//! Scalar reference dequantizers, written from ggml's `dequantize_row_*` definitions.
//! Each takes whole blocks and writes `blocks × 32` floats.

use half::{bf16, f16};

use super::blocks::*;

pub fn dequantize_q4_0(blocks: &[BlockQ4_0], out: &mut [f32]) {
    for (b, y) in blocks.iter().zip(out.chunks_exact_mut(QK)) {
        let d = b.d.to_f32();
        for j in 0..QK / 2 {
            y[j] = (i32::from(b.qs[j] & 0x0f) - 8) as f32 * d;
            y[j + QK / 2] = (i32::from(b.qs[j] >> 4) - 8) as f32 * d;
        }
    }
}

pub fn dequantize_q4_1(blocks: &[BlockQ4_1], out: &mut [f32]) {
    for (b, y) in blocks.iter().zip(out.chunks_exact_mut(QK)) {
        let (d, m) = (b.d.to_f32(), b.m.to_f32());
        for j in 0..QK / 2 {
            y[j] = f32::from(b.qs[j] & 0x0f) * d + m;
            y[j + QK / 2] = f32::from(b.qs[j] >> 4) * d + m;
        }
    }
}

pub fn dequantize_q5_0(blocks: &[BlockQ5_0], out: &mut [f32]) {
    for (b, y) in blocks.iter().zip(out.chunks_exact_mut(QK)) {
        let d = b.d.to_f32();
        let qh = u32::from_le_bytes(b.qh);
        for j in 0..QK / 2 {
            let h0 = (((qh >> j) << 4) & 0x10) as u8;
            let h1 = ((qh >> (j + 12)) & 0x10) as u8;
            y[j] = (i32::from((b.qs[j] & 0x0f) | h0) - 16) as f32 * d;
            y[j + QK / 2] = (i32::from((b.qs[j] >> 4) | h1) - 16) as f32 * d;
        }
    }
}

pub fn dequantize_q5_1(blocks: &[BlockQ5_1], out: &mut [f32]) {
    for (b, y) in blocks.iter().zip(out.chunks_exact_mut(QK)) {
        let (d, m) = (b.d.to_f32(), b.m.to_f32());
        let qh = u32::from_le_bytes(b.qh);
        for j in 0..QK / 2 {
            let h0 = (((qh >> j) << 4) & 0x10) as u8;
            let h1 = ((qh >> (j + 12)) & 0x10) as u8;
            y[j] = f32::from((b.qs[j] & 0x0f) | h0) * d + m;
            y[j + QK / 2] = f32::from((b.qs[j] >> 4) | h1) * d + m;
        }
    }
}

pub fn dequantize_q8_0(blocks: &[BlockQ8_0], out: &mut [f32]) {
    for (b, y) in blocks.iter().zip(out.chunks_exact_mut(QK)) {
        let d = b.d.to_f32();
        for j in 0..QK {
            y[j] = f32::from(b.qs[j]) * d;
        }
    }
}

pub fn dequantize_f16(x: &[f16], out: &mut [f32]) {
    for (v, y) in x.iter().zip(out) {
        *y = v.to_f32();
    }
}

pub fn dequantize_bf16(x: &[bf16], out: &mut [f32]) {
    for (v, y) in x.iter().zip(out) {
        *y = v.to_f32();
    }
}
