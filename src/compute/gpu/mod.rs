//! The wgpu backend. One struct per kernel (`dequantize`, `lora_delta`), each compiling
//! its WGSL file from `shaders/` (embedded with `include_str!`). Device selection returns
//! an error, never panics, when no adapter exists; wgpu validation errors are caught in
//! error scopes and returned. Buffers are split so that no binding exceeds the device's
//! storage-binding limit (128 MiB by default).

mod dequantize;
mod graph;
mod lora_delta;
mod matmul;
mod ops;

use std::sync::Arc;

use wgpu::util::DeviceExt;

use super::{check_delta, Backend, ComputeError, Delta};
use crate::gguf::GgmlType;

pub use dequantize::DequantizeKernel;
pub use graph::{bits, Graph, Grid, Kernel};
pub use lora_delta::LoraDeltaKernel;
pub use matmul::MatmulKernel;
pub use ops::{Ops, MATVEC_ROWS};

/// Shared byte/f16 helpers prepended to the block-format shaders.
const COMMON_BYTES: &str = include_str!("../../../shaders/common_bytes.wgsl");

/// The formats the block shaders (dequantize, matmul) are specialized for: every type
/// the CPU dequantizes but F32 (which needs no kernel).
const BLOCK_TYPES: [GgmlType; 12] = [
    GgmlType::F16,
    GgmlType::BF16,
    GgmlType::Q4_0,
    GgmlType::Q4_1,
    GgmlType::Q5_0,
    GgmlType::Q5_1,
    GgmlType::Q8_0,
    GgmlType::Q2_K,
    GgmlType::Q3_K,
    GgmlType::Q4_K,
    GgmlType::Q5_K,
    GgmlType::Q6_K,
];

/// The formats the native engine's forward reads on the device (matmul, matvec,
/// embedding rows): the block formats plus F32.
fn forward_types() -> impl Iterator<Item = GgmlType> {
    std::iter::once(GgmlType::F32).chain(BLOCK_TYPES)
}

/// `kernel` (a block shader's source) specialized for `t`: the helpers plus
/// `BLOCK_ELEMS`, `BLOCK_BYTES` and `block_value` for that format.
fn block_shader(kernel: &str, t: GgmlType) -> String {
    let value = match t {
        GgmlType::F32 => "f32_value",
        GgmlType::F16 => "f16_value",
        GgmlType::BF16 => "bf16_value",
        GgmlType::Q4_0 => "q4_0_value",
        GgmlType::Q4_1 => "q4_1_value",
        GgmlType::Q5_0 => "q5_0_value",
        GgmlType::Q5_1 => "q5_1_value",
        GgmlType::Q8_0 => "q8_0_value",
        GgmlType::Q2_K => "q2_k_value",
        GgmlType::Q3_K => "q3_k_value",
        GgmlType::Q4_K => "q4_k_value",
        GgmlType::Q5_K => "q5_k_value",
        GgmlType::Q6_K => "q6_k_value",
        _ => unreachable!("forward_types() lists the formats with a value function"),
    };
    let elems = t.block_size();
    format!(
        "{COMMON_BYTES}\nconst BLOCK_ELEMS: u32 = {elems}u;\nconst BLOCK_BYTES: u32 = {}u;\nfn block_value(base: u32, j: u32) -> f32 {{ return {value}(base, j); }}\n{kernel}",
        t.type_size() * elems / t.block_size()
    )
}

/// A weight-product kernel (matmul.wgsl, matvec.wgsl) for format `t`: its shared
/// parameters and bindings (weight_product.wgsl) and the block prelude prepended.
fn product_shader(kernel: &str, t: GgmlType) -> String {
    block_shader(&format!("{}\n{kernel}", include_str!("../../../shaders/weight_product.wgsl")), t)
}

/// A compute pipeline (entry point `main`, layout from the shader) for WGSL `source`.
fn pipeline(device: &wgpu::Device, label: &str, source: String) -> wgpu::ComputePipeline {
    let module = device.create_shader_module(wgpu::ShaderModuleDescriptor { label: Some(label), source: wgpu::ShaderSource::Wgsl(source.into()) });
    device.create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
        label: Some(label),
        layout: None,
        module: &module,
        entry_point: Some("main"),
        compilation_options: Default::default(),
        cache: None,
    })
}

