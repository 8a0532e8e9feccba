//! The model's tensors, borrowed from the memory map (norm vectors and biases, a few KB,
//! are dequantized to f32; the matrices stay in their block format).

use super::config::ModelConfig;
use crate::error::{Error, GgufError};
use crate::gguf::{GgmlType, GgufFile};
use crate::quant;

/// A weight matrix [n_out, n_in] (ggml `ne = [n_in, n_out]`) in its stored format: a
/// whole GGUF tensor, or a run of its rows where the file fuses several projections in
/// one tensor (`phi3`: `attn_qkv` holds q, k and v; `ffn_up` holds gate and up).
#[derive(Clone, Copy)]
pub struct Weight<'a> {
    /// The GGUF tensor the rows come from (adapters target it by this name).
    pub name: &'a str,
    pub t: GgmlType,
    pub bytes: &'a [u8],
    pub n_in: usize,
    pub n_out: usize,
    /// First row of this weight within the tensor `name` (0 unless fused).
    pub row0: usize,
    /// Rows of the whole tensor `name` (= n_out unless fused).
    pub tensor_rows: usize,
}

impl<'a> Weight<'a> {
    /// A whole tensor [n_out, n_in].
    pub fn whole(name: &'a str, t: GgmlType, bytes: &'a [u8], n_in: usize, n_out: usize) -> Weight<'a> {
        Weight { name, t, bytes, n_in, n_out, row0: 0, tensor_rows: n_out }
    }

    /// Rows row0..row0 + n of this (whole) weight, as a weight of its own.
    fn rows(&self, row0: usize, n: usize) -> Weight<'a> {
        let row_bytes = self.bytes.len() / self.n_out;
        Weight { bytes: &self.bytes[row0 * row_bytes..(row0 + n) * row_bytes], n_out: n, row0: self.row0 + row0, ..*self }
    }

    /// This weight's rows of a LoRA B [tensor_rows, rank] that targets the tensor `name`
    /// (the whole B unless the tensor is fused; A is shared by every part).
    pub fn b_rows<'t, T>(&self, b: &'t [T], rank: usize) -> &'t [T] {
        &b[self.row0 * rank..(self.row0 + self.n_out) * rank]
    }

    /// [`b_rows`](Self::b_rows), writable (a gradient of B).
    pub fn b_rows_mut<'t, T>(&self, b: &'t mut [T], rank: usize) -> &'t mut [T] {
        &mut b[self.row0 * rank..(self.row0 + self.n_out) * rank]
    }

    /// Part of a fused tensor (not all of its rows).
    pub fn is_part(&self) -> bool {
        self.n_out != self.tensor_rows
    }
}

pub struct Layer<'a> {
    pub attn_norm: Vec<f32>,
    pub wq: Weight<'a>,
    pub wk: Weight<'a>,
    pub wv: Weight<'a>,
    pub wo: Weight<'a>,
    pub bq: Option<Vec<f32>>,
    pub bk: Option<Vec<f32>>,
    pub bv: Option<Vec<f32>>,
    /// Per-head RMSNorm weights of q and k [head_dim] (`qwen3`), applied before RoPE.
    pub q_norm: Option<Vec<f32>>,
    pub k_norm: Option<Vec<f32>>,
    pub ffn_norm: Vec<f32>,
    /// RMSNorm weights of the attention and feed-forward outputs (`gemma3`).
    pub post_attn_norm: Option<Vec<f32>>,
    pub post_ffn_norm: Option<Vec<f32>>,
    pub w_gate: Weight<'a>,
    pub w_up: Weight<'a>,
    pub w_down: Weight<'a>,
}

pub struct Weights<'a> {
    pub token_embd: Weight<'a>,
    pub output_norm: Vec<f32>,
    pub output: Weight<'a>,
    pub layers: Vec<Layer<'a>>,
}

