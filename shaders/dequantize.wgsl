// Dequantize blocks to f32, one thread per value. The block format comes from the
// prelude the backend prepends: `BLOCK_ELEMS`, `BLOCK_BYTES` and `block_value(base, j)`
// (see common_bytes.wgsl).
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
    dst[idx] = block_value((idx / BLOCK_ELEMS) * BLOCK_BYTES, idx % BLOCK_ELEMS);
}
