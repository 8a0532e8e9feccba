// LoRA factors as native f16 (adapters with SHADER_F16), accumulated in f32.
enable f16;

@group(0) @binding(0) var<storage, read> a: array<f16>;
@group(0) @binding(1) var<storage, read> b: array<f16>;

fn a_at(k: u32) -> f32 {
    return f32(a[k]);
}

fn b_at(k: u32) -> f32 {
    return f32(b[k]);
}