/// Threads per workgroup in every shader.
const WORKGROUP: u32 = 256;

/// An open device with its kernels.
pub struct Gpu {
    device: wgpu::Device,
    queue: wgpu::Queue,
    info: wgpu::AdapterInfo,
    /// Largest storage binding, in bytes.
    max_binding: u64,
    dequant: Vec<DequantizeKernel>,
    lora: LoraDeltaKernel,
    matmul: Vec<MatmulKernel>,
}

impl Gpu {
    /// Opens the first (high-performance) adapter wgpu finds: a real GPU, or a software
    /// Vulkan driver such as Mesa's lavapipe.
    pub fn new() -> Result<Gpu, ComputeError> {
        Self::with_binding_limit(u64::MAX)
    }

    /// As [`new`](Self::new), with storage bindings capped at `limit` bytes (smaller
    /// chunks: less device memory at a time; tests use it to exercise the splitting).
    pub fn with_binding_limit(limit: u64) -> Result<Gpu, ComputeError> {
        Self::open(limit, true)
    }

    /// As [`with_binding_limit`](Self::with_binding_limit); `use_f16` false keeps the
    /// packed-u32 shaders even where the adapter offers SHADER_F16 (tests compare both).
    pub fn open(limit: u64, use_f16: bool) -> Result<Gpu, ComputeError> {
        let instance = wgpu::Instance::new(wgpu::InstanceDescriptor::new_without_display_handle_from_env());
        let adapter = pollster::block_on(instance.request_adapter(&wgpu::RequestAdapterOptions {
            power_preference: wgpu::PowerPreference::HighPerformance,
            force_fallback_adapter: false,
            compatible_surface: None,
            ..Default::default()
        }))
        .map_err(|e| ComputeError::NoAdapter(e.to_string()))?;
        let info = adapter.get_info();
        let limits = adapter.limits();
        // f16 storage in shaders where the adapter has it; packed u32 pairs otherwise.
        let f16 = use_f16 && adapter.features().contains(wgpu::Features::SHADER_F16);
        let (device, queue) = pollster::block_on(adapter.request_device(&wgpu::DeviceDescriptor {
            label: Some("edgelora"),
            required_limits: limits.clone(),
            required_features: if f16 { wgpu::Features::SHADER_F16 } else { wgpu::Features::empty() },
            ..Default::default()
        }))
        .map_err(|e| ComputeError::Device(e.to_string()))?;
        // Validation errors are collected by error scopes around each call; anything that
        // escapes them is logged instead of wgpu's default panic.
        device.on_uncaptured_error(Arc::new(|e| eprintln!("edgelora: uncaptured wgpu error: {e}")));
        let max_binding = limits.max_storage_buffer_binding_size.min(limits.max_buffer_size).min(limit).max(1 << 10);
        // Compile every shader now, inside an error scope: a shader the driver rejects is
        // an error here, not a panic later.
        let scope = device.push_error_scope(wgpu::ErrorFilter::Validation);
        let dequant: Vec<DequantizeKernel> = BLOCK_TYPES.into_iter().map(|t| DequantizeKernel::new(&device, t)).collect();
        let lora = LoraDeltaKernel::new(&device, f16);
        let matmul: Vec<MatmulKernel> = BLOCK_TYPES.into_iter().map(|t| MatmulKernel::new(&device, t)).collect();
        if let Some(e) = pollster::block_on(scope.pop()) {
            return Err(ComputeError::Gpu(format!("compiling the shaders: {e}")));
        }
        Ok(Gpu { device, queue, info, max_binding, dequant, lora, matmul })
    }

    /// Adapter name and driver, e.g. "llvmpipe (LLVM 15.0.6, 256 bits) (Vulkan)".
    pub fn adapter(&self) -> String {
        format!("{} ({:?}, {})", self.info.name, self.info.backend, self.info.driver_info)
    }

    /// Whether the LoRA kernel reads A/B as native f16 (SHADER_F16) rather than unpacking
    /// them from u32 pairs.
    pub fn uses_f16(&self) -> bool {
        self.lora.uses_f16()
    }

