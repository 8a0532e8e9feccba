// out[out_base + r·out_stride + o] (+)= scale · Σ_i x[x_base + r·n_in + i] · m[o, i], with
// m [n_out, n_in]
// f32: the two products of a LoRA adapter on the fly (t = s·x·Aᵀ, then y += t·Bᵀ).
// One thread per output.
struct Params {
    n_x: u32,
    n_out: u32,
    n_in: u32,
    accumulate: u32,
    out_stride: u32,
    out_base: u32,
    scale: f32,
    x_base: u32,
}

@group(0) @binding(0) var<storage, read> x: array<f32>;
@group(0) @binding(1) var<storage, read> m: array<f32>;
@group(0) @binding(2) var<storage, read_write> out: array<f32>;
@group(0) @binding(3) var<uniform> params: Params;

@compute @workgroup_size(256)
fn main(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let idx = gid.x + gid.y * nwg.x * 256u;
    if (idx >= params.n_x * params.n_out) {
        return;
    }
    let r = idx / params.n_out;
    let o = idx % params.n_out;
    var sum = 0.0;
    for (var i = 0u; i < params.n_in; i = i + 1u) {
        sum = sum + x[params.x_base + r * params.n_in + i] * m[o * params.n_in + i];
    }
    let at = params.out_base + r * params.out_stride + o;
    if (params.accumulate != 0u) {
        out[at] = out[at] + params.scale * sum;
    } else {
        out[at] = params.scale * sum;
    }
}
