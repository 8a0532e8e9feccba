//! The native engine: a llama-family transformer (`llama`, `qwen2`) computed by edgelora
//! itself on the quantized base borrowed from the memory map, with LoRA adapters applied
//! on the fly (several, weighted, per request). Forward only so far; the training issue
//! adds each op's backward.
//!
//! Math is f32 on exactly dequantized weights (no activation quantization), so results
//! track an fp32 reference of the same weights (transformers on the dequantized model).
//! On the host, matrices go through a [`Backend`](crate::compute::Backend) (`matmul`);
//! [`NativeModel::on_gpu`] instead runs the whole forward on the device
//! ([`gpu_forward`]: weights, KV cache and adapters resident there).

pub mod config;
pub mod gpu_forward;
pub mod grad;
pub mod ops;
pub mod weights;

use crate::adapter::{LoraAdapter, LoraTensor};
use crate::compute::gpu::Gpu;
use crate::compute::{Backend, ComputeError};
use crate::error::{EngineError, Error};
use crate::gguf::GgufFile;

use config::ModelConfig;
use gpu_forward::{GpuCache, GpuForward};
use ops::{attention::attention_forward, embedding::embedding_forward, linear::linear_forward, rmsnorm::rmsnorm_forward, rope::rope_forward, swiglu::swiglu_forward};
use weights::{Weight, Weights};

/// A model ready to run: the mapped GGUF, its config, a compute backend. The weight
/// views are re-borrowed from the map for each call (cheap: slices and the small norm
/// vectors), so the model owns its file without self-references.
pub struct NativeModel {
    pub config: ModelConfig,
    gguf: GgufFile,
    exec: Exec,
}

/// Where the forward runs.
enum Exec {
    /// On the host, matrices through a backend (the CPU kernels, or a GPU one call at a time).
    Host(Box<dyn Backend>),
    /// Start to end on the GPU.
    Device(Box<GpuForward>),
}

/// Receives (weight name, input rows [n, n_in]) from
/// [`NativeModel::capture_linear_inputs`].
pub type InputSink<'s> = dyn FnMut(&str, &[f32]) + 's;

/// Per-sequence state: the KV cache, f32, per layer [n_past, n_head_kv·head_dim] — on the
/// host, or on the device for a model [`on_gpu`](NativeModel::on_gpu).
#[derive(Default)]
pub struct Session {
    k: Vec<Vec<f32>>,
    v: Vec<Vec<f32>>,
    gpu: Option<GpuCache>,
    n_past: usize,
}

impl Session {
    pub fn n_past(&self) -> usize {
        self.n_past
    }

    /// Forgets positions `n..` (keeps the first `n`).
    pub fn truncate(&mut self, n: usize) {
        if n >= self.n_past {
            return;
        }
        let per_pos = |c: &Vec<f32>| if self.n_past == 0 { 0 } else { c.len() / self.n_past };
        for c in self.k.iter_mut().chain(self.v.iter_mut()) {
            let w = per_pos(c);
            c.truncate(n * w);
        }
        self.n_past = n;
    }
}

fn compute_err(e: ComputeError) -> Error {
    EngineError::Backend(format!("native engine: {e}")).into()
}

impl NativeModel {
    /// Opens `gguf` for the native engine: checks every tensor it needs (names, shapes,
    /// supported types) up front.
    pub fn new(gguf: GgufFile, backend: Box<dyn Backend>) -> Result<NativeModel, Error> {
        let config = ModelConfig::from_gguf(&gguf)?;
        Weights::from_gguf(&gguf, &config)?;
        Ok(NativeModel { config, gguf, exec: Exec::Host(backend) })
    }

    /// Opens `gguf` with the whole forward on `gpu`: uploads every weight; fails (with the
    /// tensor named) when one is in a format the device kernels do not read.
    pub fn on_gpu(gguf: GgufFile, gpu: Gpu) -> Result<NativeModel, Error> {
        let config = ModelConfig::from_gguf(&gguf)?;
        let forward = GpuForward::new(gpu, &Weights::from_gguf(&gguf, &config)?, &config).map_err(compute_err)?;
        Ok(NativeModel { config, gguf, exec: Exec::Device(Box::new(forward)) })
    }

    pub fn gguf(&self) -> &GgufFile {
        &self.gguf
    }

    pub fn backend_name(&self) -> String {
        match &self.exec {
            Exec::Host(b) => b.name(),
            Exec::Device(f) => format!("gpu (whole forward): {}", f.adapter_name()),
        }
    }

