// acc[o, i] += scale · Σ_j B[o, j] · A[j, i] for a chunk of rows of a [n_out, n_in]
// weight; A [rank, n_in] and B [n_out, rank] are f16 packed two per u32 (read with
// unpack2x16float, so no SHADER_F16 feature is needed). One thread per output element.
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

@group(0) @binding(0) var<storage, read> a: array<u32>;
@group(0) @binding(1) var<storage, read> b: array<u32>;
@group(0) @binding(2) var<storage, read_write> acc: array<f32>;
@group(0) @binding(3) var<uniform> params: Params;

fn half_at(buf_is_a: bool, k: u32) -> f32 {
    var word: u32;
    if (buf_is_a) {
        word = a[k >> 1u];
    } else {
        word = b[k >> 1u];
    }
    let pair = unpack2x16float(word);
    return select(pair.x, pair.y, (k & 1u) == 1u);
}

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
        sum = sum + half_at(false, (params.row0 + o) * params.rank + j) * half_at(true, j * params.n_in + i);
    }
    acc[idx] = acc[idx] + params.scale * sum;
}
