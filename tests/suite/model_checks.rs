//! Models whose metadata llama.cpp would abort on (or the native engine would misread):
//! each is refused with an error naming the key or tensor, at every entry point —
//! `check_model`, `Runtime::load`, `NativeRuntime::load`, and (through `bad_model_cases`)
//! the C ABI's `edgelora_runtime_open` and the JVM's `Model.open`.

use std::path::{Path, PathBuf};

use edgelora::compute::Device;
use edgelora::engine::NativeRuntime;
#[cfg(feature = "llama")]
use edgelora::engine::{Runtime, RuntimeOptions};
use edgelora::gguf::{GgmlType, GgufFile, GgufWriter, MetaValue, TensorSpec, ValueType};
use edgelora::model::validate::check_model;

use crate::common::model_gguf;

type Edit = Box<dyn Fn(&mut Vec<(String, MetaValue)>, &mut Vec<TensorSpec>)>;

fn set(meta: &mut Vec<(String, MetaValue)>, key: &str, v: MetaValue) {
    match meta.iter_mut().find(|(k, _)| k == key) {
        Some(kv) => kv.1 = v,
        None => meta.push((key.into(), v)),
    }
}

fn remove(meta: &mut Vec<(String, MetaValue)>, key: &str) {
    meta.retain(|(k, _)| k != key);
}

