//! The transformer's hyper-parameters, read from GGUF metadata (`{arch}.*` keys).

use crate::error::{Error, GgufError};
use crate::gguf::{GgufFile, MetaValue};

/// How RoPE pairs dimensions: llama.cpp's `llama` models have q/k rows permuted by the
/// converter so that pairs are adjacent (2i, 2i+1); `qwen2` and `qwen3` keep HF's NeoX
/// layout (i, i + d/2). See src/model/README.md for each architecture's quirks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RopeStyle {
    Adjacent,
    NeoX,
}

#[derive(Debug, Clone, PartialEq)]
pub struct ModelConfig {
    pub arch: String,
    pub n_layer: usize,
    pub n_embd: usize,
    pub n_head: usize,
    pub n_head_kv: usize,
    /// Per-head width of q, k and v: `{arch}.attention.key_length` when given (`qwen3`
    /// sets it: n_head·head_dim need not be n_embd), else n_embd / n_head.
    pub head_dim: usize,
    pub n_ff: usize,
    pub n_vocab: usize,
    pub n_ctx_train: usize,
    pub rms_eps: f32,
    pub rope_base: f32,
    /// Dimensions rotated per head (≤ head_dim).
    pub rope_dim: usize,
    /// Positions are divided by this (linear RoPE scaling; 1 = none).
    pub rope_linear_factor: f32,
    pub rope_style: RopeStyle,
    /// No `output.weight`: the output projection is `token_embd`.
    pub tied_embeddings: bool,
    /// Per-head RMSNorm of q and k before RoPE (`blk.N.attn_q_norm` / `attn_k_norm`,
    /// head_dim wide, shared by every head; `qwen3`).
    pub qk_norm: bool,
    /// `rope_freqs.weight` (rope_dim/2 divisors of the RoPE angles; Llama 3.1-style
    /// long-context scaling), when the file has it.
    pub rope_freq_factors: Option<Vec<f32>>,
    /// q/k/v in one tensor (`attn_qkv`) and gate/up in one (`ffn_up`, 2·n_ff rows,
    /// gate first): `phi3`.
    pub fused_projections: bool,
    /// The token embedding is multiplied by this (`gemma3`: √n_embd).
    pub embd_scale: Option<f32>,
    /// Attention scores are q·k times this: 1/√head_dim, except Gemma 3 27B (62 blocks),
    /// whose queries llama.cpp (after gemma_pytorch) scales by 1/√(n_embd / n_head) with
    /// the integer quotient.
    pub attn_scale: f64,
    /// RMSNorm of the attention and feed-forward outputs before they join the residual
    /// stream (`blk.N.post_attention_norm`, `post_ffw_norm`: `gemma3`).
    pub post_norms: bool,
    /// Feed-forward gate: GELU (tanh approximation) instead of SiLU (`gemma3`).
    pub gelu_gate: bool,
    /// Sliding-window attention: (window, pattern) — layer l is local (window keys, RoPE
    /// base `rope_base_swa`, no RoPE scaling) unless (l + 1) is a multiple of the pattern
    /// (llama.cpp's layout for `gemma3`, pattern 6 unless the file says otherwise).
    pub sliding_window: Option<(usize, usize)>,
    pub rope_base_swa: f32,
}

