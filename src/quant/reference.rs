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
        y.iter_mut().zip(&b.qs).for_each(|(y, &q)| *y = f32::from(q) * d);
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

/// Q4_K/Q5_K: the 6-bit scale and min of sub-block `j` from the packed 12 bytes.
pub(crate) fn scale_min_k4(j: usize, q: &[u8; K_SCALE_SIZE]) -> (u8, u8) {
    if j < 4 {
        (q[j] & 63, q[j + 4] & 63)
    } else {
        ((q[j + 4] & 0x0f) | ((q[j - 4] >> 6) << 4), (q[j + 4] >> 4) | ((q[j] >> 6) << 4))
    }
}

pub fn dequantize_q2_k(blocks: &[BlockQ2K], out: &mut [f32]) {
    for (b, y) in blocks.iter().zip(out.chunks_exact_mut(QK_K)) {
        let (d, min) = (b.d.to_f32(), b.dmin.to_f32());
        let mut k = 0;
        let mut is = 0;
        for n in 0..QK_K / 128 {
            let q = &b.qs[n * 32..n * 32 + 32];
            for shift in (0..8).step_by(2) {
                for half in 0..2 {
                    let sc = b.scales[is];
                    is += 1;
                    let (dl, ml) = (d * f32::from(sc & 0x0f), min * f32::from(sc >> 4));
                    for l in 0..16 {
                        y[k] = dl * f32::from((q[half * 16 + l] >> shift) & 3) - ml;
                        k += 1;
                    }
                }
            }
        }
    }
}

/// Q3_K: the 16 6-bit scales (as stored, before the −32) unpacked from 12 bytes.
pub(crate) fn q3_k_scales(packed: &[u8; 12]) -> [i8; 16] {
    const KMASK1: u32 = 0x0303_0303;
    const KMASK2: u32 = 0x0f0f_0f0f;
    let mut aux = [0u32; 4];
    for (i, a) in aux.iter_mut().take(3).enumerate() {
        *a = u32::from_le_bytes(packed[i * 4..i * 4 + 4].try_into().expect("4 bytes"));
    }
    let tmp = aux[2];
    aux[2] = ((aux[0] >> 4) & KMASK2) | (((tmp >> 4) & KMASK1) << 4);
    aux[3] = ((aux[1] >> 4) & KMASK2) | (((tmp >> 6) & KMASK1) << 4);
    aux[0] = (aux[0] & KMASK2) | ((tmp & KMASK1) << 4);
    aux[1] = (aux[1] & KMASK2) | (((tmp >> 2) & KMASK1) << 4);
    let mut out = [0i8; 16];
    for (o, b) in out.iter_mut().zip(aux.iter().flat_map(|a| a.to_le_bytes())) {
        *o = b as i8;
    }
    out
}

pub fn dequantize_q3_k(blocks: &[BlockQ3K], out: &mut [f32]) {
    for (b, y) in blocks.iter().zip(out.chunks_exact_mut(QK_K)) {
        let d_all = b.d.to_f32();
        let scales = q3_k_scales(&b.scales);
        let mut k = 0;
        let mut is = 0;
        let mut m = 1u8;
        for n in 0..QK_K / 128 {
            let q = &b.qs[n * 32..n * 32 + 32];
            for shift in (0..8).step_by(2) {
                for half in 0..2 {
                    let dl = d_all * f32::from(scales[is] as i32 as i16 - 32);
                    is += 1;
                    for l in 0..16 {
                        let i = half * 16 + l;
                        let hi = if b.hmask[i] & m != 0 { 0 } else { 4 };
                        y[k] = dl * f32::from(((q[i] >> shift) & 3) as i8 - hi);
                        k += 1;
                    }
                }
                m <<= 1;
            }
        }
    }
}

pub fn dequantize_q4_k(blocks: &[BlockQ4K], out: &mut [f32]) {
    for (b, y) in blocks.iter().zip(out.chunks_exact_mut(QK_K)) {
        let (d, min) = (b.d.to_f32(), b.dmin.to_f32());
        for (n, yy) in y.chunks_exact_mut(64).enumerate() {
            let (s1, m1) = scale_min_k4(2 * n, &b.scales);
            let (s2, m2) = scale_min_k4(2 * n + 1, &b.scales);
            let (d1, m1) = (d * f32::from(s1), min * f32::from(m1));
            let (d2, m2) = (d * f32::from(s2), min * f32::from(m2));
            let q = &b.qs[n * 32..n * 32 + 32];
            for l in 0..32 {
                yy[l] = d1 * f32::from(q[l] & 0x0f) - m1;
                yy[l + 32] = d2 * f32::from(q[l] >> 4) - m2;
            }
        }
    }
}

pub fn dequantize_q5_k(blocks: &[BlockQ5K], out: &mut [f32]) {
    for (b, y) in blocks.iter().zip(out.chunks_exact_mut(QK_K)) {
        let (d, min) = (b.d.to_f32(), b.dmin.to_f32());
        let (mut u1, mut u2) = (1u8, 2u8);
        for (n, yy) in y.chunks_exact_mut(64).enumerate() {
            let (s1, m1) = scale_min_k4(2 * n, &b.scales);
            let (s2, m2) = scale_min_k4(2 * n + 1, &b.scales);
            let (d1, m1) = (d * f32::from(s1), min * f32::from(m1));
            let (d2, m2) = (d * f32::from(s2), min * f32::from(m2));
            let ql = &b.qs[n * 32..n * 32 + 32];
            for l in 0..32 {
                let h1 = if b.qh[l] & u1 != 0 { 16 } else { 0 };
                let h2 = if b.qh[l] & u2 != 0 { 16 } else { 0 };
                yy[l] = d1 * f32::from((ql[l] & 0x0f) + h1) - m1;
                yy[l + 32] = d2 * f32::from((ql[l] >> 4) + h2) - m2;
            }
            u1 <<= 2;
            u2 <<= 2;
        }
    }
}

pub fn dequantize_q6_k(blocks: &[BlockQ6K], out: &mut [f32]) {
    for (b, y) in blocks.iter().zip(out.chunks_exact_mut(QK_K)) {
        let d = b.d.to_f32();
        for (n, yy) in y.chunks_exact_mut(128).enumerate() {
            let ql = &b.ql[n * 64..n * 64 + 64];
            let qh = &b.qh[n * 32..n * 32 + 32];
            let sc = &b.scales[n * 8..n * 8 + 8];
            for l in 0..32 {
                let is = l / 16;
                let q1 = ((ql[l] & 0x0f) | ((qh[l] & 3) << 4)) as i8 - 32;
                let q2 = ((ql[l + 32] & 0x0f) | (((qh[l] >> 2) & 3) << 4)) as i8 - 32;
                let q3 = ((ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4)) as i8 - 32;
                let q4 = ((ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4)) as i8 - 32;
                yy[l] = d * f32::from(sc[is]) * f32::from(q1);
                yy[l + 32] = d * f32::from(sc[is + 2]) * f32::from(q2);
                yy[l + 64] = d * f32::from(sc[is + 4]) * f32::from(q3);
                yy[l + 96] = d * f32::from(sc[is + 6]) * f32::from(q4);
            }
        }
    }
}
