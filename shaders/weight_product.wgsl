// Shared by matmul.wgsl and matvec.wgsl (prepended by the backend): their parameters
// (one Rust struct fills both) and bindings. W (src) is [n_out] rows of row_bytes bytes in a
// block format; x is [n_x, n_in]; y[y_base + r·y_stride + o] receives output o of row r,
// added to y when `accumulate` is 1.
struct Params {
    n_out: u32,
    n_in: u32,
    n_x: u32,
    row_bytes: u32,
    y_stride: u32,
    y_base: u32,
    accumulate: u32,
    _pad: u32,
}

@group(0) @binding(0) var<storage, read> src: array<u32>;
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read_write> y: array<f32>;
@group(0) @binding(3) var<uniform> params: Params;
