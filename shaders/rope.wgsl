// RoPE in place on rows t[t_base + r·n_heads·head_dim ..] (q, or k inside the KV cache):
// each head's pair (a, b) rotated by the angle whose (cos, sin) is cs[r, i] (computed on
// the host in f64 for this batch's positions). Pairs: (2i, 2i+1), or (i, i + half) NeoX.
struct Params {
    n_rows: u32,
    n_heads: u32,
    head_dim: u32,
    half: u32,
    neox: u32,
    t_base: u32,
    _pad0: u32,
    _pad1: u32,
}

@group(0) @binding(0) var<storage, read_write> t: array<f32>;
@group(0) @binding(1) var<storage, read> cs: array<f32>;
@group(0) @binding(2) var<uniform> params: Params;

@compute @workgroup_size(256)
fn main(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let idx = gid.x + gid.y * nwg.x * 256u;
    let per_row = params.n_heads * params.half;
    if (idx >= params.n_rows * per_row) {
        return;
    }
    let r = idx / per_row;
    let h = (idx % per_row) / params.half;
    let i = idx % params.half;
    var a = 2u * i;
    var b = 2u * i + 1u;
    if (params.neox != 0u) {
        a = i;
        b = i + params.half;
    }
    let base = params.t_base + (r * params.n_heads + h) * params.head_dim;
    let c = cs[(r * params.half + i) * 2u];
    let s = cs[(r * params.half + i) * 2u + 1u];
    let x0 = t[base + a];
    let x1 = t[base + b];
    t[base + a] = x0 * c - x1 * s;
    t[base + b] = x0 * s + x1 * c;
}
