// SwiGLU in place on the gate: g[i] = silu(g[i]) · u[i], silu(g) = g / (1 + e^(−g));
// with `gelu` = 1, GeGLU (gemma3): gelu(g) = ½·g·(1 + tanh(√(2/π)·(g + 0.044715·g³))).
struct Params {
    len: u32,
    gelu: u32,
    _pad1: u32,
    _pad2: u32,
}

@group(0) @binding(0) var<storage, read_write> g: array<f32>;
@group(0) @binding(1) var<storage, read> u: array<f32>;
@group(0) @binding(2) var<uniform> params: Params;

@compute @workgroup_size(256)
fn main(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let idx = gid.x + gid.y * nwg.x * 256u;
    if (idx >= params.len) {
        return;
    }
    let v = g[idx];
    if (params.gelu == 1u) {
        g[idx] = 0.5 * v * (1.0 + tanh(0.7978845608028654 * (v + 0.044715 * v * v * v))) * u[idx];
    } else {
        g[idx] = v / (1.0 + exp(-v)) * u[idx];
    }
}
