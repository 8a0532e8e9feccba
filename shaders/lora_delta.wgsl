// acc[o, i] += scale · Σ_j B[o, j] · A[j, i] for a chunk of rows of a [n_out, n_in]
// weight; A [rank, n_in] and B [n_out, rank] are f16. How they are stored comes from the
// prelude the backend prepends (lora_factors_f16.wgsl or lora_factors_packed.wgsl): the
// bindings 0 and 1 and the accessors `a_at(k)`, `b_at(k)`. One thread per output element.
struct Params {
    rows: u32,      // rows of acc in this chunk
    n_in: u32,
    rank: u32,
    row0: u32,      // first row of the chunk (indexes B)
    scale: f32,
    _pad0: u32,
    _pad1: u32,
    _pad2: u32,
}

@group(0) @binding(2) var<storage, read_write> acc: array<f32>;
@group(0) @binding(3) var<uniform> params: Params;

@compute @workgroup_size(256)
fn main(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let idx = gid.x + gid.y * nwg.x * 256u;
    if (idx >= params.rows * params.n_in) {
        return;
    }
    let o = idx / params.n_in;
    let i = idx % params.n_in;
    var sum = 0.0;
    for (var j = 0u; j < params.rank; j = j + 1u) {
        sum = sum + b_at((params.row0 + o) * params.rank + j) * a_at(j * params.n_in + i);
    }
    acc[idx] = acc[idx] + params.scale * sum;
}
