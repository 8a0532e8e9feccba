//! `shaders/lora_delta.wgsl`: acc += s·B·A, with the factors read as native f16
//! (`lora_factors_f16.wgsl`, SHADER_F16) or as f16 pairs unpacked from u32
//! (`lora_factors_packed.wgsl`). Both read the same uploaded bytes.

use half::f16;

use super::{pipeline, Gpu};
use crate::compute::{ComputeError, Delta};

pub struct LoraDeltaKernel {
    pipeline: wgpu::ComputePipeline,
    f16: bool,
}

fn pack_f16(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| f16::from_f32(*x).to_le_bytes()).collect()
}

impl LoraDeltaKernel {
    pub fn new(device: &wgpu::Device, f16: bool) -> Self {
        let factors = if f16 { include_str!("../../../shaders/lora_factors_f16.wgsl") } else { include_str!("../../../shaders/lora_factors_packed.wgsl") };
        let source = format!("{factors}\n{}", include_str!("../../../shaders/lora_delta.wgsl"));
        LoraDeltaKernel { pipeline: pipeline(device, "lora_delta", source), f16 }
    }

    pub fn uses_f16(&self) -> bool {
        self.f16
    }

    /// Adds one delta to `acc`, in chunks of rows under the binding limit. A and B are
    /// rounded to f16 for the device (the adapters' storage type on phones).
    pub fn run(&self, gpu: &Gpu, acc: &mut [f32], n_out: usize, n_in: usize, d: &Delta) -> Result<(), ComputeError> {
        if n_in == 0 || n_out == 0 {
            return Ok(());
        }
        let a = gpu.storage("lora_a", &pack_f16(d.a), false);
        let b = gpu.storage("lora_b", &pack_f16(d.b), false);
        let rows_per_chunk = ((gpu.max_binding as usize) / (n_in * 4)).max(1);
        for (c, chunk) in acc.chunks_mut(rows_per_chunk * n_in).enumerate() {
            let rows = chunk.len() / n_in;
            let bytes: Vec<u8> = chunk.iter().flat_map(|x| x.to_le_bytes()).collect();
            let out = gpu.storage("acc", &bytes, true);
            let mut params = [0u32; 8];
            params[0] = rows as u32;
            params[1] = n_in as u32;
            params[2] = d.rank as u32;
            params[3] = (c * rows_per_chunk) as u32;
            params[4] = d.scale.to_bits();
            let p = gpu.uniform(bytemuck::cast_slice(&params));
            let mut raw = vec![0u8; bytes.len()];
            gpu.run(&self.pipeline, &[&a, &b, &out, &p], chunk.len() as u64, &out, &mut raw)?;
            for (y, c) in chunk.iter_mut().zip(raw.chunks_exact(4)) {
                *y = f32::from_le_bytes(c.try_into().expect("4 bytes"));
            }
        }
        Ok(())
    }
}
