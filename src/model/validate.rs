//! Model checks that run before any llama.cpp call and before the native engine reads a
//! weight: a GGUF model's hyper-parameters against each other, its tensors and its
//! vocabulary, so that nothing a file holds reaches one of llama.cpp's `GGML_ASSERT`s
//! (which abort the process), a division by zero or an allocation the file cannot back.
//!
//! Two levels:
//! - **generic**, for every architecture: `general.architecture`, `{arch}.block_count`
//!   (1..=512, llama.cpp's `LLAMA_MAX_LAYERS`) with every `blk.N.*` tensor below it, the
//!   expert counts llama.cpp asserts on, the RoPE scaling type, per-layer arrays no
//!   longer than the block count, the keys llama.cpp reads with `gguf_get_val_*` (which
//!   abort on a wrong type), and the vocabulary arrays (see [`check_vocab`]);
//! - **architecture** (`llama`, `qwen2`, `qwen3`, `phi3`, `gemma3`, the native engine's): every hyper-parameter
//!   llama.cpp and the native engine read — embedding length, head counts and head
//!   sizes, feed-forward length, context length, RoPE keys, norm epsilon — with the
//!   shape of every tensor they imply, the exact set of tensors, and their types.
//!
//! Each failure is a [`GgufError`] naming the file, the key or tensor, the expected and
//! the found value. README "Reliability" lists which llama.cpp assert each check guards.

use std::collections::BTreeSet;

use crate::error::{Error, GgufError};
use crate::gguf::{GgmlType, GgufFile, MetaValue, ValueType};

/// llama.cpp's `LLAMA_MAX_LAYERS` (`llama-hparams.h`): `block_count` above it aborts.
pub const MAX_LAYERS: u64 = 512;
/// llama.cpp's `LLAMA_MAX_EXPERTS`.
pub const MAX_EXPERTS: u64 = 1024;

/// The architectures checked key by key (the native engine's).
pub const VALIDATED_ARCHS: [&str; 5] = ["llama", "qwen2", "qwen3", "phi3", "gemma3"];

/// Checks `f` as a model (see the module docs). An architecture outside
/// [`VALIDATED_ARCHS`] gets the generic checks only.
pub fn check_model(f: &GgufFile) -> Result<(), Error> {
    let c = Checker { f };
    let arch = c.f.architecture()?.to_string();
    let n_layer = c.generic(&arch)?;
    if VALIDATED_ARCHS.contains(&arch.as_str()) {
        c.llama_family(&arch, n_layer)?;
    }
    Ok(())
}

struct Checker<'a> {
    f: &'a GgufFile,
}

/// Weight types ggml's CPU backend multiplies (and gets rows of): a weight matrix of
/// another type (integers, F64, the Q8_1/Q8_K dot-product types) aborts in the graph.
fn matmul_type(t: GgmlType) -> bool {
    use GgmlType::*;
    !matches!(t, Q8_1 | Q8_K | I8 | I16 | I32 | I64 | F64)
}

