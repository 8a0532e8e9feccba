//! The native engine tokenizes without llama.cpp (issue 19): its tokens, pieces, chat
//! renderings and end-of-generation tokens equal the llama.cpp backend's on the default
//! model; both backends render chats with the model's Jinja template; a vocabulary the
//! tokenizer does not implement is
//! refused at load with a typed error while the llama.cpp backend still runs it; loading
//! the native runtime loads no llama.cpp model.

use std::path::Path;

use edgelora::compute::Device;
use edgelora::engine::{llama_cpp, top_k, ChatMessage, Engine, GenerateRequest, NativeRuntime, Prompt, Runtime, RuntimeOptions};
use edgelora::gguf::{GgufFile, GgufWriter, MetaValue, TensorSpec, ValueType};
use edgelora::{EngineError, Error};

use crate::common::{model_path, runtime, tiny_model, tmpdir};

fn native() -> NativeRuntime {
    NativeRuntime::load(model_path(), Device::Cpu, 1).expect("the default model loads on the native engine")
}

fn msgs(m: &[(&str, &str)]) -> Vec<ChatMessage> {
    m.iter().map(|(r, c)| ChatMessage::new(*r, *c)).collect()
}

/// Both results equal, or both errors of the same kind (compared by message).
fn same_result<T: PartialEq + std::fmt::Debug>(what: &str, ours: edgelora::Result<T>, theirs: edgelora::Result<T>) {
    match (ours, theirs) {
        (Ok(a), Ok(b)) => assert_eq!(a, b, "{what}"),
        (Err(a), Err(b)) => assert_eq!(std::mem::discriminant(engine_err(&a)), std::mem::discriminant(engine_err(&b)), "{what}: native {a} vs llama.cpp {b}"),
        (a, b) => panic!("{what}: native {a:?} vs llama.cpp {b:?}"),
    }
}

fn engine_err(e: &Error) -> &EngineError {
    match e {
        Error::Engine(e) => e,
        other => panic!("not an engine error: {other}"),
    }
}

