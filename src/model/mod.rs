//! The native engine: a llama-family transformer (`llama`, `qwen2`, `qwen3`; their quirks
//! in src/model/README.md) computed by edgelora
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
pub mod precision;
pub mod profile;
pub mod validate;
pub mod weights;

use std::sync::{Arc, Mutex};

use rayon::prelude::*;

use crate::adapter::LoraAdapter;
use crate::compute::gpu::Gpu;
use crate::compute::packed::{PackedStore, Packing};
use crate::compute::{Backend, ComputeError};
use crate::error::{EngineError, Error};
use crate::gguf::GgufFile;

use config::ModelConfig;
use gpu_forward::{GpuCache, GpuForward, GpuItem};
use ops::{attention::attention_forward, embedding::embedding_forward, linear::{linear_forward_rows, linear_forward_shared, DecodeLora, RowLora}, rmsnorm::rmsnorm_forward, rope::rope_forward, swiglu::swiglu_forward, geglu::geglu_forward};
use weights::{Weight, Weights};

/// A model ready to run: the mapped GGUF, its config, a compute backend. The weight
/// views are re-borrowed from the map for each call (cheap: slices and the small norm
/// vectors), so the model owns its file without self-references.
pub struct NativeModel {
    pub config: ModelConfig,
    gguf: GgufFile,
    exec: Exec,
    /// Which compact copies decoding on the host reads ([`DecodeFactors`]).
    decode_factors: DecodeFactors,
    /// Those copies of recently used adapters' factors (per adapter id), most recent last.
    decode_copies: Mutex<Vec<(u64, Arc<DecodeAdapter>)>>,
    /// Packed copies of the matrices for decoding products, made on first use, where the
    /// backend takes them ([`Backend::packs_weights`]).
    packed: Option<PackedStore>,
}

/// The factors decoding on the host reads (rows of up to `FEW_ROWS`; longer prompts read
/// the adapters' f32 factors). The GPU forward keeps its own f16 copies either way.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum DecodeFactors {
    /// f16 copies of the tensors whose factors are all f16 exactly, B blocked in f32 for
    /// the others ([`DecodeLora::exact`]): bit for bit the f32 factors' results.
    #[default]
    Exact,
    /// int8 copies of every tensor's factors, a scale per rank component: half the bytes
    /// of f16 per decoded token, lossy ([`DecodeLora::Int8`]).
    Int8,
}

/// An adapter's compact factor copies ([`DecodeLora`]) by tensor name.
type DecodeAdapter = std::collections::BTreeMap<String, DecodeLora>;

/// Adapters whose compact copies a model keeps (a serving batch may use many; each copy
/// is a half or a quarter of the adapter's f32 size). An adapter must not change in place
/// once used, as for the GPU's device copies ([`LoraAdapter::id`]).
const DECODE_SLOTS: usize = 16;

