// out[r, i] = W[ids[r], i]: the embedding lookup, rows decoded from a block format (prelude:
// `BLOCK_ELEMS`, `BLOCK_BYTES`, `block_value`). The table may be split in row chunks (binding
// limit): this dispatch holds rows row0..row0+rows and leaves other ids alone.
struct Params {
    n_embd: u32,
    row_bytes: u32,
    n_rows: u32,
    row0: u32,
    rows: u32,
    _pad0: u32,
    _pad1: u32,
    _pad2: u32,
}

@group(0) @binding(0) var<storage, read> src: array<u32>;
@group(0) @binding(1) var<storage, read> ids: array<u32>;
@group(0) @binding(2) var<storage, read_write> out: array<f32>;
@group(0) @binding(3) var<uniform> params: Params;

@compute @workgroup_size(256)
fn main(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let idx = gid.x + gid.y * nwg.x * 256u;
    if (idx >= params.n_rows * params.n_embd) {
        return;
    }
    let id = ids[idx / params.n_embd];
    if (id < params.row0 || id >= params.row0 + params.rows) {
        return;
    }
    let i = idx % params.n_embd;
    out[idx] = block_value((id - params.row0) * params.row_bytes + (i / BLOCK_ELEMS) * BLOCK_BYTES, i % BLOCK_ELEMS);
}
