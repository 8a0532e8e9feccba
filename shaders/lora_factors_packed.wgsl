// LoRA factors as f16 pairs packed in u32 (no SHADER_F16 needed): the same bytes as
// array<f16>, unpacked with unpack2x16float.
@group(0) @binding(0) var<storage, read> a: array<u32>;
@group(0) @binding(1) var<storage, read> b: array<u32>;

fn a_at(k: u32) -> f32 {
    let pair = unpack2x16float(a[k >> 1u]);
    return select(pair.x, pair.y, (k & 1u) == 1u);
}

fn b_at(k: u32) -> f32 {
    let pair = unpack2x16float(b[k >> 1u]);
    return select(pair.x, pair.y, (k & 1u) == 1u);
}
