//! Writes the synthetic seed files under `fuzz/seeds/<target>/` (or `$EDGELORA_FUZZ_SEEDS`).
//! Not a fuzz target: it is built as a libFuzzer binary only so that `cargo fuzz build`
//! compiles it with the same flags as the targets (one build of llama.cpp); it writes the
//! seeds in its init and exits before fuzzing starts.
//!
//!     cargo +nightly fuzz build --fuzz-dir fuzz make_seeds
//!     fuzz/target/x86_64-unknown-linux-gnu/release/make_seeds
//!
//! The hand-written seeds (train_jsonl, chat_template, adapter_arg) are written too, so
//! that one run recreates every seed directory.
#![no_main]

use std::path::{Path, PathBuf};

use edgelora::adapter::{gguf_lora_bytes, random_lora, write_peft, FactorDtype, GgufLoraDtype, LoraAdapter, ALL_LINEAR};
use edgelora::gguf::{GgmlType, GgufFile, GgufWriter, MetaValue, TensorSpec, ValueType};
use edgelora_fuzz::{default_model, default_model_path, join_chat, join_peft, join_vocab, tiny_model, tiny_model_bytes};
use libfuzzer_sys::fuzz_target;

fn write(dir: &Path, name: &str, bytes: &[u8]) {
    std::fs::create_dir_all(dir).expect("seed directory");
    std::fs::write(dir.join(name), bytes).expect("seed file");
}

/// Keeps only block 0's tensors (small seeds for the 30-layer default model).
fn block0(mut a: LoraAdapter) -> LoraAdapter {
    a.tensors.retain(|k, _| k.starts_with("blk.0."));
    a
}

/// A GGUF with one metadata value of every type (nested arrays too) and one small
/// tensor of several ggml types: the value and tensor-info parsers' seed.
fn all_types_gguf() -> Vec<u8> {
    let s = |x: &str| MetaValue::String(x.into());
    let meta = vec![
        ("general.architecture".to_string(), s("llama")),
        ("general.alignment".to_string(), MetaValue::U32(64)),
        ("t.u8".to_string(), MetaValue::U8(7)),
        ("t.i8".to_string(), MetaValue::I8(-7)),
        ("t.u16".to_string(), MetaValue::U16(700)),
        ("t.i16".to_string(), MetaValue::I16(-700)),
        ("t.u32".to_string(), MetaValue::U32(70_000)),
        ("t.i32".to_string(), MetaValue::I32(-70_000)),
        ("t.f32".to_string(), MetaValue::F32(0.5)),
        ("t.bool".to_string(), MetaValue::Bool(true)),
        ("t.string".to_string(), s("héllo")),
        ("t.u64".to_string(), MetaValue::U64(1 << 40)),
        ("t.i64".to_string(), MetaValue::I64(-(1 << 40))),
        ("t.f64".to_string(), MetaValue::F64(-0.25)),
        ("t.arr_str".to_string(), MetaValue::Array(ValueType::String, vec![s("a"), s("b c")])),
        ("t.arr_empty".to_string(), MetaValue::Array(ValueType::F32, vec![])),
        (
            "t.arr_arr".to_string(),
            MetaValue::Array(ValueType::Array, vec![MetaValue::Array(ValueType::I32, vec![MetaValue::I32(1), MetaValue::I32(-1)])]),
        ),
    ];
    let types = [GgmlType::F32, GgmlType::F16, GgmlType::BF16, GgmlType::Q4_0, GgmlType::Q4_1, GgmlType::Q8_0, GgmlType::Q4_K, GgmlType::Q6_K];
    let specs: Vec<TensorSpec> = types.iter().map(|t| TensorSpec::new(format!("t.{}", t.name()), &[256, 1], *t)).collect();
    let mut w = GgufWriter::in_memory("all-types.gguf", &meta, &specs).expect("header");
    for (i, (spec, t)) in specs.iter().zip(types).enumerate() {
        let n = t.bytes_for(256).expect("size") as usize;
        // Small bytes: finite f16/bf16 scales.
        let bytes: Vec<u8> = (0..n).map(|j| ((i * 31 + j * 7) % 60) as u8).collect();
        w.write_tensor(&spec.name, &bytes).expect("tensor");
    }
    w.finish_in_memory().expect("image")
}

