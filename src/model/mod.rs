//! The native engine: a llama-family transformer (`llama`, `qwen2`) computed by edgelora
//! itself on the quantized base borrowed from the memory map, with LoRA adapters applied
//! on the fly (several, weighted, per request). Forward only so far; the training issue
//! adds each op's backward.
//!
//! Math is f32 on exactly dequantized weights (no activation quantization), so results
//! track an fp32 reference of the same weights (transformers on the dequantized model).
//! Matrices go through a [`Backend`](crate::compute::Backend) (`matmul`).

pub mod config;
pub mod grad;
pub mod ops;
pub mod weights;

use crate::adapter::{LoraAdapter, LoraTensor};
use crate::compute::{Backend, ComputeError};
use crate::error::{EngineError, Error};
use crate::gguf::GgufFile;

use config::ModelConfig;
use ops::{attention::attention_forward, embedding::embedding_forward, linear::linear_forward, rmsnorm::rmsnorm_forward, rope::rope_forward, swiglu::swiglu_forward};
use weights::{Weight, Weights};

/// A model ready to run: the mapped GGUF, its config, a compute backend. The weight
/// views are re-borrowed from the map for each call (cheap: slices and the small norm
/// vectors), so the model owns its file without self-references.
pub struct NativeModel {
    pub config: ModelConfig,
    gguf: GgufFile,
    backend: Box<dyn Backend>,
}

/// Per-sequence state: the KV cache, f32, per layer [n_past, n_head_kv·head_dim].
#[derive(Default)]
pub struct Session {
    k: Vec<Vec<f32>>,
    v: Vec<Vec<f32>>,
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
        Ok(NativeModel { config, gguf, backend })
    }

    pub fn gguf(&self) -> &GgufFile {
        &self.gguf
    }

    pub fn backend_name(&self) -> String {
        self.backend.name()
    }

    /// Runs `tokens` (positions `session.n_past..`) through the model, appending to the
    /// KV cache, with `adapters` (adapter, weight) applied on the fly. Returns the logits
    /// of the last token, or of every token when `all_logits`.
    pub fn forward(&self, session: &mut Session, tokens: &[i32], adapters: &[(&LoraAdapter, f32)], all_logits: bool) -> Result<Vec<Vec<f32>>, Error> {
        // On a pool worker: the kernels' parallel loops then start without a cross-thread
        // hand-off per call (hundreds per token), and run inline on a 1-thread pool.
        rayon::scope(|_| self.forward_on_worker(session, tokens, adapters, all_logits))
    }

    fn forward_on_worker(&self, session: &mut Session, tokens: &[i32], adapters: &[(&LoraAdapter, f32)], all_logits: bool) -> Result<Vec<Vec<f32>>, Error> {
        let c = &self.config;
        if tokens.is_empty() {
            return Err(EngineError::EmptyPrompt.into());
        }
        if let Some(&bad) = tokens.iter().find(|&&t| t < 0 || t as usize >= c.n_vocab) {
            return Err(EngineError::BadToken { id: bad.into(), n_vocab: c.n_vocab }.into());
        }
        if session.k.is_empty() {
            session.k = vec![Vec::new(); c.n_layer];
            session.v = vec![Vec::new(); c.n_layer];
        }
        let weights = Weights::from_gguf(&self.gguf, c)?;
        let n = tokens.len();
        let pos0 = session.n_past;
        let positions: Vec<usize> = (pos0..pos0 + n).collect();
        let loras = |w: &Weight| -> Vec<(&LoraTensor, f32)> { adapters.iter().filter_map(|(a, s)| a.tensors.get(w.name).map(|t| (t, *s))).collect() };
        let lin = |x: &[f32], w: &Weight, b: Option<&Vec<f32>>| linear_forward(self.backend.as_ref(), x, w, b.map(Vec::as_slice), &loras(w)).map_err(compute_err);

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