/// Where the forward runs.
enum Exec {
    /// On the host, matrices through a backend (the CPU kernels, or a GPU one call at a time).
    Host(Box<dyn Backend>),
    /// Start to end on the GPU.
    Device(Box<GpuForward>),
}

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

    /// Bytes its KV cache has allocated (on the host, or on the device).
    pub fn kv_bytes(&self) -> usize {
        self.k.iter().chain(&self.v).map(|c| c.capacity() * 4).sum::<usize>() + self.gpu.as_ref().map_or(0, GpuCache::bytes)
    }

    /// Makes room on the host for `positions` positions in all (of `width` floats per
    /// layer, K and V); callers go through [`NativeModel::reserve`], which picks host or
    /// device.
    fn reserve(&mut self, n_layer: usize, width: usize, positions: usize) {
        if self.k.is_empty() {
            self.k = vec![Vec::new(); n_layer];
            self.v = vec![Vec::new(); n_layer];
        }
        for c in self.k.iter_mut().chain(self.v.iter_mut()) {
            c.reserve_exact((positions * width).saturating_sub(c.len()));
        }
    }

    /// Forgets positions `n..` (keeps the first `n`).
    pub fn truncate(&mut self, n: usize) {
        if n >= self.n_past {
            return;
        }
        let per_pos = |c: &Vec<f32>| c.len().checked_div(self.n_past).unwrap_or(0);
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
        let packed = backend.packs_weights().then(|| PackedStore::new(&gguf));
        Ok(NativeModel { config, gguf, exec: Exec::Host(backend), decode_factors: DecodeFactors::Exact, decode_copies: Default::default(), packed })
    }

    /// Opens `gguf` with the whole forward on `gpu`: uploads every weight; fails (with the
    /// tensor named) when one is in a format the device kernels do not read.
    pub fn on_gpu(gguf: GgufFile, gpu: Gpu) -> Result<NativeModel, Error> {
        let config = ModelConfig::from_gguf(&gguf)?;
        let forward = GpuForward::new(gpu, &Weights::from_gguf(&gguf, &config)?, &config).map_err(compute_err)?;
        Ok(NativeModel { config, gguf, exec: Exec::Device(Box::new(forward)), decode_factors: DecodeFactors::Exact, decode_copies: Default::default(), packed: None })
    }

    pub fn gguf(&self) -> &GgufFile {
        &self.gguf
    }

    /// Which factor copies decoding on the host reads (default [`DecodeFactors::Exact`]);
    /// copies made under the previous choice are dropped. A model [`on_gpu`](Self::on_gpu)
    /// refuses `Int8` (the device forward reads its own f16 copies).
    pub fn set_decode_factors(&mut self, d: DecodeFactors) -> Result<(), Error> {
        if d == DecodeFactors::Int8 && matches!(self.exec, Exec::Device(_)) {
            return Err(EngineError::BadOption("int8 factor copies (--lora-int8) are for the CPU: the GPU forward reads f16 factors".into()).into());
        }
        self.decode_factors = d;
        self.decode_copies.get_mut().unwrap_or_else(|e| e.into_inner()).clear();
        Ok(())
    }

    pub fn decode_factors(&self) -> DecodeFactors {
        self.decode_factors
    }

    pub fn backend_name(&self) -> String {
        match &self.exec {
            Exec::Host(b) => b.name(),
            Exec::Device(f) => format!("gpu (whole forward): {}", f.adapter_name()),
        }
    }

    /// At least one token, every one in the vocabulary.
    fn check_tokens(&self, tokens: &[i32]) -> Result<(), Error> {
        if tokens.is_empty() {
            return Err(EngineError::EmptyPrompt.into());
        }
        match tokens.iter().find(|&&t| t < 0 || t as usize >= self.config.n_vocab) {
            Some(&bad) => Err(EngineError::BadToken { id: bad.into(), n_vocab: self.config.n_vocab }.into()),
            None => Ok(()),
        }
    }

    /// Runs `tokens` (positions `session.n_past..`) through the model, appending to the
    /// KV cache, with `adapters` (adapter, weight) applied on the fly. Returns the logits
    /// of the last token, or of every token when `all_logits`.
    pub fn forward(&self, session: &mut Session, tokens: &[i32], adapters: &[(&LoraAdapter, f32)], all_logits: bool) -> Result<Vec<Vec<f32>>, Error> {
        self.check_tokens(tokens)?;
        match &self.exec {
            // On a pool worker: the kernels' parallel loops then start without a
            // cross-thread hand-off per call (hundreds per token), and run inline on a
            // 1-thread pool.
            Exec::Host(backend) => {
                let mut item = [BatchItem { session, tokens, adapters, all_logits }];
                Ok(rayon::scope(|_| self.forward_on_host(backend.as_ref(), &mut item, true))?.pop().unwrap_or_default())
            }
            Exec::Device(f) => {
                let logits = f.forward(&mut session.gpu, session.n_past, tokens, adapters, all_logits).map_err(compute_err)?;
                session.n_past += tokens.len();
                Ok(logits)
            }
        }
    }

    /// Makes room in `session`'s KV cache for `positions` positions in all, on the host or
    /// on the device, so that growing to them allocates nothing more: how a bounded KV pool
    /// holds.
    pub fn reserve(&self, session: &mut Session, positions: usize) -> Result<(), Error> {
        let c = &self.config;
        match &self.exec {
            Exec::Host(_) => session.reserve(c.n_layer, c.kv_width(), positions),
            Exec::Device(f) => f.reserve_cache(&mut session.gpu, session.n_past, positions).map_err(compute_err)?,
        }
        Ok(())
    }

    /// Steps `sessions.len()` sequences at once: one token each (`tokens[i]` continues
    /// `sessions[i]`), on the host, with `adapters` on the fly. Returns each sequence's logits. The
    /// products take all sequences' rows together (a matrix product per weight instead of
    /// one vector product per sequence): how merge samples its GPTQ calibration tokens.
    pub fn forward_lockstep(&self, sessions: &mut [Session], tokens: &[i32], adapters: &[(&LoraAdapter, f32)]) -> Result<Vec<Vec<f32>>, Error> {
        if tokens.len() != sessions.len() {
            return Err(EngineError::BadOption(format!("lockstep forward: {} tokens for {} sequences (one each)", tokens.len(), sessions.len())).into());
        }
        let mut items: Vec<BatchItem> = sessions.iter_mut().zip(tokens).map(|(s, t)| BatchItem { session: s, tokens: std::slice::from_ref(t), adapters, all_logits: false }).collect();
        // Calibration keeps the f32 products beyond `split_rows` rows (GPTQ's statistics
        // are read from these activations).
        Ok(self.forward_items(&mut items, false)?.into_iter().flatten().collect())
    }

    /// Steps several sequences in one forward, each with its own tokens (a decode step's
    /// one, or a chunk of its prompt) and its own adapter set: every base projection runs
    /// once over all rows, each adapter over the rows of the sequences that use it. Returns,
    /// per item, the logits of its last token (or of every token when `all_logits`). On
    /// the host or, for a model [`on_gpu`](NativeModel::on_gpu), on the device.
    ///
    /// On the host, a step of decoding sequences alone (one token each) takes the packed
    /// decoding products ([`crate::compute::packed`]) at any batch size, so each row gets
    /// the value it gets alone.
    pub fn forward_batch(&self, items: &mut [BatchItem]) -> Result<Vec<Vec<Vec<f32>>>, Error> {
        self.forward_items(items, true)
    }

    /// [`forward_batch`](Self::forward_batch); `decode_steps`: whether a step of one-token
    /// items takes the packed products beyond `split_rows` rows.
    fn forward_items(&self, items: &mut [BatchItem], decode_steps: bool) -> Result<Vec<Vec<Vec<f32>>>, Error> {
        if items.is_empty() {
            return Ok(Vec::new());
        }
        for it in items.iter() {
            self.check_tokens(it.tokens)?;
        }
        match &self.exec {
            Exec::Host(backend) => rayon::scope(|_| self.forward_on_host(backend.as_ref(), items, decode_steps)),
            Exec::Device(f) => {
                let mut on_device: Vec<GpuItem> = items.iter_mut().map(|it| GpuItem { cache: &mut it.session.gpu, n_past: it.session.n_past, tokens: it.tokens, adapters: it.adapters, all_logits: it.all_logits }).collect();
                let logits = f.forward_batch(&mut on_device).map_err(compute_err)?;
                drop(on_device);
                for it in items.iter_mut() {
                    it.session.n_past += it.tokens.len();
                }
                Ok(logits)
            }
        }
    }

    /// The compact copies ([`DecodeFactors`]) of each adapter in `sets` (made on first
    /// use), by adapter id.
    fn decode_copies(&self, sets: &[&[(&LoraAdapter, f32)]]) -> Vec<(u64, Arc<DecodeAdapter>)> {
        let mut slots = self.decode_copies.lock().unwrap_or_else(|e| e.into_inner());
        let mut out: Vec<(u64, Arc<DecodeAdapter>)> = Vec::new();
        for (a, _) in sets.iter().flat_map(|s| s.iter()) {
            if out.iter().any(|(id, _)| *id == a.id()) {
                continue;
            }
            let copy = match slots.iter().position(|(id, _)| *id == a.id()) {
                Some(i) => slots.remove(i).1,
                None => Arc::new(match self.decode_factors {
                    DecodeFactors::Exact => a.tensors.iter().map(|(name, t)| (name.clone(), DecodeLora::exact(t))).collect(),
                    DecodeFactors::Int8 => a.tensors.iter().map(|(name, t)| (name.clone(), DecodeLora::int8(t))).collect(),
                }),
            };
            slots.push((a.id(), Arc::clone(&copy)));
            out.push((a.id(), copy));
        }
        let keep = DECODE_SLOTS.max(out.len());
        if slots.len() > keep {
            let extra = slots.len() - keep;
            slots.drain(..extra);
        }
        out
    }

    /// The host forward of every item's tokens (each continues its own session).
    fn forward_on_host(&self, backend: &dyn Backend, items: &mut [BatchItem], decode_steps: bool) -> Result<Vec<Vec<Vec<f32>>>, Error> {
        let c = &self.config;
        // Decoding products on the packed copies where the model keeps them: every product
        // of a step of decoding sequences alone, the short ones of a step with prompt rows.
        let packing;
        let backend: &dyn Backend = match &self.packed {
            Some(store) => {
                let max_rows = if decode_steps && items.iter().all(|it| it.tokens.len() == 1) { usize::MAX } else { crate::compute::cpu::split_rows() };
                packing = Packing { inner: backend, store, max_rows };
                &packing
            }
            None => backend,
        };
        for it in items.iter_mut().filter(|it| it.session.k.is_empty()) {
            it.session.k = vec![Vec::new(); c.n_layer];
            it.session.v = vec![Vec::new(); c.n_layer];
        }
        let weights = Weights::from_gguf(&self.gguf, c)?;
        // Item i owns rows off[i]..off[i + 1] of every activation.
        let mut off = vec![0usize];
        for it in items.iter() {
            off.push(off.last().copied().unwrap_or(0) + it.tokens.len());
        }
        let tokens: Vec<i32> = items.iter().flat_map(|it| it.tokens.iter().copied()).collect();
        let positions: Vec<usize> = items.iter().flat_map(|it| it.session.n_past..it.session.n_past + it.tokens.len()).collect();
        // Per weight: each adapter that targets it, over the rows of the items using it
        // (item i's rows are off[i]..off[i + 1]).
        let sets: Vec<&[(&LoraAdapter, f32)]> = items.iter().map(|it| it.adapters).collect();
        let copies = self.decode_copies(&sets);
        let copy_of = |a: &LoraAdapter, name: &str| copies.iter().find(|(id, _)| *id == a.id()).and_then(|(_, h)| h.get(name));
        let loras_at = |w: &Weight, off: &[usize]| -> Vec<RowLora> {
            let mut groups: Vec<RowLora> = Vec::new();
            for (i, set) in sets.iter().enumerate() {
                for (a, s) in set.iter() {
                    let Some(t) = a.tensors.get(w.name) else { continue };
                    let seg = (off[i], off[i + 1], *s);
                    match groups.iter_mut().find(|g| std::ptr::eq(g.t, t)) {
                        Some(g) => g.segments.push(seg),
                        None => groups.push(RowLora { t, segments: vec![seg], decode: copy_of(a, w.name) }),
                    }
                }
            }
            groups
        };
        let lin = |x: &[f32], w: &Weight, b: Option<&Vec<f32>>| {
            linear_forward_rows(backend, x, w, b.map(Vec::as_slice), &loras_at(w, &off)).map_err(compute_err)
        };
        // Linear layers of one input (q/k/v, gate/up), their base products in one call.
        let lin_shared = |x: &[f32], ws: &[(&Weight, Option<&Vec<f32>>)]| -> Result<Vec<Vec<f32>>, Error> {
            let loras: Vec<Vec<RowLora>> = ws.iter().map(|(w, _)| loras_at(w, &off)).collect();
            let layers: Vec<(&Weight, Option<&[f32]>, &[RowLora])> = ws.iter().zip(&loras).map(|((w, b), l)| (*w, b.map(Vec::as_slice), l.as_slice())).collect();
            linear_forward_shared(backend, x, &layers).map_err(compute_err)
        };
        use profile::time;
        let (q_w, kv_w) = (c.q_width(), c.kv_width());

        // x [n, n_embd]
        let mut x = time(|| "embedding".into(), || embedding_forward(&tokens, &weights.token_embd)).map_err(|e| compute_err(e.into()))?;
        if let Some(s) = c.embd_scale {
            x.iter_mut().for_each(|v| *v *= s);
        }
        for (l, layer) in weights.layers.iter().enumerate() {
            // attention block
            let h = time(|| "rmsnorm".into(), || rmsnorm_forward(&x, &layer.attn_norm, c.rms_eps));
            // q [n, n_head·hd], k and v [n, n_kv·hd]
            let [mut q, mut k, v]: [Vec<f32>; 3] = lin_shared(&h, &[(&layer.wq, layer.bq.as_ref()), (&layer.wk, layer.bk.as_ref()), (&layer.wv, layer.bv.as_ref())])?.try_into().expect("three products");
            if let (Some(qn), Some(kn)) = (&layer.q_norm, &layer.k_norm) {
                // qwen3: RMSNorm over each head's head_dim values (the weight's width).
                time(|| "q/k norm".into(), || {
                    q = rmsnorm_forward(&q, qn, c.rms_eps);
                    k = rmsnorm_forward(&k, kn, c.rms_eps);
                });
            }
            time(|| "rope".into(), || {
                rope_forward(&mut q, &c.rope_at(l, c.n_head), &positions);
                rope_forward(&mut k, &c.rope_at(l, c.n_head_kv), &positions);
            });
            // each sequence attends over its own cache
            let att: Vec<f32> = time(|| "attention (and KV append)".into(), || {
                for (i, it) in items.iter_mut().enumerate() {
                    let s = &mut *it.session;
                    s.k[l].extend_from_slice(&k[off[i] * kv_w..off[i + 1] * kv_w]);
                    s.v[l].extend_from_slice(&v[off[i] * kv_w..off[i + 1] * kv_w]);
                }
                // The sequences in parallel (each alone: its values do not depend on the others).
                let parts: Vec<Vec<f32>> = items.par_iter().enumerate().map(|(i, it)| attention_forward(&q[off[i] * q_w..off[i + 1] * q_w], &it.session.k[l], &it.session.v[l], it.session.n_past, c.heads_at(l), None)).collect();
                parts.concat()
            });
            let mut o = lin(&att, &layer.wo, None)?;
            if let Some(pn) = &layer.post_attn_norm {
                o = time(|| "rmsnorm".into(), || rmsnorm_forward(&o, pn, c.rms_eps));
            }
            x.iter_mut().zip(&o).for_each(|(a, b)| *a += b);
            // feed-forward block
            let h = time(|| "rmsnorm".into(), || rmsnorm_forward(&x, &layer.ffn_norm, c.rms_eps));
            let [g, u]: [Vec<f32>; 2] = lin_shared(&h, &[(&layer.w_gate, None), (&layer.w_up, None)])?.try_into().expect("two products");
            let act = if c.gelu_gate { time(|| "geglu".into(), || geglu_forward(&g, &u)) } else { time(|| "swiglu".into(), || swiglu_forward(&g, &u)) };
            let mut d = lin(&act, &layer.w_down, None)?;
            if let Some(pn) = &layer.post_ffn_norm {
                d = time(|| "rmsnorm".into(), || rmsnorm_forward(&d, pn, c.rms_eps));
            }
            x.iter_mut().zip(&d).for_each(|(a, b)| *a += b);
        }
        // The rows whose logits are wanted: each item's last, or all of its rows.
        let wanted = |i: usize| if items[i].all_logits { off[i]..off[i + 1] } else { off[i + 1] - 1..off[i + 1] };
        let last: Vec<f32> = (0..items.len()).flat_map(wanted).flat_map(|r| x[r * c.n_embd..(r + 1) * c.n_embd].iter().copied()).collect();
        // Item i's wanted rows are out_off[i]..out_off[i + 1] of `last`.
        let mut out_off = vec![0usize];
        for i in 0..items.len() {
            out_off.push(out_off[i] + wanted(i).len());
        }
        let h = time(|| "rmsnorm".into(), || rmsnorm_forward(&last, &weights.output_norm, c.rms_eps));
        let logits = linear_forward_rows(backend, &h, &weights.output, None, &loras_at(&weights.output, &out_off)).map_err(compute_err)?;
        for it in items.iter_mut() {
            it.session.n_past += it.tokens.len();
        }
        let mut rows = logits.chunks_exact(c.n_vocab).map(<[f32]>::to_vec);
        Ok(out_off.windows(2).map(|w| rows.by_ref().take(w[1] - w[0]).collect()).collect())
    }
}

/// One sequence's part of a batched forward ([`NativeModel::forward_batch`]).
pub struct BatchItem<'a> {
    pub session: &'a mut Session,
    /// At least one token; they continue the session at its `n_past`.
    pub tokens: &'a [i32],
    /// (adapter, weight) applied to this sequence's rows.
    pub adapters: &'a [(&'a LoraAdapter, f32)],
    pub all_logits: bool,
}