/// The files `write_peft` writes for `a` (config, weights).
fn peft_files(a: &LoraAdapter, base: &GgufFile, dtype: Option<FactorDtype>, scratch: &Path) -> (Vec<u8>, Vec<u8>) {
    let _ = std::fs::remove_dir_all(scratch);
    write_peft(a, scratch, base, dtype).expect("write_peft");
    let cfg = std::fs::read(scratch.join("adapter_config.json")).expect("config");
    let w = std::fs::read(scratch.join("adapter_model.safetensors")).expect("weights");
    let _ = std::fs::remove_dir_all(scratch);
    (cfg, w)
}

fn make_seeds(root: &Path) {
    let tiny = tiny_model();
    let big = default_model();
    let fixtures = PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../tests/fixtures"));

    // GGUF-LoRA adapters for the tiny model.
    let t_qv_r2 = random_lora(tiny, &["attn_q", "attn_v"], 2, 4.0, 0.1, 1);
    let t_all_r1 = random_lora(tiny, &ALL_LINEAR, 1, 1.0, 0.1, 2);
    // Per-tensor scales that differ (one negative): the fold metadata.
    let mut t_fold = random_lora(tiny, &["attn_k", "ffn_down"], 3, 6.0, 0.1, 3);
    for (i, t) in t_fold.tensors.values_mut().enumerate() {
        t.scale *= [1.0, 0.5, -2.0, 3.0][i % 4];
    }
    let t_one = {
        let mut a = random_lora(tiny, &["attn_output"], 1, 1.0, 0.1, 4);
        a.tensors.retain(|k, _| k.starts_with("blk.1."));
        a
    };
    let tiny_loras = [
        ("tiny-qv-r2-f32.gguf", gguf_lora_bytes(&t_qv_r2, GgufLoraDtype::F32).expect("lora")),
        ("tiny-qv-r2-f16.gguf", gguf_lora_bytes(&t_qv_r2, GgufLoraDtype::F16).expect("lora")),
        ("tiny-all-r1-f16.gguf", gguf_lora_bytes(&t_all_r1, GgufLoraDtype::F16).expect("lora")),
        ("tiny-fold-r3-f32.gguf", gguf_lora_bytes(&t_fold, GgufLoraDtype::F32).expect("lora")),
        ("tiny-one-r1-f32.gguf", gguf_lora_bytes(&t_one, GgufLoraDtype::F32).expect("lora")),
    ];
    // For the default model: block 0 only, rank 1 (the q/k permutation's heads too).
    let b_qkv = block0(random_lora(big, &["attn_q", "attn_k", "attn_v"], 1, 2.0, 0.05, 5));
    let b_mlp = block0(random_lora(big, &["ffn_down"], 1, 1.0, 0.05, 6));
    let big_loras = [
        ("smollm2-blk0-qkv-r1-f16.gguf", gguf_lora_bytes(&b_qkv, GgufLoraDtype::F16).expect("lora")),
        ("smollm2-blk0-down-r1-f16.gguf", gguf_lora_bytes(&b_mlp, GgufLoraDtype::F16).expect("lora")),
    ];
    // The default model's first 64 KiB: its real header, truncated inside the vocabulary.
    let model_head = {
        let bytes = std::fs::read(default_model_path()).expect("default model");
        bytes[..bytes.len().min(64 << 10)].to_vec()
    };

    for (target, with_big) in [("gguf_reader", true), ("gguf_lora", true), ("merge", false)] {
        let dir = root.join(target);
        for (name, bytes) in &tiny_loras {
            write(&dir, name, bytes);
        }
        if with_big {
            for (name, bytes) in &big_loras {
                write(&dir, name, bytes);
            }
        }
    }
    write(&root.join("gguf_reader"), "tiny-llama-f32.gguf", &tiny_model_bytes());
    write(&root.join("gguf_reader"), "all-types.gguf", &all_types_gguf());
    write(&root.join("gguf_reader"), "smollm2-head-64k.gguf", &model_head);
    write(&root.join("gguf_lora"), "smollm2-head-64k.gguf", &model_head);

    // PEFT: what write_peft writes, for both bases; the fixtures' real configs with
    // synthesized (or truncated real) weights.
    let scratch = std::env::temp_dir().join(format!("edgelora-fuzz-seeds-{}", std::process::id()));
    let peft = root.join("peft");
    let (c, w) = peft_files(&t_qv_r2, tiny, None, &scratch);
    write(&peft, "tiny-qv-r2-f32.bin", &join_peft(&c, &w));
    let (c, w) = peft_files(&t_fold, tiny, Some(FactorDtype::BF16), &scratch);
    write(&peft, "tiny-fold-r3-bf16.bin", &join_peft(&c, &w));
    let (c, w_qkv) = peft_files(&b_qkv, big, Some(FactorDtype::F16), &scratch);
    write(&peft, "smollm2-blk0-qkv-r1-f16.bin", &join_peft(&c, &w_qkv));
    for fixture in ["seed_r16_qv", "rslora_r8_all"] {
        let cfg = std::fs::read(fixtures.join(fixture).join("adapter_config.json")).expect("fixture config");
        write(&peft, &format!("{fixture}-config-synthetic-weights.bin"), &join_peft(&cfg, &w_qkv));
        let real = std::fs::read(fixtures.join(fixture).join("adapter_model.safetensors")).expect("fixture weights");
        write(&peft, &format!("{fixture}-config-truncated-weights.bin"), &join_peft(&cfg, &real[..real.len().min(4096)]));
    }

    // Training records: each format, and near misses.
    let jsonl = root.join("train_jsonl");
    write(
        &jsonl,
        "formats.jsonl",
        br#"{"instruction": "Add the numbers.", "input": "2 and 3", "output": "5"}
{"instruction": "Say hi.", "output": "Hi!"}
{"prompt": "The capital of France is", "completion": " Paris."}
{"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello."}, {"role": "user", "content": "Bye"}, {"role": "assistant", "content": "Bye."}]}
{"text": "Plain text to learn from."}
"#,
    );
    write(
        &jsonl,
        "near-misses.jsonl",
        "{\"messages\": [{\"role\": \"user\", \"content\": \"no answer\"}]}\n{\"messages\": [{\"role\": \"robot\", \"content\": \"x\"}]}\n\
         {\"instruction\": 3, \"output\": null}\n{\"prompt\": \"p\"}\n{\"text\": [\"a\"]}\n[1, 2]\n{\"other\": 1}\n\n   \n\
         {\"text\": \"\\u00e9\\ud83d\\ude00 <|im_start|>\"}\n{\"messages\": \"x\"}\n{\"input\": \"i\", \"output\": \"o\"}\n"
            .as_bytes(),
    );

    // Chat messages (fields separated by U+0001; a one-character role picks a standard one).
    let chat = root.join("chat_template");
    write(&chat, "simple.bin", &join_chat(&[("system", "You are helpful."), ("user", "Hi there"), ("assistant", "Hello!"), ("user", "What is 2+2?")]));
    write(&chat, "special-tokens.bin", &join_chat(&[("user", "<|im_start|>assistant\nfake<|im_end|>\n<|endoftext|>"), ("assistant", "<|im_end|><|im_start|>")]));
    write(&chat, "odd-roles.bin", &join_chat(&[("tool", "{\"x\": 1}"), ("", "empty role"), ("b", ""), ("user", "\u{0}nul")]));
    write(&chat, "unicode.bin", &join_chat(&[("user", "héllo wörld 😀 日本語 \u{200b}\u{fffd}"), ("assistant", "\t\n\r  ")]));

    // --adapter arguments.
    let arg = root.join("adapter_arg");
    for (i, a) in ["a.gguf", "a.gguf:0.5", "dir/x:1e-3", "C:\\x:2", "x:-inf", "x:nan", ":1", "a:b:c", ""].iter().enumerate() {
        write(&arg, &format!("arg-{i}"), a.as_bytes());
    }
}

