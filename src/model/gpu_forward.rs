//! The native engine's forward on wgpu, start to end on the device: every weight is
//! uploaded once in its stored format (row chunks under the binding limit), the KV cache
//! and the active adapters' factors live on the device, and a call records the whole
//! forward (embedding rows → layers → output head) into one [`Graph`] and reads back only
//! the logits. The host computes nothing but RoPE's (cos, sin) table for the batch's
//! positions (in f64, as the CPU path does).
//!
//! A call may hold several sequences ([`GpuForward::forward_batch`], how `serve` batches
//! on the device): their rows go through each weight together, each sequence's adapters
//! over its own rows, attention over each one's own cache.
//!
//! Same math as the CPU forward in [`super::NativeModel`] (f32 on exactly dequantized
//! weights), in a different summation order.

use std::collections::BTreeMap;
use std::sync::Mutex;

use super::config::{ModelConfig, RopeStyle};
use super::weights::{Weight, Weights};
use crate::adapter::LoraAdapter;
use crate::compute::gpu::{bits, Gpu, Graph, Grid, Ops, MATVEC_ROWS};
use crate::compute::ComputeError;

/// Device copies of this many adapters are kept (least recently used dropped first; a
/// batch whose sequences bring more keeps all of its own).
const ADAPTER_SLOTS: usize = 16;

/// A weight matrix [n_out, n_in] on the device, in row chunks of its stored format.
struct DeviceWeight {
    name: String,
    t: crate::gguf::GgmlType,
    n_in: usize,
    n_out: usize,
    /// First row within the tensor `name` (0 unless part of a fused tensor: phi3).
    row0: usize,
    row_bytes: usize,
    /// (buffer, first row, rows)
    chunks: Vec<(wgpu::Buffer, usize, usize)>,
}

struct DeviceLayer {
    attn_norm: wgpu::Buffer,
    /// Post-attention and post-feed-forward norm weights (gemma3).
    post_norms: Option<(wgpu::Buffer, wgpu::Buffer)>,
    wq: DeviceWeight,
    wk: DeviceWeight,
    wv: DeviceWeight,
    wo: DeviceWeight,
    bq: Option<wgpu::Buffer>,
    bk: Option<wgpu::Buffer>,
    bv: Option<wgpu::Buffer>,
    /// Per-head q/k norm weights [head_dim] (`qwen3`).
    qk_norm: Option<(wgpu::Buffer, wgpu::Buffer)>,
    ffn_norm: wgpu::Buffer,
    w_gate: DeviceWeight,
    w_up: DeviceWeight,
    w_down: DeviceWeight,
}

/// One adapted weight's factors on the device: A [rank, n_in], B [n_out, rank], f32.
struct DeviceLora {
    a: wgpu::Buffer,
    /// B's rows per part of the tensor, by the part's first row: one part (0, all of B)
    /// unless the tensor is fused (phi3's q/k/v, gate/up: each part its own rows).
    b: Vec<(usize, wgpu::Buffer)>,
    rank: usize,
    scale: f32,
}

struct DeviceAdapter {
    id: u64,
    tensors: BTreeMap<String, DeviceLora>,
}

impl GpuCache {
    /// Device bytes it holds (K and V, every layer).
    pub fn bytes(&self) -> usize {
        self.k.iter().chain(&self.v).map(|b| b.size() as usize).sum()
    }
}

/// One sequence's part of a batched forward on the device ([`GpuForward::forward_batch`]).
pub struct GpuItem<'a> {
    /// Its KV cache (created or grown as needed).
    pub cache: &'a mut Option<GpuCache>,
    /// Positions already in the cache; `tokens` continue there.
    pub n_past: usize,
    /// At least one token.
    pub tokens: &'a [i32],
    /// (adapter, weight) applied to this sequence's rows.
    pub adapters: &'a [(&'a LoraAdapter, f32)],
    pub all_logits: bool,
}

/// The rows of one sequence in a batch, and the adapters (device copies, weights) on them.
struct Segment<'a> {
    row0: usize,
    rows: usize,
    adapters: Vec<(&'a DeviceAdapter, f32)>,
}