impl ModelConfig {
    /// The config of a model that passed [`check_model`](super::validate::check_model)
    /// (run here first).
    pub fn from_gguf(f: &GgufFile) -> Result<ModelConfig, Error> {
        super::validate::check_model(f)?;
        let arch = f.architecture()?.to_string();
        let rope_style = match arch.as_str() {
            "llama" => RopeStyle::Adjacent,
            "qwen2" | "qwen3" | "phi3" | "gemma3" => RopeStyle::NeoX,
            other => {
                return Err(GgufError::WrongValue {
                    path: f.path().to_path_buf(),
                    key: "general.architecture".into(),
                    expected: "llama, qwen2, qwen3, phi3 or gemma3 (the native engine's architectures)".into(),
                    found: other.into(),
                }
                .into())
            }
        };
        let key = |k: &str| format!("{arch}.{k}");
        let u = |k: &str| f.require_u64(&key(k)).map(|v| v as usize);
        if let Some(n) = f.get(&key("expert_count")).and_then(MetaValue::as_u64).filter(|n| *n > 0) {
            return Err(GgufError::WrongValue {
                path: f.path().to_path_buf(),
                key: key("expert_count"),
                expected: "0: the native engine runs dense models only (use --backend llama)".into(),
                found: n.to_string(),
            }
            .into());
        }
        let n_embd = u("embedding_length")?;
        let n_head = u("attention.head_count")?;
        let n_head_kv = if f.get(&key("attention.head_count_kv")).is_some() { u("attention.head_count_kv")? } else { n_head };
        let bad = |k: &str, expected: &str, found: String| -> Error {
            GgufError::WrongValue { path: f.path().to_path_buf(), key: key(k), expected: expected.into(), found }.into()
        };
        let key_length = if f.get(&key("attention.key_length")).is_some() { Some(u("attention.key_length")?) } else { None };
        if n_head == 0 || (key_length.is_none() && n_embd % n_head != 0) || n_head_kv == 0 || n_head % n_head_kv != 0 {
            return Err(bad("attention.head_count", "heads dividing the embedding (or a key_length) and a multiple of the kv heads", format!("{n_head} heads, {n_head_kv} kv heads, {n_embd} wide")));
        }
        let head_dim = key_length.unwrap_or(n_embd / n_head);
        if head_dim == 0 {
            return Err(bad("attention.key_length", "≥ 1", "0".into()));
        }
        let rope_dim = if f.get(&key("rope.dimension_count")).is_some() { u("rope.dimension_count")? } else { head_dim };
        if rope_dim > head_dim || rope_dim % 2 != 0 {
            return Err(bad("rope.dimension_count", &format!("an even number ≤ {head_dim}"), rope_dim.to_string()));
        }
        let rope_linear_factor = match f.get(&key("rope.scaling.type")).and_then(MetaValue::as_str) {
            None | Some("none") => 1.0,
            Some("linear") => f.require_f64(&key("rope.scaling.factor"))? as f32,
            Some(other) => return Err(bad("rope.scaling.type", "none or linear (others are not implemented)", other.into())),
        };
        let gemma3 = arch == "gemma3";
        if gemma3 {
            // What the native gemma3 recipe does not cover, refused by key.
            if let Some(v) = f.get(&key("final_logit_softcapping")) {
                return Err(bad("final_logit_softcapping", "absent (Gemma 3 has none; soft-capped logits are not implemented)", format!("{v:?}")));
            }
        }
        let sliding_window = match (gemma3, f.get(&key("attention.sliding_window")).and_then(MetaValue::as_u64).filter(|w| *w > 0)) {
            (true, Some(w)) => {
                let pattern = match f.get(&key("attention.sliding_window_pattern")) {
                    None => 6,
                    Some(v) => v.as_u64().filter(|p| *p > 0).ok_or_else(|| bad("attention.sliding_window_pattern", "a positive integer (per-layer arrays are not implemented)", format!("{v:?}")))?,
                };
                Some((w as usize, pattern as usize))
            }
            _ => None,
        };
        let rope_base = if f.get(&key("rope.freq_base")).is_some() { f.require_f64(&key("rope.freq_base"))? as f32 } else { 10_000.0 };
        let n_vocab = match f.get(&key("vocab_size")) {
            Some(_) => u("vocab_size")?,
            None => f.tensor("token_embd.weight").map(|t| t.shape[1] as usize).unwrap_or(0),
        };
        Ok(ModelConfig {
            n_layer: u("block_count")?,
            n_embd,
            n_head,
            n_head_kv,
            head_dim,
            n_ff: u("feed_forward_length")?,
            n_vocab,
            n_ctx_train: u("context_length")?,
            rms_eps: f.require_f64(&key("attention.layer_norm_rms_epsilon"))? as f32,
            rope_base,
            rope_dim,
            rope_linear_factor,
            rope_style,
            tied_embeddings: f.tensor("output.weight").is_none(),
            qk_norm: f.tensor("blk.0.attn_q_norm.weight").is_some(),
            rope_freq_factors: rope_freq_factors(f, rope_dim)?,
            fused_projections: arch == "phi3",
            embd_scale: gemma3.then(|| (n_embd as f32).sqrt()),
            attn_scale: if gemma3 && u("block_count")? == 62 { 1.0 / ((n_embd / n_head) as f64).sqrt() } else { 1.0 / (head_dim as f64).sqrt() },
            post_norms: gemma3,
            gelu_gate: gemma3,
            sliding_window,
            rope_base_swa: if f.get(&key("rope.freq_base_swa")).is_some() { f.require_f64(&key("rope.freq_base_swa"))? as f32 } else { rope_base },
            arch,
        })
    }

