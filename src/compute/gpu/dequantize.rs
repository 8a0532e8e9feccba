//! `shaders/dequantize_{q4_0,q4_1,q8_0}.wgsl`: block bytes → f32, one thread per value.

use super::{Gpu, COMMON_BYTES};
use crate::compute::ComputeError;
use crate::gguf::GgmlType;

pub struct DequantizeKernel {
    t: GgmlType,
    pipeline: wgpu::ComputePipeline,
}

impl DequantizeKernel {
    pub fn new(device: &wgpu::Device, t: GgmlType) -> Self {
        let body = match t {
            GgmlType::Q4_0 => include_str!("../../../shaders/dequantize_q4_0.wgsl"),
            GgmlType::Q4_1 => include_str!("../../../shaders/dequantize_q4_1.wgsl"),
            GgmlType::Q8_0 => include_str!("../../../shaders/dequantize_q8_0.wgsl"),
            _ => unreachable!("only the three 32-wide formats have a shader"),
        };
        let module = device.create_shader_module(wgpu::ShaderModuleDescriptor {
            label: Some(t.name()),
            source: wgpu::ShaderSource::Wgsl(format!("{body}\n{COMMON_BYTES}").into()),
        });
        let pipeline = device.create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
            label: Some(t.name()),
            layout: None,
            module: &module,
            entry_point: Some("main"),
            compilation_options: Default::default(),
            cache: None,
        });
        DequantizeKernel { t, pipeline }
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