/// A sequence's KV cache on the device: per layer [capacity, n_head_kv·head_dim] f32.
pub struct GpuCache {
    k: Vec<wgpu::Buffer>,
    v: Vec<wgpu::Buffer>,
    capacity: usize,
}

/// Activations of one call, reallocated when a call needs more.
struct Scratch {
    n: usize,
    ids: wgpu::Buffer,
    cs: wgpu::Buffer,
    /// The (cos, sin) table of sliding-window layers (their own RoPE base; gemma3).
    cs_swa: wgpu::Buffer,
    x: wgpu::Buffer,
    h: wgpu::Buffer,
    /// [n, n_head·head_dim]
    q: wgpu::Buffer,
    /// [n, n_head·head_dim]; with q/k norms also q and k before their norm.
    att: wgpu::Buffer,
    /// This call's keys and values [n, n_head_kv·head_dim] (after RoPE, the keys) before
    /// their copy into each sequence's cache.
    k: wgpu::Buffer,
    v: wgpu::Buffer,
    /// The rows whose logits are wanted, gathered [n, n_embd].
    last: wgpu::Buffer,
    gate: wgpu::Buffer,
    up: wgpu::Buffer,
    /// LoRA's x·Aᵀ [n, rank], `lora_len` floats.
    lora: wgpu::Buffer,
    lora_len: usize,
    /// Attention scores [rows, n_head, ctx], `scores_len` floats.
    scores: wgpu::Buffer,
    scores_len: usize,
    /// [rows, n_vocab], `logits_rows` rows.
    logits: wgpu::Buffer,
    logits_rows: usize,
}

/// The model resident on one GPU.
pub struct GpuForward {
    gpu: Gpu,
    ops: Ops,
    config: ModelConfig,
    token_embd: DeviceWeight,
    /// None: tied to `token_embd`.
    output: Option<DeviceWeight>,
    output_norm: wgpu::Buffer,
    layers: Vec<DeviceLayer>,
    adapters: Mutex<Vec<DeviceAdapter>>,
    scratch: Mutex<Option<Scratch>>,
    /// Fused tensors' parts: tensor name → (first row, rows) of each part.
    parts: BTreeMap<String, Vec<(usize, usize)>>,
}

fn floats(v: &[f32]) -> &[u8] {
    bytemuck::cast_slice(v)
}

/// Where a linear layer's output goes: `buf[base + r·stride + o]`, added to or replaced.
#[derive(Clone, Copy)]
struct Out<'a> {
    buf: &'a wgpu::Buffer,
    base: usize,
    stride: usize,
    accumulate: bool,
}

