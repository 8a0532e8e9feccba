// dst[dst_base + i] = src[src_base + i] for i < len: rows moved between buffers (a batch's
// new keys and values into each sequence's KV cache; the rows whose logits are wanted).
struct Params {
    len: u32,
    src_base: u32,
    dst_base: u32,
    _pad: u32,
}

@group(0) @binding(0) var<storage, read> src: array<f32>;
@group(0) @binding(1) var<storage, read_write> dst: array<f32>;
@group(0) @binding(2) var<uniform> params: Params;

@compute @workgroup_size(256)
fn main(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let idx = gid.x + gid.y * nwg.x * 256u;
    if (idx >= params.len) {
        return;
    }
    dst[params.dst_base + idx] = src[params.src_base + idx];
}
