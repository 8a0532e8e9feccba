//! The model's tensors, borrowed from the memory map (norm vectors and biases, a few KB,
//! are dequantized to f32; the matrices stay in their block format).

use super::config::ModelConfig;
use crate::error::{Error, GgufError};
use crate::gguf::{GgmlType, GgufFile};
use crate::quant;

/// A weight matrix [n_out, n_in] (ggml `ne = [n_in, n_out]`) in its stored format.
#[derive(Clone, Copy)]
pub struct Weight<'a> {
    pub name: &'a str,
    pub t: GgmlType,
    pub bytes: &'a [u8],
    pub n_in: usize,
    pub n_out: usize,
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
    Ok(Weight { name: &info.name, t: info.ggml_type, bytes, n_in, n_out })
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
            layers.push(Layer {
                attn_norm: vector(f, &n("attn_norm.weight"), c.n_embd)?,
                wq: matrix(f, &n("attn_q.weight"), c.n_embd, q)?,
                wk: matrix(f, &n("attn_k.weight"), c.n_embd, kv)?,
                wv: matrix(f, &n("attn_v.weight"), c.n_embd, kv)?,
                wo: matrix(f, &n("attn_output.weight"), q, c.n_embd)?,
                bq: bias("attn_q.bias", q)?,
                bk: bias("attn_k.bias", kv)?,
                bv: bias("attn_v.bias", kv)?,
                q_norm: if c.qk_norm { Some(vector(f, &n("attn_q_norm.weight"), c.head_dim)?) } else { None },
                k_norm: if c.qk_norm { Some(vector(f, &n("attn_k_norm.weight"), c.head_dim)?) } else { None },
                ffn_norm: vector(f, &n("ffn_norm.weight"), c.n_embd)?,
                w_gate: matrix(f, &n("ffn_gate.weight"), c.n_embd, c.n_ff)?,
                w_up: matrix(f, &n("ffn_up.weight"), c.n_embd, c.n_ff)?,
                w_down: matrix(f, &n("ffn_down.weight"), c.n_ff, c.n_embd)?,
            });
        }
        let token_embd = matrix(f, "token_embd.weight", c.n_embd, c.n_vocab)?;
        let output = if c.tied_embeddings { token_embd } else { matrix(f, "output.weight", c.n_embd, c.n_vocab)? };
        Ok(Weights { token_embd, output_norm: vector(f, "output_norm.weight", c.n_embd)?, output, layers })
    }
}
