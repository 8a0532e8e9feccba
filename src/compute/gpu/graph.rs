//! Chains of kernels on device-resident buffers: the native engine's forward records
//! every dispatch of a call (hundreds per token) into one [`Graph`], which runs them in
//! one command buffer — wgpu orders dependent dispatches — and reads back one result.
//! Each dispatch's parameters get their own 256-byte slot of one uniform buffer.

use std::num::NonZeroU64;
use std::sync::mpsc;

use wgpu::util::DeviceExt;

use super::{pipeline, Gpu};
use crate::compute::ComputeError;

/// Bytes per dispatch's parameter slot (wgpu guarantees uniform offsets aligned to 256).
const SLOT: u64 = 256;
/// Parameter words per dispatch (the shaders' `Params` structs are at most this long).
const PARAM_WORDS: usize = 16;

/// A compiled compute shader with its bind-group layout: storage buffers at bindings
/// 0..n, the uniform `Params` at binding n.
pub struct Kernel {
    pipeline: wgpu::ComputePipeline,
    layout: wgpu::BindGroupLayout,
    /// Threads per workgroup the shader declares.
    workgroup: u32,
}

impl Kernel {
    pub fn new(device: &wgpu::Device, label: &str, source: String, workgroup: u32) -> Kernel {
        let pipeline = pipeline(device, label, source);
        let layout = pipeline.get_bind_group_layout(0);
        Kernel { pipeline, layout, workgroup }
    }
}

/// How many workgroups a dispatch runs.
#[derive(Debug, Clone, Copy)]
pub enum Grid {
    /// One thread per item (workgroups of the kernel's size).
    Threads(u64),
    /// One workgroup per item.
    Groups(u64),
}

struct Step<'a> {
    kernel: &'a Kernel,
    buffers: Vec<&'a wgpu::Buffer>,
    params: [u32; PARAM_WORDS],
    groups: u64,
}

/// Dispatches recorded in order; [`run`](Graph::run) submits them at once.
pub struct Graph<'a> {
    gpu: &'a Gpu,
    steps: Vec<Step<'a>>,
}

/// f32 parameter as the u32 word the shaders read.
pub fn bits(v: f32) -> u32 {
    v.to_bits()
}

impl<'a> Graph<'a> {
    pub fn new(gpu: &'a Gpu) -> Graph<'a> {
        Graph { gpu, steps: Vec::new() }
    }

    /// Records `kernel` over `grid` with `buffers` bound in order and `params` as its
    /// uniform (up to 16 words).
    pub fn dispatch(&mut self, kernel: &'a Kernel, buffers: &[&'a wgpu::Buffer], params: &[u32], grid: Grid) {
        assert!(params.len() <= PARAM_WORDS, "at most {PARAM_WORDS} parameter words");
        let mut p = [0u32; PARAM_WORDS];
        p[..params.len()].copy_from_slice(params);
        let groups = match grid {
            Grid::Threads(n) => n.div_ceil(u64::from(kernel.workgroup)),
            Grid::Groups(n) => n,
        };
        if groups > 0 {
            self.steps.push(Step { kernel, buffers: buffers.to_vec(), params: p, groups });
        }
    }

