//! `shaders/matmul.wgsl` per block format: y = x·Wᵀ with W quantized, blocks decoded
//! on the fly (the weight is never expanded to f32 on the device).

use super::{pipeline, product_shader, Gpu};
use crate::compute::ComputeError;
use crate::gguf::GgmlType;

pub struct MatmulKernel {
    t: GgmlType,
    pipeline: wgpu::ComputePipeline,
}

impl MatmulKernel {
    pub fn new(device: &wgpu::Device, t: GgmlType) -> Self {
        let source = product_shader(include_str!("../../../shaders/matmul.wgsl"), t);
        MatmulKernel { t, pipeline: pipeline(device, "matmul", source) }
    }

    pub fn ggml_type(&self) -> GgmlType {
        self.t
    }

    /// y [n_x, n_out] = x [n_x, n_in] · Wᵀ, in chunks of output rows under the binding limit.
    pub fn run(&self, gpu: &Gpu, w: &[u8], n_out: usize, n_in: usize, x: &[f32], n_x: usize) -> Result<Vec<f32>, ComputeError> {
        let row_bytes = self.t.bytes_for(n_in as u64).ok_or_else(|| ComputeError::Shape(format!("{n_in} is not a whole number of {} blocks", self.t)))? as usize;
        if w.len() != row_bytes * n_out || x.len() != n_x * n_in {
            return Err(ComputeError::Shape(format!("W {} bytes for [{n_out}, {n_in}] {}, x {} for [{n_x}, {n_in}]", w.len(), self.t, x.len())));
        }
        let xb: Vec<u8> = x.iter().flat_map(|v| v.to_le_bytes()).collect();
        if xb.len() as u64 > gpu.max_binding {
            return Err(ComputeError::Shape(format!("x ({} bytes) exceeds the binding limit", xb.len())));
        }
        let xbuf = gpu.storage("x", &xb, false);
        let rows_per_chunk = ((gpu.max_binding as usize) / row_bytes).min((gpu.max_binding as usize) / (4 * n_x.max(1))).max(1);
        let mut y = vec![0f32; n_x * n_out];
        let mut o0 = 0;
        for chunk in w.chunks(rows_per_chunk * row_bytes) {
            let rows = chunk.len() / row_bytes;
            let wbuf = gpu.storage("w", chunk, false);
            let out = gpu.storage("y", &vec![0u8; rows * n_x * 4], true);
            let p = gpu.uniform(bytemuck::cast_slice(&[rows as u32, n_in as u32, n_x as u32, row_bytes as u32, rows as u32, 0, 0, 0]));
            let mut raw = vec![0u8; rows * n_x * 4];
            gpu.run(&self.pipeline, &[&wbuf, &xbuf, &out, &p], (rows * n_x) as u64, &out, &mut raw)?;
            for r in 0..n_x {
                for o in 0..rows {
                    let k = (r * rows + o) * 4;
                    y[r * n_out + o0 + o] = f32::from_le_bytes(raw[k..k + 4].try_into().expect("4 bytes"));
                }
            }
            o0 += rows;
        }
        Ok(y)
    }
}
