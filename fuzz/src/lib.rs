//! Helpers shared by the fuzz targets and the seed writer: the default model's header,
//! a tiny in-memory `llama` model, and the ways the targets cut one input into parts.

use std::path::PathBuf;
use std::sync::OnceLock;

use edgelora::engine::ChatMessage;
use edgelora::gguf::{GgmlType, GgufFile, GgufWriter, MetaValue, TensorSpec};

/// The default model: `$EDGELORA_FUZZ_MODEL`, else the repository's
/// `models/SmolLM2-135M-Instruct.Q4_1.gguf`.
pub fn default_model_path() -> PathBuf {
    match std::env::var_os("EDGELORA_FUZZ_MODEL") {
        Some(p) => PathBuf::from(p),
        None => PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../models/SmolLM2-135M-Instruct.Q4_1.gguf")),
    }
}

/// The default model's header (memory-mapped once per process).
pub fn default_model() -> &'static GgufFile {
    static MODEL: OnceLock<GgufFile> = OnceLock::new();
    MODEL.get_or_init(|| {
        let path = default_model_path();
        GgufFile::open(&path).unwrap_or_else(|e| panic!("fuzz setup: cannot open the default model {} ({e}); set EDGELORA_FUZZ_MODEL", path.display()))
    })
}

/// Layout of the tiny model (tests/suite/common.rs `tiny_model`, `llama`).
pub const TINY: (usize, usize, usize, usize, usize, usize) = (2, 16, 4, 2, 24, 40);

/// The GGUF image of a tiny random F32 `llama` model: 2 layers, d 16, 4 heads, 2 kv heads,
/// ff 24, vocab 40 (no tokenizer), the layout of tests/suite/common.rs `tiny_model`.
pub fn tiny_model_bytes() -> Vec<u8> {
    let (n_layer, d, n_head, n_kv, ff, vocab) = TINY;
    let kv = d / n_head * n_kv;
    let arch = "llama";
    let key = |k: &str| format!("{arch}.{k}");
    let meta = vec![
        ("general.architecture".to_string(), MetaValue::String(arch.into())),
        ("general.name".to_string(), MetaValue::String(format!("tiny-{arch}"))),
        (key("block_count"), MetaValue::U32(n_layer as u32)),
        (key("embedding_length"), MetaValue::U32(d as u32)),
        (key("attention.head_count"), MetaValue::U32(n_head as u32)),
        (key("attention.head_count_kv"), MetaValue::U32(n_kv as u32)),
        (key("feed_forward_length"), MetaValue::U32(ff as u32)),
        (key("context_length"), MetaValue::U32(64)),
        (key("attention.layer_norm_rms_epsilon"), MetaValue::F32(1e-5)),
        (key("rope.freq_base"), MetaValue::F32(1000.0)),
    ];
    let mut tensors: Vec<(String, Vec<u64>)> = vec![("token_embd.weight".into(), vec![d as u64, vocab as u64]), ("output_norm.weight".into(), vec![d as u64])];
    for i in 0..n_layer {
        let m = |s: &str, a: usize, b: usize| (format!("blk.{i}.{s}"), vec![a as u64, b as u64]);
        tensors.extend([
            m("attn_q.weight", d, d),
            m("attn_k.weight", d, kv),
            m("attn_v.weight", d, kv),
            m("attn_output.weight", d, d),
            m("ffn_gate.weight", d, ff),
            m("ffn_up.weight", d, ff),
            m("ffn_down.weight", ff, d),
        ]);
        tensors.push((format!("blk.{i}.attn_norm.weight"), vec![d as u64]));
        tensors.push((format!("blk.{i}.ffn_norm.weight"), vec![d as u64]));
    }
    let specs: Vec<TensorSpec> = tensors.iter().map(|(n, s)| TensorSpec::new(n, s, GgmlType::F32)).collect();
    let mut w = GgufWriter::in_memory("tiny-llama.gguf", &meta, &specs).expect("tiny model header");
    // A fixed xorshift stream: the model only has to be valid, not good.
    let mut state = 0x9e37_79b9_7f4a_7c15u64;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        (state >> 40) as f32 / (1u64 << 24) as f32 // [0, 1)
    };
    for (name, shape) in &tensors {
        let n: u64 = shape.iter().product();
        let vals: Vec<f32> = (0..n).map(|_| if name.contains("norm") { 0.8 + 0.4 * next() } else { next() - 0.5 }).collect();
        let bytes: Vec<u8> = vals.iter().flat_map(|x| x.to_le_bytes()).collect();
        w.write_tensor(name, &bytes).expect("tiny model tensor");
    }
    w.finish_in_memory().expect("tiny model image")
}