    /// Runs `tokens` (positions `session.n_past..`) through the model, appending to the
    /// KV cache, with `adapters` (adapter, weight) applied on the fly. Returns the logits
    /// of the last token, or of every token when `all_logits`.
    pub fn forward(&self, session: &mut Session, tokens: &[i32], adapters: &[(&LoraAdapter, f32)], all_logits: bool) -> Result<Vec<Vec<f32>>, Error> {
        let c = &self.config;
        if tokens.is_empty() {
            return Err(EngineError::EmptyPrompt.into());
        }
        if let Some(&bad) = tokens.iter().find(|&&t| t < 0 || t as usize >= c.n_vocab) {
            return Err(EngineError::BadToken { id: bad.into(), n_vocab: c.n_vocab }.into());
        }
        match &self.exec {
            // On a pool worker: the kernels' parallel loops then start without a
            // cross-thread hand-off per call (hundreds per token), and run inline on a
            // 1-thread pool.
            Exec::Host(backend) => rayon::scope(|_| self.forward_on_host(backend.as_ref(), session, tokens, adapters, all_logits, None)),
            Exec::Device(f) => {
                let logits = f.forward(&mut session.gpu, session.n_past, tokens, adapters, all_logits).map_err(compute_err)?;
                session.n_past += tokens.len();
                Ok(logits)
            }
        }
    }

    /// Runs `tokens` as a fresh sequence on the host with `adapters` on the fly and hands
    /// each linear layer's input to `sink(weight name, x [n, n_in])` before the product
    /// (q/k/v, and gate/up, each get the same rows). Merge's GPTQ quantizer calibrates on it.
    pub fn capture_linear_inputs(&self, tokens: &[i32], adapters: &[(&LoraAdapter, f32)], sink: &mut InputSink) -> Result<(), Error> {
        let c = &self.config;
        if tokens.is_empty() {
            return Err(EngineError::EmptyPrompt.into());
        }
        if let Some(&bad) = tokens.iter().find(|&&t| t < 0 || t as usize >= c.n_vocab) {
            return Err(EngineError::BadToken { id: bad.into(), n_vocab: c.n_vocab }.into());
        }
        let Exec::Host(backend) = &self.exec else {
            return Err(EngineError::Backend("capturing layer inputs needs a host backend".into()).into());
        };
        let sink = std::cell::RefCell::new(sink);
        self.forward_on_host(backend.as_ref(), &mut Session::default(), tokens, adapters, false, Some(&sink)).map(|_| ())
    }

    fn forward_on_host(
        &self,
        backend: &dyn Backend,
        session: &mut Session,
        tokens: &[i32],
        adapters: &[(&LoraAdapter, f32)],
        all_logits: bool,
        sink: Option<&std::cell::RefCell<&mut InputSink>>,
    ) -> Result<Vec<Vec<f32>>, Error> {
        let c = &self.config;
        if session.k.is_empty() {
            session.k = vec![Vec::new(); c.n_layer];
            session.v = vec![Vec::new(); c.n_layer];
        }
        let weights = Weights::from_gguf(&self.gguf, c)?;
        let n = tokens.len();
        let pos0 = session.n_past;
        let positions: Vec<usize> = (pos0..pos0 + n).collect();
        let loras = |w: &Weight| -> Vec<(&LoraTensor, f32)> { adapters.iter().filter_map(|(a, s)| a.tensors.get(w.name).map(|t| (t, *s))).collect() };
        let lin = |x: &[f32], w: &Weight, b: Option<&Vec<f32>>| {
            if let Some(s) = sink {
                (s.borrow_mut())(w.name, x);
            }
            linear_forward(backend, x, w, b.map(Vec::as_slice), &loras(w)).map_err(compute_err)
        };

        // x [n, n_embd]
        let mut x = embedding_forward(tokens, &weights.token_embd).map_err(|e| compute_err(e.into()))?;
        for (l, layer) in weights.layers.iter().enumerate() {
            // attention block
            let h = rmsnorm_forward(&x, &layer.attn_norm, c.rms_eps);
            let mut q = lin(&h, &layer.wq, layer.bq.as_ref())?; // [n, n_head·hd]
            let mut k = lin(&h, &layer.wk, layer.bk.as_ref())?; // [n, n_kv·hd]
            let v = lin(&h, &layer.wv, layer.bv.as_ref())?; // [n, n_kv·hd]
            rope_forward(&mut q, &c.rope(c.n_head), &positions);
            rope_forward(&mut k, &c.rope(c.n_head_kv), &positions);
            session.k[l].extend_from_slice(&k);
            session.v[l].extend_from_slice(&v);
            let att = attention_forward(&q, &session.k[l], &session.v[l], pos0, c.heads(), None);
            let o = lin(&att, &layer.wo, None)?;
            x.iter_mut().zip(&o).for_each(|(a, b)| *a += b);
            // feed-forward block
            let h = rmsnorm_forward(&x, &layer.ffn_norm, c.rms_eps);
            let g = lin(&h, &layer.w_gate, None)?;
            let u = lin(&h, &layer.w_up, None)?;
            let d = lin(&swiglu_forward(&g, &u), &layer.w_down, None)?;
            x.iter_mut().zip(&d).for_each(|(a, b)| *a += b);
        }
        session.n_past += n;
        let rows: Vec<&[f32]> = if all_logits { x.chunks_exact(c.n_embd).collect() } else { vec![&x[(n - 1) * c.n_embd..]] };
        let last: Vec<f32> = rows.concat();
        let h = rmsnorm_forward(&last, &weights.output_norm, c.rms_eps);
        let logits = lin(&h, &weights.output, None)?;
        Ok(logits.chunks_exact(c.n_vocab).map(<[f32]>::to_vec).collect())
    }
}