fn matrix<'a>(f: &'a GgufFile, name: &str, n_in: usize, n_out: usize) -> Result<Weight<'a>, Error> {
    let (info, bytes) = f.tensor_bytes(name)?;
    if info.shape != [n_in as u64, n_out as u64] {
        return Err(GgufError::BadTensor { path: f.path().to_path_buf(), name: name.into(), reason: format!("shape {:?}, expected [{n_in}, {n_out}]", info.shape) }.into());
    }
    if !quant::can_dequantize(info.ggml_type) {
        return Err(GgufError::BadTensor { path: f.path().to_path_buf(), name: name.into(), reason: format!("type {} is not supported by the native engine", info.ggml_type) }.into());
    }
    Ok(Weight::whole(&info.name, info.ggml_type, bytes, n_in, n_out))
}

fn vector(f: &GgufFile, name: &str, n: usize) -> Result<Vec<f32>, Error> {
    let (info, bytes) = f.tensor_bytes(name)?;
    let bad = |reason: String| GgufError::BadTensor { path: f.path().to_path_buf(), name: name.into(), reason };
    if info.n_elements() as usize != n {
        return Err(bad(format!("{} elements, expected {n}", info.n_elements())).into());
    }
    let mut v = vec![0f32; n];
    quant::dequantize(info.ggml_type, bytes, &mut v).map_err(|e| bad(e.to_string()))?;
    Ok(v)
}

impl<'a> Weights<'a> {
    pub fn from_gguf(f: &'a GgufFile, c: &ModelConfig) -> Result<Weights<'a>, Error> {
        let (q, kv) = (c.q_width(), c.kv_width());
        let mut layers = Vec::with_capacity(c.n_layer);
        for i in 0..c.n_layer {
            let n = |s: &str| format!("blk.{i}.{s}");
            let bias = |s: &str, len: usize| if f.tensor(&n(s)).is_some() { vector(f, &n(s), len).map(Some) } else { Ok(None) };
            // phi3 fuses q/k/v (rows in that order) and gate/up (gate first): each part
            // is a run of the fused tensor's rows.
            let (wq, wk, wv, w_gate, w_up) = if c.fused_projections {
                let qkv = matrix(f, &n("attn_qkv.weight"), c.n_embd, q + 2 * kv)?;
                let gate_up = matrix(f, &n("ffn_up.weight"), c.n_embd, 2 * c.n_ff)?;
                (qkv.rows(0, q), qkv.rows(q, kv), qkv.rows(q + kv, kv), gate_up.rows(0, c.n_ff), gate_up.rows(c.n_ff, c.n_ff))
            } else {
                (
                    matrix(f, &n("attn_q.weight"), c.n_embd, q)?,
                    matrix(f, &n("attn_k.weight"), c.n_embd, kv)?,
                    matrix(f, &n("attn_v.weight"), c.n_embd, kv)?,
                    matrix(f, &n("ffn_gate.weight"), c.n_embd, c.n_ff)?,
                    matrix(f, &n("ffn_up.weight"), c.n_embd, c.n_ff)?,
                )
            };
            layers.push(Layer {
                attn_norm: vector(f, &n("attn_norm.weight"), c.n_embd)?,
                wq,
                wk,
                wv,
                wo: matrix(f, &n("attn_output.weight"), q, c.n_embd)?,
                bq: bias("attn_q.bias", q)?,
                bk: bias("attn_k.bias", kv)?,
                bv: bias("attn_v.bias", kv)?,
                q_norm: if c.qk_norm { Some(vector(f, &n("attn_q_norm.weight"), c.head_dim)?) } else { None },
                k_norm: if c.qk_norm { Some(vector(f, &n("attn_k_norm.weight"), c.head_dim)?) } else { None },
                ffn_norm: vector(f, &n("ffn_norm.weight"), c.n_embd)?,
                post_attn_norm: if c.post_norms { Some(vector(f, &n("post_attention_norm.weight"), c.n_embd)?) } else { None },
                post_ffn_norm: if c.post_norms { Some(vector(f, &n("post_ffw_norm.weight"), c.n_embd)?) } else { None },
                w_gate,
                w_up,
                w_down: matrix(f, &n("ffn_down.weight"), c.n_ff, c.n_embd)?,
            });
        }
        let token_embd = matrix(f, "token_embd.weight", c.n_embd, c.n_vocab)?;
        let output = if c.tied_embeddings { token_embd } else { matrix(f, "output.weight", c.n_embd, c.n_vocab)? };
        Ok(Weights { token_embd, output_norm: vector(f, "output_norm.weight", c.n_embd)?, output, layers })
    }
}