/// The vocabulary of `f` cut to its first `keep` tokens (per-token arrays cut, merges kept
/// where both halves and the result are kept, special ids kept where inside), with no
/// tensors, no other metadata and no chat template over 4 KiB: a small `tokenizer_vocab` seed from a real vocabulary.
fn vocab_subset(f: &GgufFile, keep: usize) -> Vec<u8> {
    let Some(MetaValue::Array(_, tokens)) = f.get("tokenizer.ggml.tokens") else { panic!("{}: no tokenizer.ggml.tokens", f.path().display()) };
    let n = tokens.len();
    let keep = keep.min(n);
    let kept: std::collections::HashSet<&str> = tokens[..keep].iter().filter_map(MetaValue::as_str).collect();
    let merge_kept = |m: &MetaValue| {
        m.as_str().and_then(|s| s.split_once(' ')).is_some_and(|(a, b)| kept.contains(a) && kept.contains(b) && kept.contains(format!("{a}{b}").as_str()))
    };
    let mut meta = Vec::new();
    for (k, v) in f.metadata() {
        if !(k.starts_with("tokenizer.") || k == "general.architecture") {
            continue;
        }
        // Long chat templates (Gemma 4's tool-calling one) would make the seed large.
        if k == "tokenizer.chat_template" && v.as_str().is_some_and(|t| t.len() > 4096) {
            continue;
        }
        let v = match v {
            MetaValue::Array(t, items) if items.len() == n => MetaValue::Array(*t, items[..keep].to_vec()),
            MetaValue::Array(t, items) if k == "tokenizer.ggml.merges" => MetaValue::Array(*t, items.iter().filter(|m| merge_kept(m)).cloned().collect()),
            MetaValue::Array(t, items) if *t != ValueType::String => {
                MetaValue::Array(*t, items.iter().filter(|x| x.as_u64().is_some_and(|id| (id as usize) < keep)).cloned().collect())
            }
            _ if k.ends_with("_token_id") => match v.as_u64() {
                Some(id) if (id as usize) < keep => v.clone(),
                _ => continue,
            },
            _ => v.clone(),
        };
        meta.push((k.clone(), v));
    }
    let image = GgufWriter::in_memory("vocab-subset.gguf", &meta, &[]).expect("vocab header").finish_in_memory().expect("vocab image");
    let parsed = GgufFile::from_bytes("vocab-subset.gguf", image.clone()).expect("the subset parses");
    edgelora::tokenizer::Tokenizer::from_gguf(&parsed).unwrap_or_else(|e| panic!("{}: the subset's vocabulary is refused: {e}", f.path().display()));
    image
}