/// (file stem, what the error must contain, the edit of the default model's header).
fn cases() -> Vec<(&'static str, &'static str, Edit)> {
    let u = |v: u32| MetaValue::U32(v);
    let f = |v: f32| MetaValue::F32(v);
    fn key(k: &'static str, v: MetaValue) -> Edit {
        Box::new(move |m, _| set(m, k, v.clone()))
    }
    vec![
        ("block_count_absurd", "llama.block_count", key("llama.block_count", u(100_000))),
        ("block_count_above_tensors", "no blk.30.", key("llama.block_count", u(40))),
        ("block_count_below_tensors", "blk.29.", key("llama.block_count", u(29))),
        ("block_count_zero", "llama.block_count", key("llama.block_count", u(0))),
        ("block_count_string", "llama.block_count", key("llama.block_count", MetaValue::String("30".into()))),
        ("block_count_missing", "llama.block_count", Box::new(|m, _| remove(m, "llama.block_count"))),
        ("embedding_length_zero", "llama.embedding_length", key("llama.embedding_length", u(0))),
        ("embedding_length_wrong", "token_embd.weight", key("llama.embedding_length", u(576 + 9 * 2))),
        ("head_count_zero", "llama.attention.head_count", key("llama.attention.head_count", u(0))),
        ("head_count_kv_zero", "llama.attention.head_count_kv", key("llama.attention.head_count_kv", u(0))),
        ("head_count_kv_not_divisor", "llama.attention.head_count_kv", key("llama.attention.head_count_kv", u(4))),
        ("head_count_vs_shapes", "blk.0.attn_k.weight", key("llama.attention.head_count", u(3))),
        ("head_count_per_layer_short", "llama.attention.head_count", key("llama.attention.head_count", MetaValue::Array(ValueType::U32, vec![u(9); 3]))),
        ("key_length_mismatch", "llama.attention.head_count", key("llama.attention.key_length", u(32))),
        ("feed_forward_length_zero", "llama.feed_forward_length", key("llama.feed_forward_length", u(0))),
        ("feed_forward_length_wrong", "blk.0.ffn_gate.weight", key("llama.feed_forward_length", u(1000))),
        ("context_length_zero", "llama.context_length", key("llama.context_length", u(0))),
        ("context_length_missing", "llama.context_length", Box::new(|m, _| remove(m, "llama.context_length"))),
        ("rope_dimension_count", "llama.rope.dimension_count", key("llama.rope.dimension_count", u(32))),
        ("rope_freq_base_nan", "llama.rope.freq_base", key("llama.rope.freq_base", f(f32::NAN))),
        ("rope_freq_base_negative", "llama.rope.freq_base", key("llama.rope.freq_base", f(-1.0))),
        ("rope_scaling_type_unknown", "llama.rope.scaling.type", key("llama.rope.scaling.type", MetaValue::String("magic".into()))),
        ("rms_eps_zero", "llama.attention.layer_norm_rms_epsilon", key("llama.attention.layer_norm_rms_epsilon", f(0.0))),
        ("rms_eps_nan", "llama.attention.layer_norm_rms_epsilon", key("llama.attention.layer_norm_rms_epsilon", f(f32::NAN))),
        ("rms_eps_missing", "llama.attention.layer_norm_rms_epsilon", Box::new(|m, _| remove(m, "llama.attention.layer_norm_rms_epsilon"))),
        ("expert_count_absurd", "llama.expert_count", key("llama.expert_count", u(5000))),
        ("expert_used_without_experts", "llama.expert_used_count", key("llama.expert_used_count", u(2))),
        ("vocab_size_wrong", "llama.vocab_size", key("llama.vocab_size", u(1000))),
        (
            "tokens_short",
            "tokenizer.ggml.tokens",
            Box::new(|m, _| {
                if let Some((_, MetaValue::Array(_, t))) = m.iter_mut().find(|(k, _)| k == "tokenizer.ggml.tokens") {
                    t.pop();
                }
            }),
        ),
        (
            "token_type_short",
            "tokenizer.ggml.token_type",
            Box::new(|m, _| {
                if let Some((_, MetaValue::Array(_, t))) = m.iter_mut().find(|(k, _)| k == "tokenizer.ggml.token_type") {
                    t.truncate(10);
                }
            }),
        ),
        ("tokens_not_strings", "tokenizer.ggml.tokens", key("tokenizer.ggml.tokens", MetaValue::Array(ValueType::U32, vec![u(1); 49152]))),
        ("bos_out_of_range", "tokenizer.ggml.bos_token_id", key("tokenizer.ggml.bos_token_id", u(1_000_000))),
        ("merge_without_space", "tokenizer.ggml.merges", key("tokenizer.ggml.merges", MetaValue::Array(ValueType::String, vec![MetaValue::String("ab".into())]))),
        ("tokenizer_model_not_string", "tokenizer.ggml.model", key("tokenizer.ggml.model", u(2))),
        ("alignment_16", "general.alignment", key("general.alignment", u(16))),
        ("causal_false", "llama.attention.causal", key("llama.attention.causal", MetaValue::Bool(false))),
        ("nextn_layers", "llama.nextn_predict_layers", key("llama.nextn_predict_layers", u(2))),
        ("rms_eps_one", "llama.attention.layer_norm_rms_epsilon", key("llama.attention.layer_norm_rms_epsilon", f(1.0))),
        ("embedding_length_out", "llama.embedding_length_out", key("llama.embedding_length_out", u(100))),
        ("tokenizer_none", "tokenizer.ggml.model", key("tokenizer.ggml.model", MetaValue::String("none".into()))),
        ("tokenizer_unknown", "tokenizer.ggml.model", key("tokenizer.ggml.model", MetaValue::String("bert".into()))),
        ("spm_without_byte_tokens", "<0x00>", key("tokenizer.ggml.model", MetaValue::String("llama".into()))),
        ("add_bos_without_bos", "tokenizer.ggml.bos_token_id", Box::new(|m, _| {
            set(m, "tokenizer.ggml.add_bos_token", MetaValue::Bool(true));
            remove(m, "tokenizer.ggml.bos_token_id");
        })),
        (
            "tokens_repeated",
            "repeats an earlier one",
            Box::new(|m, _| {
                if let Some((_, MetaValue::Array(_, t))) = m.iter_mut().find(|(k, _)| k == "tokenizer.ggml.tokens") {
                    t[7] = t[6].clone();
                }
            }),
        ),
        ("tensor_missing", "blk.5.ffn_up.weight", Box::new(|_, t| t.retain(|s| s.name != "blk.5.ffn_up.weight"))),
        ("tensor_extra", "blk.0.attn_gate.weight", Box::new(|_, t| t.push(TensorSpec::new("blk.0.attn_gate.weight", &[576, 576], GgmlType::F32)))),
        (
            "norm_quantized",
            "blk.2.attn_norm.weight",
            Box::new(|_, t| t.iter_mut().filter(|s| s.name == "blk.2.attn_norm.weight").for_each(|s| s.ggml_type = GgmlType::Q8_0)),
        ),
        (
            "weight_integer_type",
            "blk.1.attn_q.weight",
            Box::new(|_, t| t.iter_mut().filter(|s| s.name == "blk.1.attn_q.weight").for_each(|s| s.ggml_type = GgmlType::I32)),
        ),
        (
            "tensor_empty_dimension",
            "output_norm.weight",
            Box::new(|_, t| t.iter_mut().filter(|s| s.name == "output_norm.weight").for_each(|s| s.shape = vec![0])),
        ),
        // An architecture edgelora does not validate key by key still gets the generic checks.
        (
            "other_arch_block_count",
            "gpt2.block_count",
            Box::new(|m, _| {
                for (k, v) in m.iter_mut() {
                    if let Some(rest) = k.strip_prefix("llama.") {
                        *k = format!("gpt2.{rest}");
                    }
                    if k == "general.architecture" {
                        *v = MetaValue::String("gpt2".into());
                    }
                }
                set(m, "gpt2.block_count", MetaValue::U32(1000));
            }),
        ),
    ]
}

