// Causal grouped-query attention, one workgroup per (query row, head), for query rows
// q0..q0+n_q of one sequence, whose rows start at row0 of q and o (a batch holds several
// sequences) and whose row r sits at position pos0 + r: o = softmax(q·kᵀ·scale) · v over
// keys 0..=pos0+r of its KV cache [pos, n_head_kv, head_dim] — with a sliding `window` (> 0),
// only the last `window` of them (gemma3's local layers). `scores` is scratch
// [n_q, n_head, ctx].
struct Params {
    n_q: u32,
    n_head: u32,
    n_head_kv: u32,
    head_dim: u32,
    pos0: u32,
    q0: u32,
    ctx: u32,
    scale: f32,
    window: u32,
    row0: u32,
    _pad1: u32,
    _pad2: u32,
}

@group(0) @binding(0) var<storage, read> q: array<f32>;
@group(0) @binding(1) var<storage, read> kc: array<f32>;
@group(0) @binding(2) var<storage, read> vc: array<f32>;
@group(0) @binding(3) var<storage, read_write> scores: array<f32>;
@group(0) @binding(4) var<storage, read_write> o: array<f32>;
@group(0) @binding(5) var<uniform> params: Params;

var<workgroup> part: array<f32, 64>;

@compute @workgroup_size(64)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) tid: u32) {
    let w = wid.x + wid.y * nwg.x;
    if (w >= params.n_q * params.n_head) {
        return;
    }
    let hd = params.head_dim;
    let r = params.q0 + w / params.n_head;
    let h = w % params.n_head;
    let kvh = h / (params.n_head / params.n_head_kv);
    let kv_w = params.n_head_kv * hd;
    let n_ctx = params.pos0 + r + 1u;
    var lo = 0u;
    if (params.window > 0u && n_ctx > params.window) {
        lo = n_ctx - params.window;
    }
    let qb = ((params.row0 + r) * params.n_head + h) * hd;
    let sb = w * params.ctx;

    // scores and their max
    var m = -3.4e38;
    for (var t = lo + tid; t < n_ctx; t = t + 64u) {
        var s = 0.0;
        for (var d = 0u; d < hd; d = d + 1u) {
            s = s + q[qb + d] * kc[t * kv_w + kvh * hd + d];
        }
        s = s * params.scale;
        scores[sb + t] = s;
        m = max(m, s);
    }
    part[tid] = m;
    workgroupBarrier();
    for (var step = 32u; step > 0u; step = step >> 1u) {
        if (tid < step) {
            part[tid] = max(part[tid], part[tid + step]);
        }
        workgroupBarrier();
    }
    let mx = part[0];
    workgroupBarrier();

    // exponentials and their sum
    var sum = 0.0;
    for (var t = lo + tid; t < n_ctx; t = t + 64u) {
        let e = exp(scores[sb + t] - mx);
        scores[sb + t] = e;
        sum = sum + e;
    }
    part[tid] = sum;
    storageBarrier();
    workgroupBarrier();
    for (var step = 32u; step > 0u; step = step >> 1u) {
        if (tid < step) {
            part[tid] = part[tid] + part[tid + step];
        }
        workgroupBarrier();
    }
    let total = part[0];

    // weighted sum of the values
    for (var d = tid; d < hd; d = d + 64u) {
        var acc = 0.0;
        for (var t = lo; t < n_ctx; t = t + 1u) {
            acc = acc + scores[sb + t] * vc[t * kv_w + kvh * hd + d];
        }
        o[qb + d] = acc / total;
    }
}
