//! The native engine's kernels on the device, compiled once per model: quantized matmul
//! and embedding rows per weight format, RMSNorm, bias add, RoPE, attention (with an
//! optional sliding window), SwiGLU / GeGLU, a scale, a copy of rows, and the dense
//! product the LoRA factors go through. Each is one WGSL file in `shaders/`.

use super::{block_shader, forward_types, product_shader, Gpu, Kernel, WORKGROUP};
use crate::compute::ComputeError;
use crate::gguf::GgmlType;

/// Workgroup size of the one-workgroup-per-row shaders (rmsnorm, attention, matvec).
const ROW_WORKGROUP: u32 = 64;

/// Most input rows the matvec kernel takes (it keeps one vec4 of sums per thread).
pub const MATVEC_ROWS: usize = 4;

pub struct Ops {
    matmul: Vec<(GgmlType, Kernel)>,
    matvec: Vec<(GgmlType, Kernel)>,
    get_rows: Vec<(GgmlType, Kernel)>,
    pub rmsnorm: Kernel,
    pub add: Kernel,
    pub rope: Kernel,
    pub attention: Kernel,
    pub swiglu: Kernel,
    pub dense: Kernel,
    pub scale: Kernel,
    pub copy: Kernel,
}

impl Ops {
    /// Compiles every kernel (a shader the driver rejects is an error here).
    pub fn new(gpu: &Gpu) -> Result<Ops, ComputeError> {
        let d = gpu.device();
        let scope = d.push_error_scope(wgpu::ErrorFilter::Validation);
        let per_type = |label: &str, shader: &dyn Fn(GgmlType) -> String, wg: u32| -> Vec<(GgmlType, Kernel)> { forward_types().map(|t| (t, Kernel::new(d, label, shader(t), wg))).collect() };
        let plain = |label: &str, src: &str, wg: u32| Kernel::new(d, label, src.to_string(), wg);
        let ops = Ops {
            matmul: per_type("matmul", &|t| product_shader(include_str!("../../../shaders/matmul.wgsl"), t), WORKGROUP),
            matvec: per_type("matvec", &|t| product_shader(include_str!("../../../shaders/matvec.wgsl"), t), ROW_WORKGROUP),
            get_rows: per_type("get_rows", &|t| block_shader(include_str!("../../../shaders/get_rows.wgsl"), t), WORKGROUP),
            rmsnorm: plain("rmsnorm", include_str!("../../../shaders/rmsnorm.wgsl"), ROW_WORKGROUP),
            add: plain("add", include_str!("../../../shaders/add.wgsl"), WORKGROUP),
            rope: plain("rope", include_str!("../../../shaders/rope.wgsl"), WORKGROUP),
            attention: plain("attention", include_str!("../../../shaders/attention.wgsl"), ROW_WORKGROUP),
            swiglu: plain("swiglu", include_str!("../../../shaders/swiglu.wgsl"), WORKGROUP),
            dense: plain("dense_matmul", include_str!("../../../shaders/dense_matmul.wgsl"), WORKGROUP),
            scale: plain("scale", include_str!("../../../shaders/scale.wgsl"), WORKGROUP),
            copy: plain("copy", include_str!("../../../shaders/copy.wgsl"), WORKGROUP),
        };
        if let Some(e) = pollster::block_on(scope.pop()) {
            return Err(ComputeError::Gpu(format!("compiling the native engine's shaders: {e}")));
        }
        Ok(ops)
    }

    /// Whether weights of type `t` can be used on the device.
    pub fn supports(t: GgmlType) -> bool {
        forward_types().any(|u| u == t)
    }

    fn find(list: &[(GgmlType, Kernel)], t: GgmlType) -> Result<&Kernel, ComputeError> {
        list.iter().find(|(k, _)| *k == t).map(|(_, k)| k).ok_or(ComputeError::Unsupported(t, "gpu forward"))
    }

    /// y = x·Wᵀ with W of type `t`.
    pub fn matmul(&self, t: GgmlType) -> Result<&Kernel, ComputeError> {
        Self::find(&self.matmul, t)
    }

    /// y = x·Wᵀ for at most [`MATVEC_ROWS`] input rows, one workgroup per output.
    pub fn matvec(&self, t: GgmlType) -> Result<&Kernel, ComputeError> {
        Self::find(&self.matvec, t)
    }

    /// Embedding rows of a table of type `t`.
    pub fn get_rows(&self, t: GgmlType) -> Result<&Kernel, ComputeError> {
        Self::find(&self.get_rows, t)
    }
}
