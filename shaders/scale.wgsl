// y[i] *= s for i < len (gemma3's embedding × √n_embd).
struct Params {
    len: u32,
    s: f32,
    _pad0: u32,
    _pad1: u32,
}

@group(0) @binding(0) var<storage, read_write> y: array<f32>;
@group(0) @binding(1) var<uniform> params: Params;

@compute @workgroup_size(256)
fn main(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let idx = gid.x + gid.y * nwg.x * 256u;
    if (idx >= params.len) {
        return;
    }
    y[idx] = y[idx] * params.s;
}
