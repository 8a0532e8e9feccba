// y[y_base + r·y_stride + o] (+)= Σ_i x[r, i] · W[o, i] for a weight W [n_out, n_in] in a
// block format (rows of n_in / BLOCK_ELEMS blocks of BLOCK_BYTES, decoded on the fly by
// `block_value`, from the prelude the backend prepends). One thread per output.
// `y_stride`/`y_base` let the native engine write into a wider buffer (a chunk of output
// columns, or its KV cache); `accumulate` adds to y instead (the residual stream).
// Params and bindings: weight_product.wgsl.

@compute @workgroup_size(256)
fn main(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let idx = gid.x + gid.y * nwg.x * 256u;
    if (idx >= params.n_x * params.n_out) {
        return;
    }
    let r = idx / params.n_out;
    let o = idx % params.n_out;
    var sum = 0.0;
    for (var b = 0u; b < params.n_in / BLOCK_ELEMS; b = b + 1u) {
        let base = o * params.row_bytes + b * BLOCK_BYTES;
        let xb = r * params.n_in + b * BLOCK_ELEMS;
        for (var j = 0u; j < BLOCK_ELEMS; j = j + 1u) {
            sum = sum + block_value(base, j) * x[xb + j];
        }
    }
    let at = params.y_base + r * params.y_stride + o;
    if (params.accumulate != 0u) {
        y[at] = y[at] + sum;
    } else {
        y[at] = sum;
    }
}