impl Checker<'_> {
    fn wrong(&self, key: &str, expected: impl Into<String>, found: impl Into<String>) -> Error {
        GgufError::WrongValue { path: self.f.path().to_path_buf(), key: key.into(), expected: expected.into(), found: found.into() }.into()
    }

    fn bad_tensor(&self, name: &str, reason: String) -> Error {
        GgufError::BadTensor { path: self.f.path().to_path_buf(), name: name.into(), reason }.into()
    }

    fn found(v: &MetaValue) -> String {
        format!("{} {}", v.value_type().name(), v.summary())
    }

    /// A u32 key (llama.cpp reads these as `uint32_t` and refuses other types).
    fn u32_opt(&self, key: &str) -> Result<Option<u64>, Error> {
        match self.f.get(key) {
            None => Ok(None),
            Some(MetaValue::U32(v)) => Ok(Some(u64::from(*v))),
            Some(v) => Err(self.wrong(key, "a u32", Self::found(v))),
        }
    }

    fn u32_req(&self, key: &str) -> Result<u64, Error> {
        self.u32_opt(key)?.ok_or_else(|| GgufError::MissingKey { path: self.f.path().to_path_buf(), key: key.into() }.into())
    }

    /// An f32 key.
    fn f32_opt(&self, key: &str) -> Result<Option<f32>, Error> {
        match self.f.get(key) {
            None => Ok(None),
            Some(MetaValue::F32(v)) => Ok(Some(*v)),
            Some(v) => Err(self.wrong(key, "an f32", Self::found(v))),
        }
    }

    /// A u32 key that may also be a per-layer array (llama.cpp's `get_key_or_arr`): an
    /// array must be u32/i32 with exactly `n_layer` entries. Returns the values (one per
    /// layer, or one).
    fn u32_or_layers(&self, key: &str, n_layer: u64) -> Result<Option<Vec<u64>>, Error> {
        match self.f.get(key) {
            None => Ok(None),
            Some(MetaValue::U32(v)) => Ok(Some(vec![u64::from(*v)])),
            Some(MetaValue::Array(t, items)) if matches!(t, ValueType::U32 | ValueType::I32) => {
                if items.len() as u64 != n_layer {
                    return Err(self.wrong(key, format!("a u32 or an array of block_count = {n_layer} of them"), format!("an array of {}", items.len())));
                }
                items.iter().map(|x| x.as_u64().ok_or_else(|| self.wrong(key, "non-negative entries", x.summary()))).collect::<Result<Vec<_>, _>>().map(Some)
            }
            Some(v) => Err(self.wrong(key, "a u32 (or a per-layer array of them)", Self::found(v))),
        }
    }

    /// The checks for every architecture; returns the block count.
    fn generic(&self, arch: &str) -> Result<u64, Error> {
        let key = |k: &str| format!("{arch}.{k}");
        // Keys llama.cpp reads with gguf_get_val_str / gguf_get_arr_* directly.
        for k in ["general.name", "general.type", "tokenizer.ggml.model", "tokenizer.ggml.pre", "tokenizer.chat_template"] {
            if let Some(v) = self.f.get(k).filter(|v| !matches!(v, MetaValue::String(_))) {
                return Err(self.wrong(k, "a string", Self::found(v)));
            }
        }
        // llama.cpp maps tensor data in place and asserts 32-byte aligned pointers.
        if self.f.alignment() % 32 != 0 || self.f.data_offset() % 32 != 0 {
            return Err(self.wrong("general.alignment", "a power of two ≥ 32 (llama.cpp maps tensors in place at 32-byte alignment)", self.f.alignment().to_string()));
        }
        match self.f.get(&key("attention.causal")) {
            None | Some(MetaValue::Bool(true)) => {}
            Some(v) => return Err(self.wrong(&key("attention.causal"), "absent or true (edgelora runs causal language models)", Self::found(v))),
        }
        match self.f.get("tokenizer.ggml.model").and_then(MetaValue::as_str) {
            Some("none" | "no_vocab") => return Err(self.wrong("tokenizer.ggml.model", "a tokenizer (edgelora needs a vocabulary)", "no vocabulary")),
            _ => {}
        }
        let bc = key("block_count");
        let n_layer = self.u32_req(&bc)?;
        if n_layer == 0 || n_layer > MAX_LAYERS {
            return Err(self.wrong(&bc, format!("1..={MAX_LAYERS} (llama.cpp's LLAMA_MAX_LAYERS)"), n_layer.to_string()));
        }
        // Every blk.N tensor below the block count, every block holding some tensor.
        let mut blocks = BTreeSet::new();
        for t in self.f.tensors() {
            if let Some(rest) = t.name.strip_prefix("blk.") {
                let n = rest.split('.').next().and_then(|s| s.parse::<u64>().ok()).ok_or_else(|| self.bad_tensor(&t.name, "blk.* name without a block number".into()))?;
                if n >= n_layer {
                    return Err(self.bad_tensor(&t.name, format!("block {n} is beyond {bc} = {n_layer}")));
                }
                blocks.insert(n);
            }
        }
        if let Some(missing) = (0..n_layer).find(|n| !blocks.contains(n)) {
            return Err(self.wrong(&bc, format!("as many blocks as the file has tensors for (no blk.{missing}.* tensor)"), n_layer.to_string()));
        }
        if let Some(n) = self.u32_opt(&key("nextn_predict_layers"))? {
            if n > n_layer {
                return Err(self.wrong(&key("nextn_predict_layers"), format!("≤ {bc} = {n_layer}"), n.to_string()));
            }
        }
        // Experts: llama.cpp asserts these relations for every architecture.
        let n_expert = self.u32_opt(&key("expert_count"))?.unwrap_or(0);
        let used = self.u32_or_layers(&key("expert_used_count"), n_layer)?.unwrap_or_default();
        let used_max = used.iter().copied().max().unwrap_or(0);
        let groups = self.u32_opt(&key("expert_group_count"))?.unwrap_or(0);
        let group_used = self.u32_opt(&key("expert_group_used_count"))?.unwrap_or(0);
        let ek = key("expert_count");
        if n_expert > MAX_EXPERTS {
            return Err(self.wrong(&ek, format!("≤ {MAX_EXPERTS} (llama.cpp's LLAMA_MAX_EXPERTS)"), n_expert.to_string()));
        }
        if used_max > n_expert || (n_expert > 0 && used_max == 0) {
            return Err(self.wrong(&key("expert_used_count"), format!("1..={n_expert} ({ek}) when there are experts, 0 otherwise"), used_max.to_string()));
        }
        if n_expert > 0 && groups >= n_expert || n_expert == 0 && groups != 0 {
            return Err(self.wrong(&key("expert_group_count"), format!("< {ek} = {n_expert} (0 without experts)"), groups.to_string()));
        }
        if groups > 1 && (n_expert % groups != 0 || group_used == 0 || group_used >= groups) {
            return Err(self.wrong(
                &key("expert_group_used_count"),
                format!("1..{groups} with {ek} = {n_expert} a multiple of expert_group_count = {groups}"),
                group_used.to_string(),
            ));
        }
        // Per-layer arrays llama.cpp reads: no longer than the block count.
        for k in ["feed_forward_length", "attention.head_count", "attention.head_count_kv"] {
            self.u32_or_layers(&key(k), n_layer)?;
        }
        if let Some(v) = self.f.get(&key("rope.scaling.type")) {
            match v.as_str() {
                Some("none" | "linear" | "yarn" | "longrope") => {}
                _ => return Err(self.wrong(&key("rope.scaling.type"), "none, linear, yarn or longrope", Self::found(v))),
            }
        }
        for t in self.f.tensors() {
            if t.shape.contains(&0) {
                return Err(self.bad_tensor(&t.name, format!("shape {:?} has an empty dimension", t.shape)));
            }
            // ggml's CPU add/mul take f32 vectors only (norms, biases, scales, RoPE factors);
            // converters always write 1-D tensors as f32.
            if t.shape.len() == 1 && t.ggml_type != GgmlType::F32 {
                return Err(self.bad_tensor(&t.name, format!("type {}, expected f32 (a vector)", t.ggml_type)));
            }
            if t.shape.len() >= 2 && t.name.ends_with(".weight") && !matmul_type(t.ggml_type) {
                return Err(self.bad_tensor(&t.name, format!("type {} cannot be a weight matrix (ggml multiplies float and block-quantized types)", t.ggml_type)));
            }
        }
        let n_vocab = self.f.tensor("token_embd.weight").filter(|t| t.shape.len() == 2).map(|t| t.shape[1]);
        check_vocab(self.f, n_vocab)?;
        Ok(n_layer)
    }

    /// `llama`, `qwen2`, `qwen3`, `phi3` and `gemma3`: hyper-parameters against each other and the tensors.
    fn llama_family(&self, arch: &str, n_layer: u64) -> Result<(), Error> {
        let key = |k: &str| format!("{arch}.{k}");
        // One value for every layer (the native engine has no per-layer sizes).
        let scalar = |k: &str| -> Result<Option<u64>, Error> {
            match self.u32_or_layers(&key(k), n_layer)? {
                Some(v) if v.iter().any(|x| *x != v[0]) => Err(self.wrong(&key(k), "the same value for every layer", format!("{v:?}"))),
                Some(v) => Ok(Some(v[0])),
                None => Ok(None),
            }
        };
        let positive = |k: &str, v: Option<u64>| -> Result<u64, Error> {
            match v {
                None => Err(GgufError::MissingKey { path: self.f.path().to_path_buf(), key: key(k) }.into()),
                Some(0) => Err(self.wrong(&key(k), "≥ 1", "0")),
                Some(x) => Ok(x),
            }
        };
        for k in ["nextn_predict_layers", "expert_count", "expert_used_count"] {
            if let Some(v) = self.f.get(&key(k)).filter(|v| v.as_u64() != Some(0)) {
                return Err(self.wrong(&key(k), format!("absent or 0 (edgelora runs dense {arch} models)"), Self::found(v)));
            }
        }
        // A file without a vocabulary serves the native engine on token ids (llama.cpp
        // refuses it with an error); one with a vocabulary names a tokenizer we know.
        match self.f.get("tokenizer.ggml.model") {
            Some(MetaValue::String(m)) if m == "gpt2" || m == "llama" => {}
            None if self.f.get("tokenizer.ggml.tokens").is_none() => {}
            None => return Err(GgufError::MissingKey { path: self.f.path().to_path_buf(), key: "tokenizer.ggml.model".into() }.into()),
            Some(v) => return Err(self.wrong("tokenizer.ggml.model", format!("gpt2 (BPE) or llama (SentencePiece), the tokenizers of {arch} models"), Self::found(v))),
        }
        let n_embd = positive("embedding_length", self.u32_opt(&key("embedding_length"))?)?;
        if let Some(out) = self.u32_opt(&key("embedding_length_out"))? {
            if out != n_embd {
                return Err(self.wrong(&key("embedding_length_out"), format!("absent or embedding_length = {n_embd}"), out.to_string()));
            }
        }
        let n_ff = positive("feed_forward_length", scalar("feed_forward_length")?)?;
        let n_head = positive("attention.head_count", scalar("attention.head_count")?)?;
        let n_head_kv = match scalar("attention.head_count_kv")? {
            None => n_head,
            Some(0) => return Err(self.wrong(&key("attention.head_count_kv"), "≥ 1", "0")),
            Some(x) => x,
        };
        if n_head % n_head_kv != 0 {
            return Err(self.wrong(&key("attention.head_count_kv"), format!("a divisor of attention.head_count = {n_head}"), n_head_kv.to_string()));
        }
        positive("context_length", self.u32_opt(&key("context_length"))?)?;
        // Head sizes: n_embd / n_head unless given (qwen3 gives key_length, and
        // n_head·key_length need not be n_embd); the native engine needs keys and values
        // of one (even) size.
        let key_length = self.u32_opt(&key("attention.key_length"))?;
        let default_head = n_embd / n_head;
        let head_k = key_length.unwrap_or(default_head);
        // llama.cpp defaults each of them to n_embd / n_head on its own.
        let head_v = self.u32_opt(&key("attention.value_length"))?.unwrap_or(default_head);
        if (key_length.is_none() && n_embd % n_head != 0) || head_k != head_v || head_k < 2 || head_k % 2 != 0 {
            return Err(self.wrong(
                &key("attention.head_count"),
                format!("heads of key_length (default embedding_length / head_count = {n_embd} / {n_head}) values, even, the same for keys and values"),
                format!("{n_head} heads, key_length {head_k}, value_length {head_v}"),
            ));
        }
        // Sizes llama.cpp multiplies in 32 bits (n_embd_k_gqa) or allocates per token.
        for (k, v, cap) in [("embedding_length", n_embd, 1u64 << 20), ("feed_forward_length", n_ff, 1 << 22), ("attention.head_count_kv", n_head_kv * head_k, 1 << 20), ("attention.head_count", n_head * head_k, 1 << 20)] {
            if v > cap {
                return Err(self.wrong(&key(k), format!("at most {cap} (as a width)"), v.to_string()));
            }
        }
        // The tensors, exactly: name → expected shape (ggml order), required or not;
        // checked before the RoPE and norm keys, whose errors would hide a shape one.
        let rope_dim = self.u32_opt(&key("rope.dimension_count"))?.unwrap_or(head_k);
        let (q, kv) = (n_head * head_k, n_head_kv * head_k);
        let n_vocab = match self.f.tensor("token_embd.weight") {
            None => return Err(GgufError::MissingTensor { path: self.f.path().to_path_buf(), name: "token_embd.weight".into() }.into()),
            Some(t) if t.shape.len() == 2 && t.shape[0] == n_embd && t.shape[1] > 0 => t.shape[1],
            Some(t) => return Err(self.bad_tensor("token_embd.weight", format!("shape {:?}, expected [embedding_length = {n_embd}, n_vocab]", t.shape))),
        };
        if let Some(v) = self.u32_opt(&key("vocab_size"))? {
            if v != n_vocab {
                return Err(self.wrong(&key("vocab_size"), format!("token_embd.weight's {n_vocab} rows"), v.to_string()));
            }
        }
        let mut expected: Vec<(String, Vec<u64>, bool)> = vec![
            ("token_embd.weight".into(), vec![n_embd, n_vocab], true),
            ("output_norm.weight".into(), vec![n_embd], true),
            ("output.weight".into(), vec![n_embd, n_vocab], false),
            ("rope_freqs.weight".into(), vec![rope_dim / 2], false),
        ];
        for i in 0..n_layer {
            let b = |s: &str| format!("blk.{i}.{s}");
            // qwen2: q/k/v biases required (optional elsewhere, as llama.cpp loads them);
            // qwen3: per-head q/k norms required.
            let biases = arch == "qwen2";
            if arch == "qwen3" || arch == "gemma3" {
                expected.extend([(b("attn_q_norm.weight"), vec![head_k], true), (b("attn_k_norm.weight"), vec![head_k], true)]);
            }
            if arch == "gemma3" {
                expected.extend([(b("post_attention_norm.weight"), vec![n_embd], true), (b("post_ffw_norm.weight"), vec![n_embd], true)]);
            }
            if arch == "phi3" {
                // q/k/v fused in attn_qkv, gate/up in ffn_up (as llama.cpp's converter
                // writes Phi-3; no biases).
                expected.extend([(b("attn_qkv.weight"), vec![n_embd, q + 2 * kv], true), (b("ffn_up.weight"), vec![n_embd, 2 * n_ff], true)]);
            } else {
                expected.extend([
                    (b("attn_q.weight"), vec![n_embd, q], true),
                    (b("attn_k.weight"), vec![n_embd, kv], true),
                    (b("attn_v.weight"), vec![n_embd, kv], true),
                    (b("attn_q.bias"), vec![q], biases),
                    (b("attn_k.bias"), vec![kv], biases),
                    (b("attn_v.bias"), vec![kv], biases),
                    (b("ffn_gate.weight"), vec![n_embd, n_ff], true),
                    (b("ffn_up.weight"), vec![n_embd, n_ff], true),
                ]);
            }
            expected.extend([
                (b("attn_norm.weight"), vec![n_embd], true),
                (b("attn_output.weight"), vec![q, n_embd], true),
                (b("ffn_norm.weight"), vec![n_embd], true),
                (b("ffn_down.weight"), vec![n_ff, n_embd], true),
            ]);
        }
        let names: BTreeSet<&str> = expected.iter().map(|(n, _, _)| n.as_str()).collect();
        for t in self.f.tensors() {
            if !names.contains(t.name.as_str()) {
                return Err(self.bad_tensor(&t.name, format!("is not a tensor of a {arch} model (wrong architecture, or a {arch} variant edgelora does not know)")));
            }
        }
        for (name, shape, required) in &expected {
            let Some(t) = self.f.tensor(name) else {
                if *required {
                    return Err(GgufError::MissingTensor { path: self.f.path().to_path_buf(), name: name.clone() }.into());
                }
                continue;
            };
            if &t.shape != shape {
                return Err(self.bad_tensor(name, format!("shape {:?}, expected {shape:?} from the model's hyper-parameters", t.shape)));
            }
            // Norms, biases and RoPE factors are added/multiplied as f32 vectors.
            if shape.len() == 1 && t.ggml_type != GgmlType::F32 {
                return Err(self.bad_tensor(name, format!("type {}, expected f32 (a vector)", t.ggml_type)));
            }
        }
        // llama.cpp: llama throws on another value, qwen2's graph asserts; phi3 rotates
        // part of each head (Phi-4-mini: partial_rotary_factor 0.75).
        if arch == "phi3" {
            if rope_dim == 0 || rope_dim > head_k || rope_dim % 2 != 0 {
                return Err(self.wrong(&key("rope.dimension_count"), format!("an even number in 2..={head_k} (the head size)"), rope_dim.to_string()));
            }
        } else if rope_dim != head_k {
            return Err(self.wrong(&key("rope.dimension_count"), format!("the head size {head_k}"), rope_dim.to_string()));
        }
        let eps_key = key("attention.layer_norm_rms_epsilon");
        match self.f32_opt(&eps_key)? {
            Some(e) if e.is_finite() && e > 0.0 && e < 1.0 => {}
            Some(e) => return Err(self.wrong(&eps_key, "a finite f32 in (0, 1)", e.to_string())),
            None => return Err(GgufError::MissingKey { path: self.f.path().to_path_buf(), key: eps_key }.into()),
        }
        if let Some(b) = self.f32_opt(&key("rope.freq_base"))? {
            if !(b.is_finite() && b > 0.0) {
                return Err(self.wrong(&key("rope.freq_base"), "a finite f32 > 0", b.to_string()));
            }
        }
        for k in ["rope.scaling.factor", "rope.scale_linear"] {
            if let Some(s) = self.f32_opt(&key(k))? {
                // llama.cpp: 0 means "no scaling"; the native engine divides positions by it.
                if !(s.is_finite() && s >= 0.0) || (s == 0.0 && self.f.get(&key("rope.scaling.type")).and_then(MetaValue::as_str) == Some("linear")) {
                    return Err(self.wrong(&key(k), "a finite f32 > 0", s.to_string()));
                }
            }
        }

        check_vocab(self.f, Some(n_vocab))
    }
}

