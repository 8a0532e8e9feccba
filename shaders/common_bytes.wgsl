// Shared helpers (prepended to the block shaders): GGUF block bytes are uploaded as
// array<u32> (little-endian, zero-padded to a multiple of 4) because blocks of 18, 34,
// 110 or 210 bytes are not 4-byte aligned. `X_value(base, j)` is element j of the block
// of format X starting at byte `base`, written from the scalar reference
// (src/quant/reference.rs) with its operations in the same order.
fn byte_at(i: u32) -> u32 {
    return (src[i >> 2u] >> ((i & 3u) * 8u)) & 0xffu;
}

fn f16_at(i: u32) -> f32 {
    return unpack2x16float(byte_at(i) | (byte_at(i + 1u) << 8u)).x;
}

fn i8_at(i: u32) -> i32 {
    return i32(byte_at(i) << 24u) >> 24u;
}

fn u32_at(i: u32) -> u32 {
    return byte_at(i) | (byte_at(i + 1u) << 8u) | (byte_at(i + 2u) << 16u) | (byte_at(i + 3u) << 24u);
}

// The 32-wide formats, j in 0..32.
fn q4_0_value(base: u32, j: u32) -> f32 {
    let b = byte_at(base + 2u + (j % 16u));
    let q = select(b & 0xfu, b >> 4u, j >= 16u);
    return (f32(q) - 8.0) * f16_at(base);
}

fn q4_1_value(base: u32, j: u32) -> f32 {
    let b = byte_at(base + 4u + (j % 16u));
    let q = select(b & 0xfu, b >> 4u, j >= 16u);
    return f32(q) * f16_at(base) + f16_at(base + 2u);
}

fn q5_0_value(base: u32, j: u32) -> f32 {
    let b = byte_at(base + 6u + (j % 16u));
    let lo = select(b & 0xfu, b >> 4u, j >= 16u);
    let hi = ((u32_at(base + 2u) >> j) & 1u) << 4u;
    return f32(i32(lo | hi) - 16) * f16_at(base);
}

fn q5_1_value(base: u32, j: u32) -> f32 {
    let b = byte_at(base + 8u + (j % 16u));
    let lo = select(b & 0xfu, b >> 4u, j >= 16u);
    let hi = ((u32_at(base + 4u) >> j) & 1u) << 4u;
    return f32(lo | hi) * f16_at(base) + f16_at(base + 2u);
}

fn q8_0_value(base: u32, j: u32) -> f32 {
    let q = i32(byte_at(base + 2u + j) << 24u) >> 24u;
    return f32(q) * f16_at(base);
}

// F16, BF16 and F32: "blocks" of one value (j = 0).
fn f16_value(base: u32, j: u32) -> f32 {
    return f16_at(base + 2u * j);
}

fn f32_value(base: u32, j: u32) -> f32 {
    return bitcast<f32>(src[(base >> 2u) + j]);
}

fn bf16_value(base: u32, j: u32) -> f32 {
    let i = base + 2u * j;
    return bitcast<f32>((byte_at(i) | (byte_at(i + 1u) << 8u)) << 16u);
}

// The K-quants, super-blocks of 256, j in 0..256.

// Q2_K: scales[16] @0, qs[64] @16, d @80, dmin @82. Sub-block is = 16 values sharing a
// 4-bit scale (low nibble) and min (high nibble); 2-bit values, four per byte.
fn q2_k_value(base: u32, j: u32) -> f32 {
    let n = j / 128u;
    let s = (j % 128u) / 32u;
    let r = j % 32u;
    let sc = byte_at(base + n * 8u + s * 2u + r / 16u);
    let q = (byte_at(base + 16u + n * 32u + r) >> (2u * s)) & 3u;
    let dl = f16_at(base + 80u) * f32(sc & 0xfu);
    let ml = f16_at(base + 82u) * f32(sc >> 4u);
    return dl * f32(q) - ml;
}