    fn storage(&self, label: &str, bytes: &[u8], writable: bool) -> wgpu::Buffer {
        // Bindings of array<u32> need a whole number of words.
        let mut padded;
        let contents = if bytes.len().is_multiple_of(4) && !bytes.is_empty() {
            bytes
        } else {
            padded = bytes.to_vec();
            padded.resize(bytes.len().next_multiple_of(4).max(4), 0);
            &padded
        };
        let mut usage = wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_DST;
        if writable {
            usage |= wgpu::BufferUsages::COPY_SRC;
        }
        self.device.create_buffer_init(&wgpu::util::BufferInitDescriptor { label: Some(label), contents, usage })
    }

    fn uniform(&self, bytes: &[u8]) -> wgpu::Buffer {
        self.device.create_buffer_init(&wgpu::util::BufferInitDescriptor { label: Some("params"), contents: bytes, usage: wgpu::BufferUsages::UNIFORM })
    }

    /// Dispatches `pipeline` over `n` threads with `buffers` bound in order, then copies
    /// `result` (a buffer among them) back.
    fn run(&self, pipeline: &wgpu::ComputePipeline, buffers: &[&wgpu::Buffer], n: u64, result: &wgpu::Buffer, out: &mut [u8]) -> Result<(), ComputeError> {
        let scope = self.device.push_error_scope(wgpu::ErrorFilter::Validation);
        let layout = pipeline.get_bind_group_layout(0);
        let entries: Vec<wgpu::BindGroupEntry> =
            buffers.iter().enumerate().map(|(i, b)| wgpu::BindGroupEntry { binding: i as u32, resource: b.as_entire_binding() }).collect();
        let group = self.device.create_bind_group(&wgpu::BindGroupDescriptor { label: None, layout: &layout, entries: &entries });
        let groups = n.div_ceil(u64::from(WORKGROUP));
        let x = groups.min(65_535) as u32;
        let y = groups.div_ceil(u64::from(x.max(1))) as u32;
        if y > 65_535 {
            return Err(ComputeError::Shape(format!("{n} threads exceed one dispatch")));
        }
        let readback = self.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("readback"),
            size: out.len() as u64,
            usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        });
        let mut enc = self.device.create_command_encoder(&wgpu::CommandEncoderDescriptor { label: None });
        {
            let mut pass = enc.begin_compute_pass(&wgpu::ComputePassDescriptor { label: None, timestamp_writes: None });
            pass.set_pipeline(pipeline);
            pass.set_bind_group(0, &group, &[]);
            pass.dispatch_workgroups(x.max(1), y.max(1), 1);
        }
        enc.copy_buffer_to_buffer(result, 0, &readback, 0, out.len() as u64);
        self.queue.submit([enc.finish()]);
        let bytes = self.map_read(&readback);
        if let Some(e) = pollster::block_on(scope.pop()) {
            return Err(ComputeError::Gpu(e.to_string()));
        }
        out.copy_from_slice(&bytes?);
        Ok(())
    }
}

impl Backend for Gpu {
    fn name(&self) -> String {
        format!("gpu: {}", self.adapter())
    }

    fn dequantize(&self, t: GgmlType, bytes: &[u8], out: &mut [f32]) -> Result<(), ComputeError> {
        if t == GgmlType::F32 {
            return Ok(crate::quant::dequantize(t, bytes, out)?);
        }
        let k = self.dequant.iter().find(|k| k.ggml_type() == t).ok_or(ComputeError::Unsupported(t, "gpu"))?;
        k.run(self, bytes, out)
    }

    fn lora_delta(&self, acc: &mut [f32], n_out: usize, n_in: usize, deltas: &[Delta]) -> Result<(), ComputeError> {
        for d in deltas {
            check_delta(acc, n_out, n_in, d)?;
            self.lora.run(self, acc, n_out, n_in, d)?;
        }
        Ok(())
    }

    fn matmul(&self, t: GgmlType, w: &[u8], n_out: usize, n_in: usize, x: &[f32], n_x: usize) -> Result<Vec<f32>, ComputeError> {
        let k = self.matmul.iter().find(|k| k.ggml_type() == t).ok_or(ComputeError::Unsupported(t, "gpu"))?;
        k.run(self, w, n_out, n_in, x, n_x)
    }
}