/// The vocabulary arrays llama.cpp's `llama_vocab::load` reads, when the file has them:
/// `tokenizer.ggml.tokens` strings (as many as `n_vocab` — token_embd's rows — when
/// given), `scores` f32 and `token_type` i32 of the same length, `merges` strings of two
/// space-separated parts, and every special token id (`bos`, `eos`, …) inside the
/// vocabulary. A model without `tokens` has no vocabulary for llama.cpp (and edgelora
/// refuses it when it needs one).
pub fn check_vocab(f: &GgufFile, n_vocab: Option<u64>) -> Result<(), Error> {
    let path = f.path().to_path_buf();
    let wrong = |key: &str, expected: String, found: String| -> Error { GgufError::WrongValue { path: path.clone(), key: key.into(), expected, found }.into() };
    let array = |key: &str, want: ValueType| -> Result<Option<&Vec<MetaValue>>, Error> {
        match f.get(key) {
            None => Ok(None),
            Some(MetaValue::Array(t, items)) if *t == want => Ok(Some(items)),
            Some(v) => Err(wrong(key, format!("an array of {}", want.name()), format!("{} {}", v.value_type().name(), v.summary()))),
        }
    };
    let Some(tokens) = array("tokenizer.ggml.tokens", ValueType::String)? else {
        return Ok(());
    };
    let n = tokens.len() as u64;
    if n == 0 {
        return Err(wrong("tokenizer.ggml.tokens", "at least one token".into(), "an empty array".into()));
    }
    if n > i32::MAX as u64 {
        return Err(wrong("tokenizer.ggml.tokens", "fewer than 2³¹ tokens".into(), n.to_string()));
    }
    if let Some(nv) = n_vocab {
        if n != nv {
            return Err(wrong("tokenizer.ggml.tokens", format!("{nv} tokens (token_embd.weight's rows)"), format!("{n} tokens")));
        }
    }
    // llama.cpp asserts its token → id map is as large as the list (names unique, an
    // empty one counted as "[EMPTY_<i>]") and aborts on a token of 2 GiB or more.
    let mut seen = std::collections::HashSet::with_capacity(tokens.len());
    for (i, t) in tokens.iter().enumerate() {
        let s = t.as_str().unwrap_or_default();
        if s.len() >= 1 << 16 {
            return Err(wrong("tokenizer.ggml.tokens", "tokens shorter than 64 KiB".into(), format!("token {i}: {} bytes", s.len())));
        }
        let name = if s.is_empty() { std::borrow::Cow::Owned(format!("[EMPTY_{i}]")) } else { std::borrow::Cow::Borrowed(s) };
        if !seen.insert(name) {
            return Err(wrong("tokenizer.ggml.tokens", "distinct tokens".into(), format!("token {i} {s:?} repeats an earlier one")));
        }
    }
    // SentencePiece falls back to <0xXX> byte tokens for any character without its own
    // token; llama.cpp's tokenizer throws (and aborts across the C boundary) without them.
    if f.get("tokenizer.ggml.model").and_then(MetaValue::as_str) == Some("llama") {
        if let Some(b) = (0..=255u32).find(|b| !seen.contains(format!("<0x{b:02X}>").as_str())) {
            return Err(wrong("tokenizer.ggml.tokens", "the 256 byte tokens <0x00>…<0xFF> of a SentencePiece vocabulary".into(), format!("no <0x{b:02X}>")));
        }
    }
    for (key, t) in [("tokenizer.ggml.scores", ValueType::F32), ("tokenizer.ggml.token_type", ValueType::I32)] {
        if let Some(a) = array(key, t)? {
            if a.len() as u64 != n {
                return Err(wrong(key, format!("{n} entries (one per token)"), format!("{}", a.len())));
            }
        }
    }
    if let Some(merges) = array("tokenizer.ggml.merges", ValueType::String)? {
        for (i, m) in merges.iter().enumerate() {
            let s = m.as_str().unwrap_or_default();
            // llama.cpp splits at the first space after position 1 and needs both parts.
            let split = s.char_indices().skip(1).find(|(_, c)| *c == ' ').map(|(p, _)| p);
            if !split.is_some_and(|p| p + 1 < s.len()) {
                return Err(wrong("tokenizer.ggml.merges", "merges of two space-separated tokens".into(), format!("entry {i}: {s:?}")));
            }
        }
    }
    for (key, v) in f.metadata() {
        let Some(rest) = key.strip_prefix("tokenizer.ggml.") else { continue };
        if !rest.ends_with("_token_id") {
            continue;
        }
        match v {
            MetaValue::U32(id) if u64::from(*id) < n => {}
            other => return Err(wrong(key, format!("a u32 token id below {n}"), format!("{} {}", other.value_type().name(), other.summary()))),
        }
    }
    // A tokenizer that adds BOS (or EOS) asserts it has one: SentencePiece adds BOS unless
    // told not to; BPE when its pre-tokenizer or the flag says so.
    let flag = |k: &str| f.get(k).and_then(|v| if let MetaValue::Bool(b) = v { Some(*b) } else { None });
    for (add, id, default_on) in [
        ("tokenizer.ggml.add_bos_token", "tokenizer.ggml.bos_token_id", true),
        ("tokenizer.ggml.add_eos_token", "tokenizer.ggml.eos_token_id", false),
    ] {
        if let Some(v) = f.get(add).filter(|v| !matches!(v, MetaValue::Bool(_))) {
            return Err(wrong(add, "a bool".into(), format!("{} {}", v.value_type().name(), v.summary())));
        }
        if flag(add).unwrap_or(default_on) && f.get(id).is_none() {
            return Err(GgufError::MissingKey { path: path.clone(), key: format!("{id} ({add} is not false)") }.into());
        }
    }
    Ok(())
}