    /// Runs every recorded dispatch in order, then copies `len` bytes of `read` from
    /// byte `offset` back (None: nothing to read, only wait).
    pub fn run(self, read: Option<(&wgpu::Buffer, u64, u64)>) -> Result<Vec<u8>, ComputeError> {
        let gpu = self.gpu;
        let device = &gpu.device;
        let scope = device.push_error_scope(wgpu::ErrorFilter::Validation);
        let mut params = vec![0u8; (self.steps.len().max(1) as u64 * SLOT) as usize];
        for (i, s) in self.steps.iter().enumerate() {
            params[i * SLOT as usize..][..PARAM_WORDS * 4].copy_from_slice(bytemuck::cast_slice(&s.params));
        }
        let pbuf = device.create_buffer_init(&wgpu::util::BufferInitDescriptor { label: Some("params"), contents: &params, usage: wgpu::BufferUsages::UNIFORM });
        let mut groups = Vec::with_capacity(self.steps.len());
        for (i, s) in self.steps.iter().enumerate() {
            let mut entries: Vec<wgpu::BindGroupEntry> =
                s.buffers.iter().enumerate().map(|(j, b)| wgpu::BindGroupEntry { binding: j as u32, resource: b.as_entire_binding() }).collect();
            entries.push(wgpu::BindGroupEntry {
                binding: s.buffers.len() as u32,
                resource: wgpu::BindingResource::Buffer(wgpu::BufferBinding { buffer: &pbuf, offset: i as u64 * SLOT, size: NonZeroU64::new((PARAM_WORDS * 4) as u64) }),
            });
            groups.push(device.create_bind_group(&wgpu::BindGroupDescriptor { label: None, layout: &s.kernel.layout, entries: &entries }));
        }
        let mut enc = device.create_command_encoder(&wgpu::CommandEncoderDescriptor { label: Some("graph") });
        {
            let mut pass = enc.begin_compute_pass(&wgpu::ComputePassDescriptor { label: None, timestamp_writes: None });
            for (s, g) in self.steps.iter().zip(&groups) {
                let x = s.groups.min(65_535) as u32;
                let y = s.groups.div_ceil(u64::from(x));
                if y > 65_535 {
                    return Err(ComputeError::Shape(format!("{} workgroups exceed one dispatch", s.groups)));
                }
                pass.set_pipeline(&s.kernel.pipeline);
                pass.set_bind_group(0, g, &[]);
                pass.dispatch_workgroups(x, y as u32, 1);
            }
        }
        let readback = read.map(|(buf, offset, len)| {
            let rb = device.create_buffer(&wgpu::BufferDescriptor { label: Some("readback"), size: len, usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST, mapped_at_creation: false });
            enc.copy_buffer_to_buffer(buf, offset, &rb, 0, len);
            rb
        });
        gpu.queue.submit([enc.finish()]);
        let out = match &readback {
            Some(rb) => gpu.map_read(rb)?,
            None => {
                gpu.wait()?;
                Vec::new()
            }
        };
        if let Some(e) = pollster::block_on(scope.pop()) {
            return Err(ComputeError::Gpu(e.to_string()));
        }
        Ok(out)
    }
}

impl Gpu {
    /// An uninitialized device buffer of `bytes` (rounded up to whole words) usable as
    /// storage, copy source and destination.
    pub fn buffer(&self, label: &str, bytes: u64) -> wgpu::Buffer {
        self.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some(label),
            size: bytes.next_multiple_of(4).max(4),
            usage: wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_SRC | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        })
    }

    /// A device buffer holding `bytes` (zero-padded to whole words).
    pub fn upload(&self, label: &str, bytes: &[u8]) -> wgpu::Buffer {
        self.storage(label, bytes, true)
    }

    /// Writes `bytes` at `offset` of `buf`, ordered before the next submission.
    pub fn write(&self, buf: &wgpu::Buffer, offset: u64, bytes: &[u8]) {
        self.queue.write_buffer(buf, offset, bytes);
    }

    /// Copies `len` bytes from `src` to `dst` (both at offset 0) on the device.
    pub fn copy(&self, src: &wgpu::Buffer, dst: &wgpu::Buffer, len: u64) {
        let mut enc = self.device.create_command_encoder(&wgpu::CommandEncoderDescriptor { label: Some("copy") });
        enc.copy_buffer_to_buffer(src, 0, dst, 0, len);
        self.queue.submit([enc.finish()]);
    }

    /// Largest storage binding, in bytes.
    pub fn max_binding(&self) -> u64 {
        self.max_binding
    }

    pub fn device(&self) -> &wgpu::Device {
        &self.device
    }

    fn wait(&self) -> Result<(), ComputeError> {
        self.device
            .poll(wgpu::PollType::Wait { submission_index: None, timeout: None })
            .map(|_| ())
            .map_err(|e| ComputeError::Gpu(format!("waiting for the device: {e}")))
    }

    /// Maps `rb` (a MAP_READ buffer whose copy was submitted), waits, returns its bytes.
    pub(super) fn map_read(&self, rb: &wgpu::Buffer) -> Result<Vec<u8>, ComputeError> {
        let (tx, rx) = mpsc::channel();
        rb.slice(..).map_async(wgpu::MapMode::Read, move |r| {
            let _ = tx.send(r);
        });
        self.wait()?;
        rx.recv()
            .map_err(|_| ComputeError::Gpu("map callback dropped".into()))?
            .map_err(|e| ComputeError::Gpu(format!("mapping the result: {e}")))?;
        let out = rb.slice(..).get_mapped_range().map_err(|e| ComputeError::Gpu(format!("{e:?}")))?.to_vec();
        rb.unmap();
        Ok(out)
    }
}