impl GpuForward {
    /// Uploads the model's weights; fails naming the first weight whose format has no
    /// device kernel (every format the native engine reads has one today).
    pub fn new(gpu: Gpu, weights: &Weights, config: &ModelConfig) -> Result<GpuForward, ComputeError> {
        if config.post_norms && config.n_ff < config.n_embd {
            // The post-norms' output borrows the [n, n_ff] `up` scratch.
            return Err(ComputeError::Shape(format!("post-norms with feed_forward_length {} < embedding_length {}", config.n_ff, config.n_embd)));
        }
        let ops = Ops::new(&gpu)?;
        let vec = |label: &str, v: &[f32]| gpu.upload(label, floats(v));
        let mat = |w: &Weight| -> Result<DeviceWeight, ComputeError> {
            if !Ops::supports(w.t) {
                return Err(ComputeError::Shape(format!("{}: {} has no GPU kernel", w.name, w.t)));
            }
            let row_bytes = w.bytes.len() / w.n_out;
            let per_chunk = (gpu.max_binding() as usize / row_bytes).max(1);
            let chunks = w.bytes.chunks(per_chunk * row_bytes).enumerate().map(|(i, c)| (gpu.upload(w.name, c), i * per_chunk, c.len() / row_bytes)).collect();
            Ok(DeviceWeight { name: w.name.to_string(), t: w.t, n_in: w.n_in, n_out: w.n_out, row0: w.row0, row_bytes, chunks })
        };
        let mut parts: BTreeMap<String, Vec<(usize, usize)>> = BTreeMap::new();
        for w in weights.layers.iter().flat_map(|l| [&l.wq, &l.wk, &l.wv, &l.w_gate, &l.w_up]).filter(|w| w.is_part()) {
            parts.entry(w.name.to_string()).or_default().push((w.row0, w.n_out));
        }
        let mut layers = Vec::with_capacity(weights.layers.len());
        for l in &weights.layers {
            layers.push(DeviceLayer {
                attn_norm: vec("attn_norm", &l.attn_norm),
                post_norms: l.post_attn_norm.as_deref().zip(l.post_ffn_norm.as_deref()).map(|(a, f)| (vec("post_attn_norm", a), vec("post_ffn_norm", f))),
                wq: mat(&l.wq)?,
                wk: mat(&l.wk)?,
                wv: mat(&l.wv)?,
                wo: mat(&l.wo)?,
                bq: l.bq.as_deref().map(|b| vec("bq", b)),
                bk: l.bk.as_deref().map(|b| vec("bk", b)),
                bv: l.bv.as_deref().map(|b| vec("bv", b)),
                qk_norm: l.q_norm.as_deref().zip(l.k_norm.as_deref()).map(|(q, k)| (vec("q_norm", q), vec("k_norm", k))),
                ffn_norm: vec("ffn_norm", &l.ffn_norm),
                w_gate: mat(&l.w_gate)?,
                w_up: mat(&l.w_up)?,
                w_down: mat(&l.w_down)?,
            });
        }
        Ok(GpuForward {
            token_embd: mat(&weights.token_embd)?,
            output: if config.tied_embeddings { None } else { Some(mat(&weights.output)?) },
            output_norm: vec("output_norm", &weights.output_norm),
            layers,
            adapters: Mutex::new(Vec::new()),
            scratch: Mutex::new(None),
            parts,
            config: config.clone(),
            ops,
            gpu,
        })
    }

    pub fn adapter_name(&self) -> String {
        self.gpu.adapter()
    }

    /// Runs `tokens` at positions `n_past..` through the model, appending their keys and
    /// values to `cache` (created or grown as needed), with `adapters` on the fly. Returns
    /// the last row's logits, or every row's when `all_logits`.
    pub fn forward(&self, cache: &mut Option<GpuCache>, n_past: usize, tokens: &[i32], adapters: &[(&LoraAdapter, f32)], all_logits: bool) -> Result<Vec<Vec<f32>>, ComputeError> {
        let mut items = [GpuItem { cache, n_past, tokens, adapters, all_logits }];
        Ok(self.forward_batch(&mut items)?.pop().unwrap_or_default())
    }

