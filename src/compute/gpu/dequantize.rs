//! `shaders/dequantize.wgsl` per block format: block bytes → f32, one thread per value.

use super::{block_shader, pipeline, Gpu};
use crate::compute::ComputeError;
use crate::gguf::GgmlType;

pub struct DequantizeKernel {
    t: GgmlType,
    pipeline: wgpu::ComputePipeline,
}

impl DequantizeKernel {
    pub fn new(device: &wgpu::Device, t: GgmlType) -> Self {
        let source = block_shader(include_str!("../../../shaders/dequantize.wgsl"), t);
        DequantizeKernel { t, pipeline: pipeline(device, "dequantize", source) }
    }

    pub fn ggml_type(&self) -> GgmlType {
        self.t
    }

    /// Dequantizes in chunks of whole blocks so that no binding exceeds the device limit.
    pub fn run(&self, gpu: &Gpu, bytes: &[u8], out: &mut [f32]) -> Result<(), ComputeError> {
        let t = self.t;
        if t.bytes_for(out.len() as u64) != Some(bytes.len() as u64) {
            return Err(ComputeError::Shape(format!("{} bytes do not hold {} {t} values", bytes.len(), out.len())));
        }
        let (bs, ts) = (t.block_size() as usize, t.type_size() as usize);
        // Blocks per chunk: the f32 output is the larger side.
        let per_chunk = ((gpu.max_binding as usize) / (bs * 4)).max(1);
        for (src, dst) in bytes.chunks(per_chunk * ts).zip(out.chunks_mut(per_chunk * bs)) {
            let input = gpu.storage("blocks", src, false);
            let output = gpu.storage("values", &vec![0u8; dst.len() * 4], true);
            let params = gpu.uniform(bytemuck::cast_slice(&[dst.len() as u32, 0, 0, 0]));
            let mut raw = vec![0u8; dst.len() * 4];
            gpu.run(&self.pipeline, &[&input, &output, &params], dst.len() as u64, &output, &mut raw)?;
            for (y, c) in dst.iter_mut().zip(raw.chunks_exact(4)) {
                *y = f32::from_le_bytes(c.try_into().expect("4 bytes"));
            }
        }
        Ok(())
    }
}
