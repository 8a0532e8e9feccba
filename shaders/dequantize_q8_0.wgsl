// Dequantize q8_0 blocks (34 bytes per 32 values) to f32, one thread per value.
struct Params {
    n_elements: u32,
    _pad0: u32,
    _pad1: u32,
    _pad2: u32,
}

@group(0) @binding(0) var<storage, read> src: array<u32>;
@group(0) @binding(1) var<storage, read_write> dst: array<f32>;
@group(0) @binding(2) var<uniform> params: Params;

@compute @workgroup_size(256)
fn main(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let idx = gid.x + gid.y * nwg.x * 256u;
    if (idx >= params.n_elements) {
        return;
    }
    dst[idx] = q8_0_value((idx / 32u) * 34u, idx % 32u);
}
