// RMSNorm, one workgroup per row: out[r, :] = x[x_base + r·n ..][:n] · w / sqrt(mean(x²) + eps).
struct Params {
    n: u32,
    rows: u32,
    x_base: u32,
    eps: f32,
}

@group(0) @binding(0) var<storage, read> x: array<f32>;
@group(0) @binding(1) var<storage, read> w: array<f32>;
@group(0) @binding(2) var<storage, read_write> out: array<f32>;
@group(0) @binding(3) var<uniform> params: Params;

var<workgroup> part: array<f32, 64>;

@compute @workgroup_size(64)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) tid: u32) {
    let r = wid.x + wid.y * nwg.x;
    if (r >= params.rows) {
        return;
    }
    let xb = params.x_base + r * params.n;
    var s = 0.0;
    for (var i = tid; i < params.n; i = i + 64u) {
        let v = x[xb + i];
        s = s + v * v;
    }
    part[tid] = s;
    workgroupBarrier();
    for (var step = 32u; step > 0u; step = step >> 1u) {
        if (tid < step) {
            part[tid] = part[tid] + part[tid + step];
        }
        workgroupBarrier();
    }
    let inv = 1.0 / sqrt(part[0] / f32(params.n) + params.eps);
    for (var i = tid; i < params.n; i = i + 64u) {
        out[r * params.n + i] = x[xb + i] * inv * w[i];
    }
}