fn texts() -> Vec<String> {
    let mut v: Vec<String> = [
        "The capital of France is",
        "",
        " ",
        "   leading and trailing spaces   ",
        "Bonjour 👋, ça va ? 我很好。مرحبا بالعالم. Ünïcödé — “quotes” … e\u{301}",
        "👨‍👩‍👧‍👦 family, 🇫🇷 flag, \u{200d} joiner, \u{feff} BOM",
        "<|im_start|>user\nHi!<|im_end|>\n<|im_start|>assistant\n",
        "<|endoftext|>text after end<|endoftext|>",
        "<|im_start|",
        "<|im_start|><|im_start|>",
        "tabs\tand\r\nwindows\nnewlines\n\n\n",
        "def f(x):\n    return x ** 2  # comment\n",
        "1234567890 3.14159 -42 1e-9 0x1F",
        "don't won't I'm you're they've",
        "\u{0}NUL inside",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    v.push("long ".repeat(500));
    v
}

fn conversations() -> Vec<Vec<ChatMessage>> {
    vec![
        msgs(&[("user", "Hello!")]),
        msgs(&[("system", "You are terse."), ("user", "What is 2+2?")]),
        msgs(&[("system", "Réponds en français."), ("user", "Bonjour 👋, ça va ? 我很好。"), ("assistant", "Très bien !"), ("user", "Et toi ?")]),
        msgs(&[("user", "<|im_start|>inject<|im_end|>"), ("assistant", "ok"), ("user", "مرحبا")]),
        msgs(&[("user", "  padded  \n")]),
        msgs(&[("tool", "{\"x\": 1}"), ("user", "")]),
        msgs(&[]),
        msgs(&[("user", "a\u{0}b")]),
    ]
}

/// Text, chat and token prompts: the native engine's tokens equal the llama.cpp
/// backend's (and its errors are the same kinds: empty prompt, bad token); so do renderings, detokenization, pieces and end-of-generation tokens.
#[test]
fn native_tokens_equal_llama_cpp_on_the_default_model() {
    let ours = native();
    let theirs = runtime();
    let (o, t): (&dyn Engine, &dyn Engine) = (&ours, &theirs);
    let mut n = 0;
    for text in texts() {
        same_result(&format!("text {text:?}"), o.tokenize(&Prompt::Text(text.clone())), t.tokenize(&Prompt::Text(text.clone())));
        for add in [false, true] {
            let got = o.tokenize_text(&text, add).unwrap();
            assert_eq!(got, t.tokenize_text(&text, add).unwrap(), "tokenize_text({text:?}, {add})");
            assert_eq!(o.detokenize(&got), t.detokenize(&got), "detokenize of {text:?}");
        }
        n += 1;
    }
    for conv in conversations() {
        for add in [false, true] {
            same_result(&format!("render {conv:?} {add}"), ours.render_chat_with(&conv, add), theirs.render_chat_with(&conv, add));
        }
        same_result(&format!("chat {conv:?}"), o.tokenize(&Prompt::Chat(conv.clone())), t.tokenize(&Prompt::Chat(conv.clone())));
        n += 1;
    }
    // Both render the model's Jinja template: without a system turn, SmolLM2's template
    // opens with its default system prompt (as transformers' apply_chat_template does).
    let user = msgs(&[("user", "Hi")]);
    let want = "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n";
    assert_eq!(ours.render_chat(&user).unwrap(), want);
    assert_eq!(theirs.render_chat(&user).unwrap(), want);
    // The chat prompts hold what they should.
    let chat = o.tokenize(&Prompt::Chat(conversations()[2].clone())).unwrap();
    assert_eq!(o.detokenize(&chat), "<|im_start|>system\nRéponds en français.<|im_end|>\n<|im_start|>user\nBonjour 👋, ça va ? 我很好。<|im_end|>\n<|im_start|>assistant\nTrès bien !<|im_end|>\n<|im_start|>user\nEt toi ?<|im_end|>\n<|im_start|>assistant\n");
    // A NUL byte in a message is text like any other for the Jinja renderer (llama.cpp's
    // C renderer refused it), on both backends alike (`same_result` above).
    assert!(o.detokenize(&o.tokenize(&Prompt::Chat(conversations()[7].clone())).unwrap()).contains("a\u{0}b"));
    for tokens in [vec![1, 2, 3], vec![0], vec![49151], vec![49152], vec![-1], vec![]] {
        same_result(&format!("tokens {tokens:?}"), o.tokenize(&Prompt::Tokens(tokens.clone())), t.tokenize(&Prompt::Tokens(tokens.clone())));
    }
    assert!(matches!(engine_err(&o.tokenize(&Prompt::Text(String::new())).unwrap_err()), EngineError::EmptyPrompt));
    assert!(matches!(engine_err(&o.tokenize(&Prompt::Tokens(vec![49152])).unwrap_err()), EngineError::BadToken { id: 49152, n_vocab: 49152 }));
    // Every token: its generated piece and whether it ends generation.
    assert_eq!(o.n_vocab(), t.n_vocab());
    for tok in 0..ours.n_vocab() as i32 {
        assert_eq!(ours.token_piece(tok), theirs.token_piece(tok), "piece of {tok}");
        assert_eq!(ours.is_eog(tok), theirs.is_eog(tok), "is_eog({tok})");
    }
    assert_eq!(ours.eos_token(), theirs.eos_token());
    assert!(n >= 20);
}

/// Greedy generations of the two backends on chat and text prompts: the same prompt
/// tokens, and where the continuations part (possibly at the first token: with SmolLM2's
/// default system prompt, "What is the capital of France?" opens on a near-tie), a near-tie
/// of the two engines' arithmetic (llama.cpp rounds activations to Q8_1 on this model):
/// each engine's pick is among the other's top 3 at that position.
#[test]
fn native_and_llama_cpp_greedy_generations_agree_on_chat_prompts() {
    let ours = native();
    let theirs = runtime();
    let prompts = [
        Prompt::Chat(msgs(&[("user", "What is the capital of France?")])),
        Prompt::Chat(msgs(&[("system", "You answer in one word."), ("user", "Name a primary colour.")])),
        Prompt::Chat(msgs(&[("user", "Écris « bonjour » en chinois : 你好？")])),
        Prompt::Text("The capital of France is".into()),
    ];
    for p in prompts {
        let prompt = ours.tokenize(&p).unwrap();
        assert_eq!(prompt, theirs.tokenize(&p).unwrap(), "{p:?}");
        let mut req = GenerateRequest::new(p.clone());
        req.max_tokens = 16;
        let a = ours.generate(&req, &mut |_| true).unwrap();
        let b = theirs.generate(&req, &mut |_| true).unwrap();
        assert_eq!(a.n_prompt, b.n_prompt, "{p:?}");
        let common = a.tokens.iter().zip(&b.tokens).take_while(|(x, y)| x == y).count();
        eprintln!("{p:?}: native {:?} / llama.cpp {:?}: {common} tokens agree", a.text, b.text);
        if common == a.tokens.len() && common == b.tokens.len() {
            assert_eq!((a.text.as_str(), a.stop_reason), (b.text.as_str(), b.stop_reason));
        } else if common < a.tokens.len() && common < b.tokens.len() {
            let mut ctx = prompt.clone();
            ctx.extend_from_slice(&a.tokens[..common]);
            let top3 = |l: Vec<f32>| top_k(&l, 3).into_iter().map(|(t, _)| t).collect::<Vec<_>>();
            let (ours_top, theirs_top) = (top3(ours.logits(&ctx, &[]).unwrap()), top3(theirs.logits(&ctx, &[]).unwrap()));
            assert!(ours_top.contains(&b.tokens[common]) && theirs_top.contains(&a.tokens[common]), "{p:?} at {common}: native top 3 {ours_top:?}, llama.cpp top 3 {theirs_top:?}");
        }
    }
}

/// Loading a native runtime asks llama.cpp for nothing: no model load on this thread
/// (every llama.cpp context comes from a loaded model), nor while it tokenizes and
/// generates; the counter does count a llama.cpp runtime's load.
#[test]
fn the_native_runtime_loads_no_llama_cpp_model() {
    let before = llama_cpp::model_loads_on_this_thread();
    let rt = native();
    let mut req = GenerateRequest::new(Prompt::Chat(msgs(&[("user", "Hi")])));
    req.max_tokens = 2;
    let g = rt.generate(&req, &mut |_| true).unwrap();
    assert_eq!(rt.detokenize(&rt.tokenize_text("<|im_start|>x", false).unwrap()), "<|im_start|>x");
    assert_eq!(g.tokens.len(), 2);
    assert_eq!(llama_cpp::model_loads_on_this_thread(), before, "NativeRuntime loaded a llama.cpp model");
    let _llama = runtime();
    assert_eq!(llama_cpp::model_loads_on_this_thread(), before + 1);
}

// ---------------------------------------------------------------------------------------
// Vocabularies the tokenizer refuses, and models without a chat template

fn strings(items: &[&str]) -> MetaValue {
    MetaValue::Array(ValueType::String, items.iter().map(|s| MetaValue::String(s.to_string())).collect())
}

/// The suite's tiny `llama` model (vocab 40) with a byte-level BPE vocabulary of 40 tokens
/// whose pre-tokenizer is `pre`, and optionally a chat template.
fn tiny_with_vocab(dir: &Path, name: &str, pre: &str, template: Option<&str>) -> std::path::PathBuf {
    let src = dir.join(format!("{name}-base.gguf"));
    let base = tiny_model(&src, "llama", 7);
    let mut tokens: Vec<String> = ('a'..='z').map(String::from).collect();
    tokens.extend(["Ġ", "Ċ", "!", ".", "ab", "Ġa", "Ġab", "he", "hel", "hell", "hello", "Ġhello", "<|im_start|>", "<|endoftext|>"].map(String::from));
    assert_eq!(tokens.len(), 40);
    let types: Vec<MetaValue> = tokens.iter().map(|t| MetaValue::I32(if t.starts_with("<|") { 3 } else { 1 })).collect();
    let refs: Vec<&str> = tokens.iter().map(String::as_str).collect();
    let mut meta: Vec<(String, MetaValue)> = base.metadata().to_vec();
    meta.extend([
        ("tokenizer.ggml.model".to_string(), MetaValue::String("gpt2".into())),
        ("tokenizer.ggml.pre".to_string(), MetaValue::String(pre.into())),
        ("tokenizer.ggml.tokens".to_string(), strings(&refs)),
        ("tokenizer.ggml.token_type".to_string(), MetaValue::Array(ValueType::I32, types)),
        ("tokenizer.ggml.merges".to_string(), strings(&["a b", "Ġ a", "Ġa b", "h e", "he l", "hel l", "hell o", "Ġ hello"])),
        ("tokenizer.ggml.bos_token_id".to_string(), MetaValue::U32(39)),
        ("tokenizer.ggml.eos_token_id".to_string(), MetaValue::U32(39)),
    ]);
    if let Some(t) = template {
        meta.push(("tokenizer.chat_template".to_string(), MetaValue::String(t.into())));
    }
    let specs: Vec<TensorSpec> = base.tensors().iter().map(|t| TensorSpec::new(&t.name, &t.shape, t.ggml_type)).collect();
    let path = dir.join(format!("{name}.gguf"));
    let mut w = GgufWriter::create(&path, &meta, &specs).unwrap();
    for t in base.tensors() {
        w.write_tensor(&t.name, base.tensor_bytes(&t.name).unwrap().1).unwrap();
    }
    w.finish().unwrap();
    path
}

fn llama_load(path: &Path) -> edgelora::Result<Runtime> {
    Runtime::load(path, RuntimeOptions { threads: 1, n_ctx: 64, n_batch: 64, ..RuntimeOptions::default() })
}

#[test]
fn a_vocabulary_the_tokenizer_does_not_implement_is_refused_by_the_native_runtime() {
    let dir = tmpdir();
    // Known to llama.cpp, not implemented by edgelora's tokenizer: a typed error naming the
    // file, the key and the value, pointing at the llama.cpp backend, which runs it.
    let path = tiny_with_vocab(dir.path(), "deepseek", "deepseek-llm", None);
    let e = NativeRuntime::load(&path, Device::Cpu, 1).err().expect("the native runtime refuses deepseek-llm");
    match &e {
        Error::Engine(EngineError::UnsupportedVocab { path: p, llama_cpp_knows: true, cause }) => {
            assert_eq!(p, &path);
            assert!(matches!(cause, edgelora::tokenizer::TokenizerError::UnsupportedPreTokenizer { value, .. } if value == "deepseek-llm"), "{cause:?}");
        }
        other => panic!("expected UnsupportedVocab, got {other:?}"),
    }
    let msg = e.chain();
    for want in [path.to_str().unwrap(), "tokenizer.ggml.pre", "deepseek-llm", "--backend llama", "native engine"] {
        assert!(msg.contains(want), "{msg:?} does not say {want:?}");
    }
    let rt = llama_load(&path).expect("llama.cpp runs the deepseek-llm vocabulary");
    let tokens = rt.tokenize(&Prompt::Text("hello ab".into())).unwrap();
    assert!(!tokens.is_empty() && tokens.iter().all(|&t| (0..40).contains(&t)), "{tokens:?}");
    assert!(rt.generate(&GenerateRequest::new(Prompt::Tokens(tokens)), &mut |_| true).is_ok());

    // Unknown to both: the native error says so, and llama.cpp refuses it too.
    let path = tiny_with_vocab(dir.path(), "unknown", "no-such-pre", None);
    let e = NativeRuntime::load(&path, Device::Cpu, 1).err().expect("refused");
    assert!(matches!(&e, Error::Engine(EngineError::UnsupportedVocab { llama_cpp_knows: false, .. })), "{e:?}");
    assert!(e.chain().contains("no-such-pre") && !e.chain().contains("--backend llama"), "{}", e.chain());
    assert!(llama_load(&path).is_err());

    // A malformed vocabulary: the tokenizer's own error, naming the key.
    let path = tiny_with_vocab(dir.path(), "ok", "gpt-2", None);
    let g = GgufFile::open(&path).unwrap();
    let mut meta = g.metadata().to_vec();
    for kv in &mut meta {
        if kv.0 == "tokenizer.ggml.merges" {
            kv.1 = strings(&["a b", "a zz"]);
        }
    }
    let bad = dir.path().join("bad-merges.gguf");
    let specs: Vec<TensorSpec> = g.tensors().iter().map(|t| TensorSpec::new(&t.name, &t.shape, t.ggml_type)).collect();
    let mut w = GgufWriter::create(&bad, &meta, &specs).unwrap();
    for t in g.tensors() {
        w.write_tensor(&t.name, g.tensor_bytes(&t.name).unwrap().1).unwrap();
    }
    w.finish().unwrap();
    let e = NativeRuntime::load(&bad, Device::Cpu, 1).err().expect("refused");
    assert!(matches!(&e, Error::Tokenizer(edgelora::tokenizer::TokenizerError::BadEntry { .. })), "{e:?}");
    assert!(e.chain().contains("tokenizer.ggml.merges"), "{}", e.chain());
}

/// A supported vocabulary on a tiny model: both backends give the same tokens; without
/// `tokenizer.chat_template` a chat prompt is `NoChatTemplate` on both (text prompts
/// still work); with one, both render its Jinja alike (a template that does not parse, or
/// raises, is `ChatTemplate` on both).
#[test]
fn tiny_models_tokenize_alike_and_chat_needs_a_template_on_both_backends() {
    let dir = tmpdir();
    let templates = [
        ("none", None),
        ("chatml", Some("{% for m in messages %}{{ '<|im_start|>' + m['role'] + '\n' + m['content'] + '<|im_end|>\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}")),
        ("first-content", Some("{{ messages[0]['content'] }}!")),
        ("broken", Some("{% for m in messages %}")),
        ("raises", Some("{{ raise_exception('no chat here') }}")),
    ];
    for (name, template) in templates {
        let path = tiny_with_vocab(dir.path(), name, "gpt-2", template);
        let ours = NativeRuntime::load(&path, Device::Cpu, 1).unwrap();
        let theirs = llama_load(&path).unwrap();
        for text in ["hello ab", "ab!<|im_start|>hello.\n", "zzz", " a  b  "] {
            same_result(text, Engine::tokenize(&ours, &Prompt::Text(text.into())), Engine::tokenize(&theirs, &Prompt::Text(text.into())));
        }
        let conv = msgs(&[("user", "hello")]);
        let (a, b) = (Engine::tokenize(&ours, &Prompt::Chat(conv.clone())), Engine::tokenize(&theirs, &Prompt::Chat(conv.clone())));
        match name {
            "none" => {
                assert!(matches!(engine_err(a.as_ref().unwrap_err()), EngineError::NoChatTemplate), "{a:?}");
                assert!(matches!(engine_err(b.as_ref().unwrap_err()), EngineError::NoChatTemplate), "{b:?}");
                assert!(a.unwrap_err().chain().contains("tokenizer.chat_template"));
            }
            "chatml" | "first-content" => {
                let want = if name == "chatml" { "<|im_start|>user\nhello<|im_end|>\n<|im_start|>assistant\n" } else { "hello!" };
                assert_eq!(ours.render_chat(&conv).unwrap(), want);
                assert_eq!(theirs.render_chat(&conv).unwrap(), want);
                same_result(name, a, b);
            }
            _ => {
                assert!(matches!(engine_err(a.as_ref().unwrap_err()), EngineError::ChatTemplate(_)), "{a:?}");
                let chain = a.as_ref().unwrap_err().chain();
                assert!(name != "raises" || chain.contains("no chat here"), "{chain}");
                same_result(name, a, b);
            }
        }
        assert!(ours.is_eog(39) && theirs.is_eog(39));
    }
}
