// Shared helpers (prepended to the dequantize and matmul shaders): GGUF block bytes are
// uploaded as array<u32> (little-endian, zero-padded to a multiple of 4) because blocks
// of 18 or 34 bytes are not 4-byte aligned.
fn byte_at(i: u32) -> u32 {
    return (src[i >> 2u] >> ((i & 3u) * 8u)) & 0xffu;
}

fn f16_at(i: u32) -> f32 {
    return unpack2x16float(byte_at(i) | (byte_at(i + 1u) << 8u)).x;
}

// Element `j` (0..32) of the block starting at byte `base`, for each 32-wide format.
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

fn q8_0_value(base: u32, j: u32) -> f32 {
    let q = i32(byte_at(base + 2u + j) << 24u) >> 24u;
    return f32(q) * f16_at(base);
}

// F16 and F32 rows, read as 32-value "blocks" of 64 and 128 bytes.
fn f16_value(base: u32, j: u32) -> f32 {
    return f16_at(base + 2u * j);
}

fn f32_value(base: u32, j: u32) -> f32 {
    return bitcast<f32>(src[(base >> 2u) + j]);
}
