// y[y_base + i] += b[i % period] for i < len: a bias broadcast over rows.
struct Params {
    len: u32,
    period: u32,
    y_base: u32,
    _pad: u32,
}

@group(0) @binding(0) var<storage, read> b: array<f32>;
@group(0) @binding(1) var<storage, read_write> y: array<f32>;
@group(0) @binding(2) var<uniform> params: Params;

@compute @workgroup_size(256)
fn main(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let idx = gid.x + gid.y * nwg.x * 256u;
    if (idx >= params.len) {
        return;
    }
    y[params.y_base + idx] = y[params.y_base + idx] + b[idx % params.period];
}