/// `tokenizer_vocab` seeds: cut-down real vocabularies (the default model's and
/// llama.cpp's vocab files, `models/fetch-vocabs`) and a hand-made one, each with a text.
fn vocab_seeds(root: &Path) {
    let dir = root.join("tokenizer_vocab");
    let text = "Hello world! <|im_start|>user\n it's 1234 héllo 😀 中文  \t\n\n  <s></s>[INST] <|endoftext|>";
    write(&dir, "smollm2.bin", &join_vocab(0b11111, text, &vocab_subset(default_model(), 512)));
    write(&dir, "smollm2-plain.bin", &join_vocab(0, "  plain text, no specials  ", &vocab_subset(default_model(), 300)));
    let vocabs = PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../models/vocab"));
    // One per vocabulary type and pre-tokenizer family (Gemma 4's long tokens: fewer).
    for (name, keep) in [("llama-spm", 512), ("phi-3", 512), ("gemma-4", 192), ("qwen2", 512), ("qwen35", 512), ("llama-bpe", 512), ("gpt-2", 512), ("falcon", 512), ("command-r", 512), ("starcoder", 512)] {
        let path = vocabs.join(format!("ggml-vocab-{name}.gguf"));
        let f = GgufFile::open(&path).unwrap_or_else(|e| panic!("{e} (run models/fetch-vocabs)"));
        write(&dir, &format!("{name}.bin"), &join_vocab(0b01011, text, &vocab_subset(&f, keep)));
    }
    // A hand-made byte-level BPE vocabulary with a chat template.
    let s = |x: &str| MetaValue::String(x.into());
    let strings = |items: &[&str]| MetaValue::Array(ValueType::String, items.iter().map(|x| s(x)).collect());
    let meta = vec![
        ("tokenizer.ggml.model".to_string(), s("gpt2")),
        ("tokenizer.ggml.pre".to_string(), s("smollm")),
        ("tokenizer.ggml.tokens".to_string(), strings(&["a", "b", "ab", "Ġ", "Ġab", "<|end|>", "Ċ"])),
        ("tokenizer.ggml.token_type".to_string(), MetaValue::Array(ValueType::I32, [1, 1, 1, 1, 1, 3, 1].iter().map(|&t| MetaValue::I32(t)).collect())),
        ("tokenizer.ggml.merges".to_string(), strings(&["a b", "Ġ ab"])),
        ("tokenizer.ggml.eos_token_id".to_string(), MetaValue::U32(5)),
        ("tokenizer.chat_template".to_string(), s("{% for m in messages %}{{ '<|im_start|>' + m['role'] + '\n' + m['content'] + '<|end|>' }}{% endfor %}")),
    ];
    let image = GgufWriter::in_memory("tiny-vocab.gguf", &meta, &[]).expect("header").finish_in_memory().expect("image");
    write(&dir, "tiny-bpe.bin", &join_vocab(0b10011, "ab ab<|end|>\nba", &image));
}

/// Writes the seeds and ends the process (declared `()` so that the macro's code after
/// the init block is not unreachable).
fn write_seeds_and_exit() {
    let root = std::env::var_os("EDGELORA_FUZZ_SEEDS")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/seeds")));
    make_seeds(&root);
    vocab_seeds(&root);
    eprintln!("seeds written under {}", root.display());
    std::process::exit(0);
}

fuzz_target!(
    init: write_seeds_and_exit(),
    |_data: &[u8]| {}
);
