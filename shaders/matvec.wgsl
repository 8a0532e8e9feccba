// y[y_base + r·y_stride + o] (+)= Σ_i x[r, i] · W[o, i] for up to 4 input rows (decoding):
// one workgroup per output row o, its 64 threads striding over the row's values (adjacent
// threads read adjacent bytes), partial sums reduced in workgroup memory. W in a block
// format decoded by `block_value` (prelude: `BLOCK_ELEMS`, `BLOCK_BYTES`).
// Params and bindings: weight_product.wgsl.

var<workgroup> part: array<vec4<f32>, 64>;

@compute @workgroup_size(64)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) tid: u32) {
    let o = wid.x + wid.y * nwg.x;
    if (o >= params.n_out) {
        return;
    }
    let row = o * params.row_bytes;
    var acc = vec4<f32>(0.0);
    for (var i = tid; i < params.n_in; i = i + 64u) {
        let w = block_value(row + (i / BLOCK_ELEMS) * BLOCK_BYTES, i % BLOCK_ELEMS);
        for (var r = 0u; r < params.n_x; r = r + 1u) {
            acc[r] = acc[r] + w * x[r * params.n_in + i];
        }
    }
    part[tid] = acc;
    workgroupBarrier();
    for (var step = 32u; step > 0u; step = step >> 1u) {
        if (tid < step) {
            part[tid] = part[tid] + part[tid + step];
        }
        workgroupBarrier();
    }
    if (tid < params.n_x) {
        let at = params.y_base + tid * params.y_stride + o;
        let sum = part[0][tid];
        if (params.accumulate != 0u) {
            y[at] = y[at] + sum;
        } else {
            y[at] = sum;
        }
    }
}