/// The default model's header with `edit` applied, as a file whose tensor data is a hole
/// (zeros; nothing reads it before the checks refuse the file).
fn write_edited(path: &Path, edit: &Edit) {
    let base = model_gguf();
    let mut meta: Vec<(String, MetaValue)> = base.metadata().to_vec();
    let mut specs: Vec<TensorSpec> = base.tensors().iter().map(|t| TensorSpec::new(t.name.clone(), &t.shape, t.ggml_type)).collect();
    edit(&mut meta, &mut specs);
    let mut w = GgufWriter::in_memory("edited", &meta, &specs).unwrap();
    for s in &specs {
        let n: u64 = s.shape.iter().product();
        w.write_tensor(&s.name, &vec![0u8; s.ggml_type.bytes_for(n).unwrap() as usize]).unwrap();
    }
    let image = w.finish_in_memory().unwrap();
    let header = GgufFile::from_bytes("edited", image.clone()).unwrap().data_offset() as usize;
    std::fs::write(path, &image[..header]).unwrap();
    std::fs::OpenOptions::new().write(true).open(path).unwrap().set_len(image.len() as u64).unwrap();
}

/// Writes every bad model into `dir` and a `cases.tsv` of `file<TAB>expected text` for
/// the C and JVM programs; returns (path, expected text) pairs.
pub fn bad_model_cases(dir: &Path) -> Vec<(PathBuf, &'static str)> {
    let mut out = Vec::new();
    let mut tsv = String::new();
    for (stem, want, edit) in cases() {
        let p = dir.join(format!("{stem}.gguf"));
        write_edited(&p, &edit);
        tsv.push_str(&format!("{}\t{want}\n", p.display()));
        out.push((p, want));
    }
    std::fs::write(dir.join("cases.tsv"), tsv).unwrap();
    out
}

#[test]
fn the_harness_writes_a_model_that_passes() {
    let dir = crate::common::tmpdir();
    let p = dir.path().join("same.gguf");
    let keep: Edit = Box::new(|_: &mut Vec<(String, MetaValue)>, _: &mut Vec<TensorSpec>| {});
    write_edited(&p, &keep);
    check_model(&GgufFile::open(&p).unwrap()).unwrap();
    check_model(model_gguf()).unwrap();
}

#[test]
fn each_bad_hyper_parameter_is_refused_at_every_rust_entry_point() {
    let dir = crate::common::tmpdir();
    for (path, want) in bad_model_cases(dir.path()) {
        let stem = path.file_stem().unwrap().to_string_lossy().into_owned();
        let f = GgufFile::open(&path).unwrap();
        let e = check_model(&f).expect_err(&stem).to_string();
        assert!(e.contains(want) && e.contains(&stem), "{stem}: {e}");
        #[cfg(feature = "llama")]
        {
            let opts = RuntimeOptions { threads: 1, n_ctx: 64, n_batch: 64, ..RuntimeOptions::default() };
            let e = Runtime::load(&path, opts).err().unwrap_or_else(|| panic!("{stem}: Runtime::load accepted it")).to_string();
            assert!(e.contains(want), "{stem}: Runtime::load: {e}");
        }
        let e = NativeRuntime::load(&path, Device::Cpu, 1).err().unwrap_or_else(|| panic!("{stem}: NativeRuntime::load accepted it")).to_string();
        assert!(e.contains(want), "{stem}: NativeRuntime::load: {e}");
        let e = edgelora::engine::Vocabulary::open(&path).err().unwrap_or_else(|| panic!("{stem}: Vocabulary::open accepted it")).to_string();
        assert!(e.contains(want), "{stem}: Vocabulary::open: {e}");
    }
}

#[test]
fn an_adapter_needs_a_model_that_passes_the_checks_to_merge_into() {
    let dir = crate::common::tmpdir();
    let p = dir.path().join("bad.gguf");
    write_edited(&p, &cases().into_iter().find(|c| c.0 == "head_count_zero").unwrap().2);
    let out = dir.path().join("out.gguf");
    let e = edgelora::merge::merge_files(&p, &[], &out, &edgelora::merge::MergeOptions { out_type: Some(GgmlType::F32), ..Default::default() }, &mut |_, _, _| {})
        .unwrap_err()
        .to_string();
    assert!(e.contains("llama.attention.head_count"), "{e}");
    assert!(!out.exists());
}