    /// Runs several sequences in one forward, each with its own tokens, KV cache and
    /// adapter set: every base projection runs once over all rows (the weights read once
    /// per step, not once per sequence), each adapter's B·(A·x) over the rows of the
    /// sequences that use it, attention per sequence over its own cache. Returns, per item,
    /// the logits of its last token (or of every token when `all_logits`). The callers
    /// advance `n_past`.
    pub fn forward_batch(&self, items: &mut [GpuItem]) -> Result<Vec<Vec<Vec<f32>>>, ComputeError> {
        let c = &self.config;
        let gpu = &self.gpu;
        let (d, qw, kv, hd) = (c.n_embd, c.q_width(), c.kv_width(), c.head_dim);
        // Item i owns rows off[i]..off[i + 1] of every activation.
        let mut off = vec![0usize];
        for it in items.iter() {
            off.push(off[off.len() - 1] + it.tokens.len());
        }
        let n = off[items.len()];
        if let Some(i) = items.iter().position(|it| it.tokens.is_empty()) {
            return Err(ComputeError::Shape(format!("batch item {i} has no tokens (each needs at least one)")));
        }
        if n == 0 {
            return Ok(Vec::new());
        }
        for it in items.iter_mut() {
            self.reserve_cache(it.cache, it.n_past, it.n_past + it.tokens.len())?;
        }
        let items: &[GpuItem] = items;
        let caches: Vec<&GpuCache> = items.iter().map(|it| it.cache.as_ref().expect("reserved")).collect();
        let mut device_adapters = self.adapters.lock().unwrap_or_else(|e| e.into_inner());
        let mut distinct: Vec<&LoraAdapter> = Vec::new();
        for (a, _) in items.iter().flat_map(|it| it.adapters.iter()) {
            if !distinct.iter().any(|b| b.id() == a.id()) {
                distinct.push(a);
            }
        }
        let resident = self.resident(&mut device_adapters, &distinct)?;
        let on_device = |a: &LoraAdapter| resident[distinct.iter().position(|b| b.id() == a.id()).expect("listed above")];
        let segments: Vec<Segment> = items.iter().zip(off.windows(2)).map(|(it, w)| Segment { row0: w[0], rows: w[1] - w[0], adapters: it.adapters.iter().map(|(a, s)| (on_device(a), *s)).collect() }).collect();
        let max_rank = segments.iter().flat_map(|sg| sg.adapters.iter().flat_map(|(a, _)| a.tensors.values().map(|t| t.rank))).max().unwrap_or(0);
        let ctx = items.iter().map(|it| it.n_past + it.tokens.len()).max().unwrap_or(0);
        // The rows whose logits are wanted: each item's last, or all of its rows.
        let wanted: Vec<std::ops::Range<usize>> = items.iter().zip(off.windows(2)).map(|(it, w)| if it.all_logits { w[0]..w[1] } else { w[1] - 1..w[1] }).collect();
        let m = wanted.iter().map(|r| r.len()).sum::<usize>();
        // Attention scores in query chunks under the binding limit.
        let q_chunk = (gpu.max_binding() as usize / (4 * c.n_head * ctx)).clamp(1, n);
        let head_rows = (gpu.max_binding() as usize / (4 * c.n_vocab)).clamp(1, m);
        let mut scratch = self.scratch.lock().unwrap_or_else(|e| e.into_inner());
        let s = self.reserve_scratch(&mut scratch, n, n * max_rank, q_chunk * c.n_head * ctx, head_rows);

        let ids: Vec<u32> = items.iter().flat_map(|it| it.tokens.iter().map(|&t| t as u32)).collect();
        let positions: Vec<usize> = items.iter().flat_map(|it| it.n_past..it.n_past + it.tokens.len()).collect();
        gpu.write(&s.ids, 0, bytemuck::cast_slice(&ids));
        gpu.write(&s.cs, 0, floats(&rope_table(&c.rope(1), &positions)));
        if let Some(l) = (0..c.n_layer).find(|&l| c.window(l).is_some()) {
            gpu.write(&s.cs_swa, 0, floats(&rope_table(&c.rope_at(l, 1), &positions)));
        }

        let mut g = Graph::new(gpu);
        let ops = &self.ops;
        // x [n, d] = token_embd[ids]
        let e = &self.token_embd;
        for (buf, row0, rows) in &e.chunks {
            g.dispatch(ops.get_rows(e.t)?, &[buf, &s.ids, &s.x], &[d as u32, e.row_bytes as u32, n as u32, *row0 as u32, *rows as u32], Grid::Threads((n * d) as u64));
        }
        if let Some(scale) = c.embd_scale {
            g.dispatch(&ops.scale, &[&s.x], &[(n * d) as u32, bits(scale)], Grid::Threads((n * d) as u64));
        }
        for (l, layer) in self.layers.iter().enumerate() {
            // attention block: h = norm(x); q, k, v [n, ·]; RoPE
            self.rmsnorm(&mut g, &s.x, 0, &layer.attn_norm, &s.h, n);
            match &layer.qk_norm {
                None => {
                    self.linear(&mut g, &segments, &s.lora, &s.h, n, &layer.wq, layer.bq.as_ref(), Out { buf: &s.q, base: 0, stride: qw, accumulate: false })?;
                    self.linear(&mut g, &segments, &s.lora, &s.h, n, &layer.wk, layer.bk.as_ref(), Out { buf: &s.k, base: 0, stride: kv, accumulate: false })?;
                }
                Some((qn, kn)) => {
                    // qwen3: q and k through `att` (free until attention), normalized per
                    // head (rows of head_dim) into q and k.
                    self.linear(&mut g, &segments, &s.lora, &s.h, n, &layer.wq, layer.bq.as_ref(), Out { buf: &s.att, base: 0, stride: qw, accumulate: false })?;
                    self.norm_rows(&mut g, &s.att, 0, qn, &s.q, hd, n * c.n_head);
                    self.linear(&mut g, &segments, &s.lora, &s.h, n, &layer.wk, layer.bk.as_ref(), Out { buf: &s.att, base: 0, stride: kv, accumulate: false })?;
                    self.norm_rows(&mut g, &s.att, 0, kn, &s.k, hd, n * c.n_head_kv);
                }
            }
            self.linear(&mut g, &segments, &s.lora, &s.h, n, &layer.wv, layer.bv.as_ref(), Out { buf: &s.v, base: 0, stride: kv, accumulate: false })?;
            let neox = u32::from(c.rope_style == RopeStyle::NeoX);
            let half = c.rope_dim / 2;
            let cs = if c.window(l).is_some() { &s.cs_swa } else { &s.cs };
            for (buf, heads) in [(&s.q, c.n_head), (&s.k, c.n_head_kv)] {
                g.dispatch(&ops.rope, &[buf, cs], &[n as u32, heads as u32, hd as u32, half as u32, neox, 0], Grid::Threads((n * heads * half) as u64));
            }
            // Each sequence's new keys and values into its cache, then attention over it:
            // att [n, n_head·hd] = softmax(q·kᵀ/√hd)·v, in chunks of query rows.
            for ((it, sg), cache) in items.iter().zip(&segments).zip(&caches) {
                let (len, from, to) = (sg.rows * kv, sg.row0 * kv, it.n_past * kv);
                for (src, dst) in [(&s.k, &cache.k[l]), (&s.v, &cache.v[l])] {
                    g.dispatch(&ops.copy, &[src, dst], &[len as u32, from as u32, to as u32], Grid::Threads(len as u64));
                }
                let ctx = it.n_past + sg.rows;
                for q0 in (0..sg.rows).step_by(q_chunk) {
                    let rows = q_chunk.min(sg.rows - q0);
                    let window = c.window(l).unwrap_or(0) as u32;
                    let p = [rows as u32, c.n_head as u32, c.n_head_kv as u32, hd as u32, it.n_past as u32, q0 as u32, ctx as u32, bits(c.attn_scale as f32), window, sg.row0 as u32];
                    g.dispatch(&ops.attention, &[&s.q, &cache.k[l], &cache.v[l], &s.scores, &s.att], &p, Grid::Groups((rows * c.n_head) as u64));
                }
            }
            // x += att·Woᵀ (gemma3: x += norm(att·Woᵀ))
            self.residual_add(&mut g, &segments, s, &s.att, n, &layer.wo, layer.post_norms.as_ref().map(|p| &p.0))?;
            // feed-forward block: x += (act(h·Wgᵀ) ⊙ h·Wuᵀ)·Wdᵀ, act silu or (gemma3) gelu
            self.rmsnorm(&mut g, &s.x, 0, &layer.ffn_norm, &s.h, n);
            self.linear(&mut g, &segments, &s.lora, &s.h, n, &layer.w_gate, None, Out { buf: &s.gate, base: 0, stride: c.n_ff, accumulate: false })?;
            self.linear(&mut g, &segments, &s.lora, &s.h, n, &layer.w_up, None, Out { buf: &s.up, base: 0, stride: c.n_ff, accumulate: false })?;
            g.dispatch(&ops.swiglu, &[&s.gate, &s.up], &[(n * c.n_ff) as u32, u32::from(c.gelu_gate)], Grid::Threads((n * c.n_ff) as u64));
            self.residual_add(&mut g, &segments, s, &s.gate, n, &layer.w_down, layer.post_norms.as_ref().map(|p| &p.1))?;
        }
        // The wanted rows gathered into `last` [m, d]; the output head over them in chunks
        // of `head_rows`, the first chunk in the layers' graph, later ones in their own.
        let mut at = 0;
        for r in &wanted {
            g.dispatch(&ops.copy, &[&s.x, &s.last], &[(r.len() * d) as u32, (r.start * d) as u32, (at * d) as u32], Grid::Threads((r.len() * d) as u64));
            at += r.len();
        }
        let head = self.output.as_ref().unwrap_or(&self.token_embd);
        let mut rows_out = Vec::with_capacity(m);
        let mut graph = Some(g);
        for r0 in (0..m).step_by(head_rows) {
            let rows = head_rows.min(m - r0);
            let mut g = graph.take().unwrap_or_else(|| Graph::new(gpu));
            self.rmsnorm(&mut g, &s.last, r0 * d, &self.output_norm, &s.h, rows);
            self.linear(&mut g, &[], &s.lora, &s.h, rows, head, None, Out { buf: &s.logits, base: 0, stride: c.n_vocab, accumulate: false })?;
            let bytes = g.run(Some((&s.logits, 0, (rows * c.n_vocab * 4) as u64)))?;
            let values: &[f32] = bytemuck::cast_slice(&bytes);
            rows_out.extend(values.chunks_exact(c.n_vocab).map(<[f32]>::to_vec));
        }
        let mut rows_out = rows_out.into_iter();
        Ok(wanted.iter().map(|r| rows_out.by_ref().take(r.len()).collect()).collect())
    }