// Q3_K: hmask[32] @0, qs[64] @32, scales[12] @96 (16 6-bit scales), d @108.
fn q3_k_value(base: u32, j: u32) -> f32 {
    let n = j / 128u;
    let s = (j % 128u) / 32u;
    let r = j % 32u;
    let is = n * 8u + s * 2u + r / 16u;
    let lo = select(byte_at(base + 96u + is) & 0xfu, byte_at(base + 96u + is - 8u) >> 4u, is >= 8u);
    let hi = (byte_at(base + 96u + 8u + is % 4u) >> (2u * (is / 4u))) & 3u;
    let dl = f16_at(base + 108u) * f32(i32(lo | (hi << 4u)) - 32);
    let q = i32((byte_at(base + 32u + n * 32u + r) >> (2u * s)) & 3u);
    let h = select(4, 0, (byte_at(base + r) & (1u << (n * 4u + s))) != 0u);
    return dl * f32(q - h);
}

// Q4_K/Q5_K: the 6-bit scale (.x) and min (.y) of sub-block `sub` (0..8) from the 12
// packed bytes at `at`.
fn scale_min_k4(at: u32, sub: u32) -> vec2<u32> {
    if (sub < 4u) {
        return vec2<u32>(byte_at(at + sub) & 63u, byte_at(at + sub + 4u) & 63u);
    }
    let sc = (byte_at(at + sub + 4u) & 0xfu) | ((byte_at(at + sub - 4u) >> 6u) << 4u);
    let m = (byte_at(at + sub + 4u) >> 4u) | ((byte_at(at + sub) >> 6u) << 4u);
    return vec2<u32>(sc, m);
}

// Q4_K: d @0, dmin @2, scales[12] @4, qs[128] @16; 8 sub-blocks of 32.
fn q4_k_value(base: u32, j: u32) -> f32 {
    let n = j / 64u;
    let hi_half = (j % 64u) >= 32u;
    let sm = scale_min_k4(base + 4u, 2u * n + select(0u, 1u, hi_half));
    let b = byte_at(base + 16u + n * 32u + j % 32u);
    let q = select(b & 0xfu, b >> 4u, hi_half);
    let dl = f16_at(base) * f32(sm.x);
    let ml = f16_at(base + 2u) * f32(sm.y);
    return dl * f32(q) - ml;
}

// Q5_K: d @0, dmin @2, scales[12] @4, qh[32] @16, qs[128] @48.
fn q5_k_value(base: u32, j: u32) -> f32 {
    let n = j / 64u;
    let hi_half = (j % 64u) >= 32u;
    let l = j % 32u;
    let sm = scale_min_k4(base + 4u, 2u * n + select(0u, 1u, hi_half));
    let b = byte_at(base + 48u + n * 32u + l);
    let bit = 1u << (2u * n + select(0u, 1u, hi_half));
    let q = select(b & 0xfu, b >> 4u, hi_half) + select(0u, 16u, (byte_at(base + 16u + l) & bit) != 0u);
    let dl = f16_at(base) * f32(sm.x);
    let ml = f16_at(base + 2u) * f32(sm.y);
    return dl * f32(q) - ml;
}

// Q6_K: ql[128] @0, qh[64] @128, scales[16] (i8) @192, d @208; value = d·sc·(q − 32).
fn q6_k_value(base: u32, j: u32) -> f32 {
    let n = j / 128u;
    let quarter = (j % 128u) / 32u;
    let l = j % 32u;
    let lb = byte_at(base + n * 64u + l + 32u * (quarter % 2u));
    let lo = select(lb & 0xfu, lb >> 4u, quarter >= 2u);
    let hi = (byte_at(base + 128u + n * 32u + l) >> (2u * quarter)) & 3u;
    let q = i32(lo | (hi << 4u)) - 32;
    let sc = i8_at(base + 192u + n * 8u + l / 16u + 2u * quarter);
    return f16_at(base + 208u) * f32(sc) * f32(q);
}