    /// RoPE parameters for `n_heads` heads (q: n_head, k: n_head_kv).
    pub fn rope(&self, n_heads: usize) -> crate::model::ops::rope::Rope<'_> {
        crate::model::ops::rope::Rope {
            n_heads,
            head_dim: self.head_dim,
            rope_dim: self.rope_dim,
            base: self.rope_base,
            factor: self.rope_linear_factor,
            style: self.rope_style,
            freq_factors: self.rope_freq_factors.as_deref(),
        }
    }

    /// Layer l's sliding window, None for a global layer.
    pub fn window(&self, l: usize) -> Option<usize> {
        self.sliding_window.and_then(|(w, pattern)| ((l + 1) % pattern != 0).then_some(w))
    }

    /// RoPE parameters of layer `l` for `n_heads` heads: a local (sliding-window) layer
    /// takes `rope_base_swa` and no linear scaling, as llama.cpp does.
    pub fn rope_at(&self, l: usize, n_heads: usize) -> crate::model::ops::rope::Rope<'_> {
        let r = self.rope(n_heads);
        match self.window(l) {
            Some(_) => crate::model::ops::rope::Rope { base: self.rope_base_swa, factor: 1.0, ..r },
            None => r,
        }
    }

    /// Layer l's attention heads and window.
    pub fn heads_at(&self, l: usize) -> crate::model::ops::attention::Heads {
        crate::model::ops::attention::Heads { window: self.window(l), ..self.heads() }
    }

    /// Width of q (and of the attention output): n_head · head_dim.
    pub fn q_width(&self) -> usize {
        self.n_head * self.head_dim
    }

    /// Width of k and v: n_head_kv · head_dim.
    pub fn kv_width(&self) -> usize {
        self.n_head_kv * self.head_dim
    }

    pub fn heads(&self) -> crate::model::ops::attention::Heads {
        crate::model::ops::attention::Heads { n_head: self.n_head, n_head_kv: self.n_head_kv, head_dim: self.head_dim, window: None, scale: self.attn_scale }
    }
}

/// The optional `rope_freqs.weight` tensor: rope_dim/2 positive finite f32 divisors.
fn rope_freq_factors(f: &GgufFile, rope_dim: usize) -> Result<Option<Vec<f32>>, Error> {
    let Some(info) = f.tensor("rope_freqs.weight") else { return Ok(None) };
    let bad = |reason: String| -> Error { GgufError::BadTensor { path: f.path().to_path_buf(), name: "rope_freqs.weight".into(), reason }.into() };
    if info.n_elements() as usize != rope_dim / 2 {
        return Err(bad(format!("{} elements, expected rope_dim / 2 = {}", info.n_elements(), rope_dim / 2)));
    }
    let (_, bytes) = f.tensor_bytes("rope_freqs.weight")?;
    let mut v = vec![0f32; rope_dim / 2];
    crate::quant::dequantize(info.ggml_type, bytes, &mut v).map_err(|e| bad(e.to_string()))?;
    if let Some(x) = v.iter().find(|x| !(x.is_finite() && **x > 0.0)) {
        return Err(bad(format!("factor {x} is not a positive finite number")));
    }
    Ok(Some(v))
}