    /// s.x += x·Wᵀ (+ LoRA), or with a post-norm (gemma3) s.x += rmsnorm(x·Wᵀ) · w, the
    /// product and its norm through `h` and `up` (free at both call sites; `up` holds
    /// n_ff ≥ n_embd values per row, checked in `new`).
    #[allow(clippy::too_many_arguments)]
    fn residual_add<'a>(&'a self, g: &mut Graph<'a>, segs: &[Segment<'a>], s: &'a Scratch, x: &'a wgpu::Buffer, n: usize, w: &'a DeviceWeight, post_norm: Option<&'a wgpu::Buffer>) -> Result<(), ComputeError> {
        let d = self.config.n_embd;
        let Some(pn) = post_norm else {
            return self.linear(g, segs, &s.lora, x, n, w, None, Out { buf: &s.x, base: 0, stride: d, accumulate: true });
        };
        self.linear(g, segs, &s.lora, x, n, w, None, Out { buf: &s.h, base: 0, stride: d, accumulate: false })?;
        self.rmsnorm(g, &s.h, 0, pn, &s.up, n);
        g.dispatch(&self.ops.add, &[&s.up, &s.x], &[(n * d) as u32, (n * d) as u32, 0], Grid::Threads((n * d) as u64));
        Ok(())
    }

    /// out = x·Wᵀ (+ bias) + Σ s·(x·Aᵀ)·Bᵀ over the adapters targeting W, each over the
    /// rows of the segments (sequences) that use it.
    #[allow(clippy::too_many_arguments)]
    fn linear<'a>(&'a self, g: &mut Graph<'a>, segs: &[Segment<'a>], tmp: &'a wgpu::Buffer, x: &'a wgpu::Buffer, n: usize, w: &'a DeviceWeight, bias: Option<&'a wgpu::Buffer>, out: Out<'a>) -> Result<(), ComputeError> {
        // Decoding (few rows): a workgroup per output; prompts: a thread per output.
        let vec = n <= MATVEC_ROWS;
        let kernel = if vec { self.ops.matvec(w.t)? } else { self.ops.matmul(w.t)? };
        for (buf, row0, rows) in &w.chunks {
            let p = [*rows as u32, w.n_in as u32, n as u32, w.row_bytes as u32, out.stride as u32, (out.base + row0) as u32, u32::from(out.accumulate)];
            let grid = if vec { Grid::Groups(*rows as u64) } else { Grid::Threads((n * rows) as u64) };
            g.dispatch(kernel, &[buf, x, out.buf], &p, grid);
        }
        if let Some(b) = bias {
            debug_assert_eq!(out.stride, w.n_out);
            g.dispatch(&self.ops.add, &[b, out.buf], &[(n * w.n_out) as u32, w.n_out as u32, out.base as u32], Grid::Threads((n * w.n_out) as u64));
        }
        for sg in segs {
            for (a, weight) in &sg.adapters {
                let Some(t) = a.tensors.get(&w.name) else { continue };
                let Some((_, b)) = t.b.iter().find(|(row0, _)| *row0 == w.row0) else {
                    return Err(ComputeError::Shape(format!("adapter tensor {}: no B rows for the part at row {}", w.name, w.row0)));
                };
                // tmp [rows, r] = s·x[rows]·Aᵀ;  out[rows] += tmp·Bᵀ
                let (rows, r) = (sg.rows as u32, t.rank as u32);
                g.dispatch(&self.ops.dense, &[x, &t.a, tmp], &[rows, r, w.n_in as u32, 0, r, 0, bits(weight * t.scale), (sg.row0 * w.n_in) as u32], Grid::Threads(u64::from(rows * r)));
                let base = out.base + sg.row0 * out.stride;
                g.dispatch(&self.ops.dense, &[tmp, b, out.buf], &[rows, w.n_out as u32, r, 1, out.stride as u32, base as u32, bits(1.0), 0], Grid::Threads(sg.rows as u64 * w.n_out as u64));
            }
        }
        Ok(())
    }

    /// out [rows, d] = rmsnorm(x[x_base..] rows) · w.
    fn rmsnorm<'a>(&'a self, g: &mut Graph<'a>, x: &'a wgpu::Buffer, x_base: usize, w: &'a wgpu::Buffer, out: &'a wgpu::Buffer, rows: usize) {
        self.norm_rows(g, x, x_base, w, out, self.config.n_embd, rows);
    }

    /// out [rows, width] = rmsnorm of `rows` rows of `width` values from x[x_base..], · w.
    #[allow(clippy::too_many_arguments)]
    fn norm_rows<'a>(&'a self, g: &mut Graph<'a>, x: &'a wgpu::Buffer, x_base: usize, w: &'a wgpu::Buffer, out: &'a wgpu::Buffer, width: usize, rows: usize) {
        let p = [width as u32, rows as u32, x_base as u32, bits(self.config.rms_eps)];
        g.dispatch(&self.ops.rmsnorm, &[x, w, out], &p, Grid::Groups(rows as u64));
    }

    /// The device copies of `adapters` (uploaded on first use), in their order.
    fn resident<'a>(&self, slots: &'a mut Vec<DeviceAdapter>, adapters: &[&LoraAdapter]) -> Result<Vec<&'a DeviceAdapter>, ComputeError> {
        for a in adapters {
            if let Some(i) = slots.iter().position(|d| d.id == a.id()) {
                let d = slots.remove(i);
                slots.push(d); // most recently used last
                continue;
            }
            let mut tensors = BTreeMap::new();
            for (name, t) in &a.tensors {
                if t.a.len() != t.rank * t.n_in || t.b.len() != t.n_out * t.rank {
                    return Err(ComputeError::Shape(format!("adapter tensor {name}: A {} / B {} values for rank {}, [{}, {}]", t.a.len(), t.b.len(), t.rank, t.n_out, t.n_in)));
                }
                let whole = [(0, t.n_out)];
                let parts = self.parts.get(name).map_or(&whole[..], Vec::as_slice);
                let b = parts.iter().map(|&(row0, n)| (row0, self.gpu.upload("lora_b", floats(&t.b[row0 * t.rank..(row0 + n) * t.rank])))).collect();
                tensors.insert(name.clone(), DeviceLora { a: self.gpu.upload("lora_a", floats(&t.a)), b, rank: t.rank, scale: t.scale });
            }
            if slots.len() >= ADAPTER_SLOTS.max(adapters.len()) {
                slots.remove(0);
            }
            slots.push(DeviceAdapter { id: a.id(), tensors });
        }
        let slots: &'a Vec<DeviceAdapter> = slots;
        Ok(adapters.iter().map(|a| slots.iter().find(|d| d.id == a.id()).expect("made resident above")).collect())
    }

    /// Makes `cache` hold positions up to `need` (keeping the first `keep`).
    pub fn reserve_cache(&self, cache: &mut Option<GpuCache>, keep: usize, need: usize) -> Result<(), ComputeError> {
        let c = &self.config;
        let row = (c.n_head_kv * c.head_dim * 4) as u64;
        if cache.as_ref().is_some_and(|k| k.capacity >= need) {
            return Ok(());
        }
        let max = (self.gpu.max_binding() / row) as usize;
        if need > max {
            return Err(ComputeError::Shape(format!("{need} positions exceed the device's KV cache limit of {max} ({} bytes per binding)", self.gpu.max_binding())));
        }
        let capacity = cache.as_ref().map_or(0, |k| k.capacity * 2).max(need).max(256).min(max);
        let fresh = || (0..c.n_layer).map(|_| self.gpu.buffer("kv_cache", capacity as u64 * row)).collect::<Vec<_>>();
        let grown = GpuCache { k: fresh(), v: fresh(), capacity };
        if let Some(old) = cache.as_ref().filter(|_| keep > 0) {
            for (src, dst) in old.k.iter().zip(&grown.k).chain(old.v.iter().zip(&grown.v)) {
                self.gpu.copy(src, dst, keep as u64 * row);
            }
        }
        *cache = Some(grown);
        Ok(())
    }

    fn reserve_scratch<'s>(&self, scratch: &'s mut Option<Scratch>, n: usize, lora_len: usize, scores_len: usize, logits_rows: usize) -> &'s Scratch {
        let c = &self.config;
        let fits = scratch.as_ref().is_some_and(|s| s.n >= n && s.lora_len >= lora_len && s.scores_len >= scores_len && s.logits_rows >= logits_rows);
        if !fits {
            let old = scratch.take();
            let n = n.max(old.as_ref().map_or(0, |s| s.n));
            let lora_len = lora_len.max(old.as_ref().map_or(0, |s| s.lora_len));
            let scores_len = scores_len.max(old.as_ref().map_or(0, |s| s.scores_len));
            let logits_rows = logits_rows.max(old.as_ref().map_or(0, |s| s.logits_rows));
            let f = |label: &str, len: usize| self.gpu.buffer(label, (len * 4) as u64);
            *scratch = Some(Scratch {
                n,
                ids: f("ids", n),
                cs: f("rope_cs", n * c.rope_dim),
                cs_swa: f("rope_cs_swa", if c.sliding_window.is_some() { n * c.rope_dim } else { 1 }),
                x: f("x", n * c.n_embd),
                h: f("h", n * c.n_embd),
                q: f("q", n * c.q_width()),
                att: f("att", n * c.q_width()),
                k: f("k", n * c.kv_width()),
                v: f("v", n * c.kv_width()),
                last: f("last", n * c.n_embd),
                gate: f("gate", n * c.n_ff),
                up: f("up", n * c.n_ff),
                lora: f("lora", lora_len),
                lora_len,
                scores: f("scores", scores_len),
                scores_len,
                logits: f("logits", logits_rows * c.n_vocab),
                logits_rows,
            });
        }
        scratch.as_ref().expect("allocated above")
    }
}

/// (cos, sin) [n, rope_dim/2, 2] for each row's position, computed in f64 as the CPU path
/// does.
fn rope_table(r: &crate::model::ops::rope::Rope, positions: &[usize]) -> Vec<f32> {
    let inv_freq = r.inv_freq();
    let mut t = Vec::with_capacity(positions.len() * inv_freq.len() * 2);
    for &p in positions {
        let pos = p as f64 / f64::from(r.factor);
        for f in &inv_freq {
            let theta = pos * f;
            t.push(theta.cos() as f32);
            t.push(theta.sin() as f32);
        }
    }
    t
}