/// The tiny model, parsed and checked once per process.
pub fn tiny_model() -> &'static GgufFile {
    static MODEL: OnceLock<GgufFile> = OnceLock::new();
    MODEL.get_or_init(|| {
        let f = GgufFile::from_bytes("tiny-llama.gguf", tiny_model_bytes()).expect("tiny model parses");
        edgelora::model::validate::check_model(&f).expect("tiny model passes check_model");
        f
    })
}

/// `peft` input layout: the first 2 bytes (little-endian) are the config's length,
/// clamped to what follows; then the config JSON, then the safetensors bytes.
pub fn split_peft(data: &[u8]) -> (&[u8], &[u8]) {
    if data.len() < 2 {
        return (&[], data);
    }
    let n = (u16::from_le_bytes([data[0], data[1]]) as usize).min(data.len() - 2);
    data[2..].split_at(n)
}

/// The inverse of [`split_peft`] (for writing seeds).
pub fn join_peft(config: &[u8], weights: &[u8]) -> Vec<u8> {
    let n = u16::try_from(config.len()).expect("config under 64 KiB");
    let mut v = n.to_le_bytes().to_vec();
    v.extend_from_slice(config);
    v.extend_from_slice(weights);
    v
}

/// Separates fields in `chat_template` inputs.
pub const CHAT_SEP: char = '\u{1}';
/// Most messages taken from one input.
pub const MAX_MESSAGES: usize = 8;

/// `chat_template` input layout: lossy UTF-8 split on [`CHAT_SEP`] into
/// role, content, role, content, … (at most [`MAX_MESSAGES`] messages). A role of at
/// most one character picks `system`/`user`/`assistant` by its code point (empty:
/// `user`); a longer one is used as it is.
pub fn chat_messages(data: &[u8]) -> Vec<ChatMessage> {
    let text = String::from_utf8_lossy(data);
    let fields: Vec<&str> = text.split(CHAT_SEP).collect();
    fields
        .chunks(2)
        .take(MAX_MESSAGES)
        .map(|pair| {
            let role = pair[0];
            let content = pair.get(1).copied().unwrap_or("");
            let mut chars = role.chars();
            let role = match (chars.next(), chars.next()) {
                (None, _) => "user".to_string(),
                (Some(c), None) => ["system", "user", "assistant"][c as usize % 3].to_string(),
                _ => role.to_string(),
            };
            ChatMessage::new(role, content)
        })
        .collect()
}

/// The inverse of [`chat_messages`] for explicit roles (for writing seeds).
pub fn join_chat(messages: &[(&str, &str)]) -> Vec<u8> {
    let mut s = String::new();
    for (i, (r, c)) in messages.iter().enumerate() {
        if i > 0 {
            s.push(CHAT_SEP);
        }
        s.push_str(r);
        s.push(CHAT_SEP);
        s.push_str(c);
    }
    s.into_bytes()
}

/// `tokenizer_vocab` input layout: byte 0 holds flags (bit 0 `add_special`, bit 1
/// `parse_special`, bit 2 `remove_special`, bit 3 `unparse_special`, bit 4
/// `add_assistant`); bytes 1–2 (little-endian) the text's length, clamped to what
/// follows; then the text (lossy UTF-8), then the GGUF image. Returns (flags, text, GGUF).
pub fn split_vocab(data: &[u8]) -> (u8, &[u8], &[u8]) {
    if data.len() < 3 {
        return (0, &[], data);
    }
    let n = (u16::from_le_bytes([data[1], data[2]]) as usize).min(data.len() - 3);
    let (text, gguf) = data[3..].split_at(n);
    (data[0], text, gguf)
}

/// The inverse of [`split_vocab`] (for writing seeds).
pub fn join_vocab(flags: u8, text: &str, gguf: &[u8]) -> Vec<u8> {
    let n = u16::try_from(text.len()).expect("text under 64 KiB");
    let mut v = vec![flags];
    v.extend_from_slice(&n.to_le_bytes());
    v.extend_from_slice(text.as_bytes());
    v.extend_from_slice(gguf);
    v
}
