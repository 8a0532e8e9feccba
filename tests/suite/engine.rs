//! The llama.cpp backend through `Runtime`: parity with llama.cpp's own API, adapter
//! scales and combinations, switching without cache contamination, errors.

use std::num::NonZeroU32;
use std::path::{Path, PathBuf};

use edgelora::adapter::{compose, random_lora, write_gguf_lora, ComposeMethod, GgufLoraDtype, LoraAdapter, ALL_LINEAR};
use edgelora::engine::{argmax, CancelFlag, ChatMessage, GenerateRequest, Prompt, Runtime, RuntimeOptions, SamplingParams, StopReason};
use edgelora::{AdapterError, EngineError, Error};

use crate::common::{f32_runtime, max_abs_diff, model_gguf, model_path, runtime, tmpdir};

const PROMPT: &str = "The capital of France is";

fn set(items: &[(&str, f32)]) -> Vec<(String, f32)> {
    items.iter().map(|(n, s)| (n.to_string(), *s)).collect()
}

/// Writes a random f32 adapter over `modules` and returns its path and factors.
fn adapter(dir: &Path, name: &str, modules: &[&str], rank: usize, alpha: f32, seed: u64) -> (PathBuf, LoraAdapter) {
    let a = random_lora(model_gguf(), modules, rank, alpha, 0.03, seed);
    let path = dir.join(format!("{name}.gguf"));
    write_gguf_lora(&a, &path, GgufLoraDtype::F32).unwrap();
    (path, a)
}

#[test]
fn greedy_generation_equals_llama_cpps_own_greedy_loop() {
    use llama_cpp_2::context::params::LlamaContextParams;
    use llama_cpp_2::llama_batch::LlamaBatch;
    use llama_cpp_2::model::params::LlamaModelParams;
    use llama_cpp_2::model::LlamaModel;
    use llama_cpp_2::sampling::LlamaSampler;

    let n = 32;
    // Ours.
    let rt = runtime();
    let mut req = GenerateRequest::new(Prompt::Text(PROMPT.into()));
    req.max_tokens = n;
    req.ignore_eog = true;
    let ours = rt.generate(&req, &mut |_| true).unwrap();
    let our_prompt = rt.tokenize(&Prompt::Text(PROMPT.into())).unwrap();

    // llama.cpp through the llama-cpp-2 crate's own API: its tokenizer, batch, greedy sampler.
    let backend = edgelora::engine::llama_cpp::backend();
    let model = LlamaModel::load_from_file(backend, model_path(), &LlamaModelParams::default()).unwrap();
    let params = LlamaContextParams::default().with_n_ctx(NonZeroU32::new(1024)).with_n_threads(1).with_n_threads_batch(1);
    let mut ctx = model.new_context(backend, params).unwrap();
    let prompt = model.vocab().tokenize(PROMPT.as_bytes(), true, true);
    assert_eq!(prompt.iter().map(|t| t.0).collect::<Vec<_>>(), our_prompt, "tokenization differs");
    let mut batch = LlamaBatch::new(512, 1);
    let last = prompt.len() as i32 - 1;
    for (i, t) in prompt.iter().enumerate() {
        batch.add(*t, i as i32, &[0], i as i32 == last).unwrap();
    }
    ctx.decode(&mut batch).unwrap();
    let mut sampler = LlamaSampler::greedy();
    let mut theirs = Vec::new();
    let mut pos = prompt.len() as i32;
    loop {
        let t = sampler.sample(&ctx, batch.n_tokens() - 1);
        sampler.accept(t);
        theirs.push(t.0);
        if theirs.len() == n {
            break;
        }
        batch.clear();
        batch.add(t, pos, &[0], true).unwrap();
        ctx.decode(&mut batch).unwrap();
        pos += 1;
    }
    assert_eq!(ours.tokens, theirs);
    assert!(ours.text.contains("Paris"), "{:?}", ours.text);
}

#[test]
fn adapter_scale_zero_is_the_base_exactly_and_scale_one_is_not() {
    let dir = tmpdir();
    let (path, _) = adapter(dir.path(), "a", &ALL_LINEAR, 16, 32.0, 11);
    let rt = runtime();
    rt.load_adapter("a", &path).unwrap();
    let tokens = rt.tokenize(&Prompt::Text(PROMPT.into())).unwrap();
    let base = rt.logits(&tokens, &[]).unwrap();
    let zero = rt.logits(&tokens, &set(&[("a", 0.0)])).unwrap();
    let one = rt.logits(&tokens, &set(&[("a", 1.0)])).unwrap();
    assert_eq!(base.len(), rt.n_vocab());
    assert!(base.iter().zip(&zero).all(|(a, b)| a.to_bits() == b.to_bits()), "scale 0 differs from base by {}", max_abs_diff(&base, &zero));
    let d = max_abs_diff(&base, &one);
    assert!(d > 0.1, "scale 1 changed logits by only {d}");
}

#[test]
fn two_weighted_adapters_equal_their_concatenation() {
    // a1: rank 8, alpha 16 (s = 2), attention; a2: rank 4, alpha 4 (s = 1), all-linear.
    let dir = tmpdir();
    let (p1, f1) = adapter(dir.path(), "a1", &["attn_q", "attn_v"], 8, 16.0, 21);
    let (p2, f2) = adapter(dir.path(), "a2", &ALL_LINEAR, 4, 4.0, 22);
    let (w1, w2) = (0.7f32, 0.3f32);
    // cat: A = [A1; A2], B = [w1·s1·B1 | w2·s2·B2] per target (rank 12 on q/v, 4 elsewhere),
    // written with one alpha and the per-tensor differences folded into B.
    let (cat, _) = compose(&[(&f1, w1), (&f2, w2)], ComposeMethod::Cat).unwrap();
    assert_eq!(cat.ranks().into_iter().collect::<Vec<_>>(), vec![(4, 150), (12, 60)]);
    let pc = dir.path().join("cat.gguf");
    write_gguf_lora(&cat, &pc, GgufLoraDtype::F32).unwrap();

    // On the F32 model: no activation quantization, so the two routes differ only by
    // float rounding (on Q4_1 that rounding can flip Q8 roundings: see common.rs).
    let rt = f32_runtime();
    rt.load_adapter("a1", &p1).unwrap();
    rt.load_adapter("a2", &p2).unwrap();
    rt.load_adapter("cat", &pc).unwrap();
    for prompt in [PROMPT, "<|im_start|>user\nName a fruit.<|im_end|>\n<|im_start|>assistant\n"] {
        let tokens = rt.tokenize(&Prompt::Text(prompt.into())).unwrap();
        let base = rt.logits(&tokens, &[]).unwrap();
        let both = rt.logits(&tokens, &set(&[("a1", w1), ("a2", w2)])).unwrap();
        let one = rt.logits(&tokens, &set(&[("cat", 1.0)])).unwrap();
        let effect = max_abs_diff(&base, &both);
        let gap = max_abs_diff(&both, &one);
        assert!(effect > 0.1, "adapters barely changed the logits ({effect})");
        assert!(gap < 1e-3, "two adapters vs concatenation: max |Δlogit| {gap} (adapter effect {effect})");
        assert_eq!(argmax(&both), argmax(&one));
    }
}

#[test]
fn switching_adapter_sets_never_reuses_another_sets_cache() {
    let dir = tmpdir();
    let (p1, _) = adapter(dir.path(), "a1", &ALL_LINEAR, 8, 16.0, 31);
    let (p2, _) = adapter(dir.path(), "a2", &["attn_q", "attn_k", "attn_v"], 8, 8.0, 32);
    let sets = [set(&[]), set(&[("a1", 1.0)]), set(&[("a1", 0.5), ("a2", 1.0)]), set(&[("a2", 1.0), ("a1", 0.5)])];
    let short = "<|im_start|>user\nWhat is 2+2?";
    let long = "<|im_start|>user\nWhat is 2+2?<|im_end|>\n<|im_start|>assistant\n";
    // Requests whose prompts share a prefix but whose adapter sets differ: a cache kept
    // across the switch would give the long prompt keys computed under another set.
    let schedule = [(1, short), (2, long), (0, long), (1, long), (3, short), (2, long), (0, short), (1, long)];

    // F32 model: a fresh runtime may sum two adapters' deltas in another order (llama.cpp
    // keeps them in a pointer-keyed hash map), which on F32 changes only rounding.
    let shared = f32_runtime();
    shared.load_adapter("a1", &p1).unwrap();
    shared.load_adapter("a2", &p2).unwrap();
    let mut got = Vec::new();
    for (si, prompt) in schedule {
        let tokens = shared.tokenize(&Prompt::Text(prompt.into())).unwrap();
        got.push(shared.logits(&tokens, &sets[si]).unwrap());
    }
    for (k, (si, prompt)) in schedule.iter().enumerate() {
        let fresh = f32_runtime();
        fresh.load_adapter("a1", &p1).unwrap();
        fresh.load_adapter("a2", &p2).unwrap();
        let tokens = fresh.tokenize(&Prompt::Text((*prompt).into())).unwrap();
        let want = fresh.logits(&tokens, &sets[*si]).unwrap();
        let d = max_abs_diff(&want, &got[k]);
        assert!(d < 2e-4, "request {k} (set {si}) differs from a fresh runtime by {d}");
    }
    // The sets give clearly different answers on the long prompt (0, 1, 2 = 3 as a set),
    // so contamination could not hide under the tolerance.
    assert!(max_abs_diff(&got[1], &got[2]) > 0.05 && max_abs_diff(&got[2], &got[3]) > 0.05);
    assert!(max_abs_diff(&got[1], &got[5]) < 2e-4, "sets 2 and 3 are one set in another order");
}

#[test]
fn the_prompt_cache_is_reused_within_one_adapter_set() {
    let rt = runtime();
    let history = vec![ChatMessage::new("user", "Say hello.")];
    let mut req = GenerateRequest::new(Prompt::Chat(history.clone()));
    req.max_tokens = 8;
    let first = rt.generate(&req, &mut |_| true).unwrap();
    assert_eq!(first.n_prompt_cached, 0);
    let mut history2 = history;
    history2.push(ChatMessage::new("assistant", first.text.clone()));
    history2.push(ChatMessage::new("user", "Again."));
    req.prompt = Prompt::Chat(history2);
    let second = rt.generate(&req, &mut |_| true).unwrap();
    assert!(second.n_prompt_cached > 10, "only {} prompt tokens reused", second.n_prompt_cached);
}

#[test]
fn adapters_load_and_unload_by_name_without_reloading_the_model() {
    let dir = tmpdir();
    let (p1, _) = adapter(dir.path(), "a1", &ALL_LINEAR, 4, 8.0, 41);
    let rt = runtime();
    let tokens = rt.tokenize(&Prompt::Text(PROMPT.into())).unwrap();
    let base = rt.logits(&tokens, &[]).unwrap();
    let info = rt.load_adapter("x", &p1).unwrap();
    assert_eq!(info.summary.targets.len(), 30 * 7);
    assert!(info.summary.targets.values().all(|&(r, s)| r == 4 && s == 2.0));
    let with = rt.logits(&tokens, &set(&[("x", 1.0)])).unwrap();
    let e = rt.load_adapter("x", &p1).unwrap_err();
    assert!(matches!(e, Error::Engine(EngineError::DuplicateAdapter { .. })), "{e}");
    rt.unload_adapter("x").unwrap();
    assert!(rt.adapters().is_empty());
    let e = rt.logits(&tokens, &set(&[("x", 1.0)])).unwrap_err();
    assert!(matches!(e, Error::Engine(EngineError::UnknownAdapter { .. })), "{e}");
    assert!(rt.logits(&tokens, &[]).unwrap() == base);
    rt.load_adapter("x", &p1).unwrap();
    assert!(rt.logits(&tokens, &set(&[("x", 1.0)])).unwrap() == with);
    let e = rt.unload_adapter("nope").unwrap_err().to_string();
    assert!(e.contains("\"nope\"") && e.contains("x"), "{e}");
    let e = rt.logits(&tokens, &set(&[("x", f32::NAN)])).unwrap_err();
    assert!(matches!(e, Error::Engine(EngineError::BadScale { .. })), "{e}");
}

#[test]
fn bad_adapters_give_typed_errors_naming_the_problem() {
    let dir = tmpdir();
    let rt = runtime();
    // A model is not an adapter.
    let e = rt.load_adapter("m", model_path()).unwrap_err().to_string();
    assert!(e.contains("general.type") && e.contains("\"model\"") || e.contains("general.type"), "{e}");

    let good = random_lora(model_gguf(), &["attn_q"], 4, 8.0, 0.01, 1);
    // Wrong architecture.
    let p = dir.path().join("arch.gguf");
    let mut qwen = good.clone();
    qwen.architecture = "qwen2".into();
    write_gguf_lora(&qwen, &p, GgufLoraDtype::F16).unwrap();
    let e = rt.load_adapter("arch", &p).unwrap_err();
    assert!(matches!(e, Error::Adapter(AdapterError::WrongArchitecture { ref found, .. }) if found == "qwen2"), "{e}");

    // A target the base does not have.
    let mut odd = good.clone();
    let t = odd.tensors.remove("blk.0.attn_q.weight").unwrap();
    odd.tensors.insert("blk.99.attn_q.weight".into(), t);
    let p = dir.path().join("target.gguf");
    write_gguf_lora(&odd, &p, GgufLoraDtype::F16).unwrap();
    let e = rt.load_adapter("target", &p).unwrap_err();
    assert!(matches!(e, Error::Adapter(AdapterError::BadTensor { ref tensor, .. }) if tensor == "blk.99.attn_q.weight"), "{e}");

    // Wrong shape: q is 576×576; claim 512 inputs.
    let mut wrong = good.clone();
    let t = wrong.tensors.get_mut("blk.0.attn_q.weight").unwrap();
    t.n_in = 512;
    t.a.truncate(4 * 512);
    let p = dir.path().join("shape.gguf");
    write_gguf_lora(&wrong, &p, GgufLoraDtype::F16).unwrap();
    let e = rt.load_adapter("shape", &p).unwrap_err();
    assert!(matches!(e, Error::Adapter(AdapterError::BadTensor { ref reason, .. }) if reason.contains("[576, 576]")), "{e}");
    let e = rt.load_adapter("shape", &p).unwrap_err();
    assert!(e.to_string().contains("blk.0.attn_q.weight"), "{e}");

    // Half a pair: rewrite a file without one lora_b.
    let full = dir.path().join("full.gguf");
    let mut two = good.clone();
    two.tensors.retain(|n, _| n.starts_with("blk.0.") || n.starts_with("blk.1."));
    write_gguf_lora(&two, &full, GgufLoraDtype::F16).unwrap();
    let src = edgelora::gguf::GgufFile::open(&full).unwrap();
    let keep: Vec<_> = src.tensors().iter().filter(|t| t.name != "blk.1.attn_q.weight.lora_b").cloned().collect();
    let specs: Vec<_> = keep.iter().map(|t| edgelora::gguf::TensorSpec::new(t.name.clone(), &t.shape, t.ggml_type)).collect();
    let half = dir.path().join("half.gguf");
    let mut w = edgelora::gguf::GgufWriter::create(&half, src.metadata(), &specs).unwrap();
    for t in &keep {
        w.write_tensor(&t.name, src.tensor_data(t)).unwrap();
    }
    w.finish().unwrap();
    let e = rt.load_adapter("half", &half).unwrap_err();
    assert!(matches!(e, Error::Adapter(AdapterError::BadTensor { ref tensor, .. }) if tensor == "blk.1.attn_q.weight.lora_b"), "{e}");

    // A missing file.
    let e = rt.load_adapter("none", dir.path().join("missing.gguf")).unwrap_err().to_string();
    assert!(e.contains("missing.gguf"), "{e}");
    assert!(rt.adapters().is_empty(), "a failed load left an adapter registered");
}

#[test]
fn streaming_stop_strings_and_cancellation() {
    let rt = runtime();
    let mut req = GenerateRequest::new(Prompt::Text(PROMPT.into()));
    req.max_tokens = 24;
    let mut pieces = Vec::new();
    let full = rt.generate(&req, &mut |p| {
        pieces.push(p.to_string());
        true
    })
    .unwrap();
    assert!(pieces.len() > 3);
    assert_eq!(pieces.concat(), full.text);
    assert!(full.text.starts_with(" Paris."), "{:?}", full.text);

    req.stop = vec![".".into()];
    let stopped = rt.generate(&req, &mut |_| true).unwrap();
    assert_eq!(stopped.stop_reason, StopReason::StopString);
    assert_eq!(stopped.text, " Paris");

    req.stop.clear();
    let flag = CancelFlag::new();
    req.cancel = Some(flag.clone());
    let mut n = 0;
    let cancelled = rt
        .generate(&req, &mut |_| {
            n += 1;
            if n == 3 {
                flag.cancel();
            }
            true
        })
        .unwrap();
    assert_eq!(cancelled.stop_reason, StopReason::Cancelled);
    assert!(cancelled.tokens.len() < full.tokens.len());
    // The callback can cancel too; and a later request runs normally.
    let early = rt.generate(&GenerateRequest { cancel: None, ..req.clone() }, &mut |_| false).unwrap();
    assert_eq!(early.stop_reason, StopReason::Cancelled);
    assert_eq!(early.tokens.len(), 1);
    let again = rt.generate(&GenerateRequest { cancel: None, ..req }, &mut |_| true).unwrap();
    assert_eq!(again.tokens, full.tokens);
}

#[test]
fn seeded_sampling_is_reproducible() {
    let rt = runtime();
    let mut req = GenerateRequest::new(Prompt::Text("Once upon a time".into()));
    req.max_tokens = 16;
    req.ignore_eog = true;
    req.sampling = SamplingParams { temperature: 1.0, seed: 5, ..Default::default() };
    let a = rt.generate(&req, &mut |_| true).unwrap();
    let b = rt.generate(&req, &mut |_| true).unwrap();
    req.sampling.seed = 6;
    let c = rt.generate(&req, &mut |_| true).unwrap();
    assert_eq!(a.tokens, b.tokens);
    assert_ne!(a.tokens, c.tokens);
}

#[test]
fn chat_template_and_special_tokens() {
    let rt = runtime();
    let text = rt.render_chat(&[ChatMessage::new("user", "Hi")]).unwrap();
    assert!(text.contains("<|im_start|>user\nHi<|im_end|>") && text.ends_with("<|im_start|>assistant\n"), "{text:?}");
    let tokens = rt.tokenize(&Prompt::Text("<|im_start|>user".into())).unwrap();
    let im_start = rt.tokenize(&Prompt::Text("<|im_start|>".into())).unwrap();
    assert_eq!(im_start.len(), 1, "<|im_start|> is one special token");
    assert_eq!(tokens[0], im_start[0]);
    let e = rt.tokenize(&Prompt::Tokens(vec![1, 999_999])).unwrap_err();
    assert!(matches!(e, Error::Engine(EngineError::BadToken { id: 999_999, .. })), "{e}");
    assert!(matches!(rt.tokenize(&Prompt::Tokens(vec![])).unwrap_err(), Error::Engine(EngineError::EmptyPrompt)));
}

#[test]
fn teacher_forced_logits_end_with_the_last_position() {
    let rt = runtime();
    let tokens = rt.tokenize(&Prompt::Text("One, two, three, four".into())).unwrap();
    let all = rt.logits_all(&tokens, &[]).unwrap();
    assert_eq!(all.len(), tokens.len());
    let last = rt.logits(&tokens, &[]).unwrap();
    assert!(max_abs_diff(&all[tokens.len() - 1], &last) < 1e-3);
    // ", five" follows "four"-ish counting: the position after "three" predicts ",".
    assert_ne!(argmax(&all[0]), argmax(&all[tokens.len() - 1]));
}

#[test]
fn loading_errors_name_the_file() {
    let e = Runtime::load("/nonexistent/m.gguf", RuntimeOptions::default()).err().unwrap().to_string();
    assert!(e.contains("/nonexistent/m.gguf"), "{e}");
    let dir = tmpdir();
    let p = dir.path().join("adapter.gguf");
    write_gguf_lora(&random_lora(model_gguf(), &["attn_q"], 2, 4.0, 0.01, 3), &p, GgufLoraDtype::F16).unwrap();
    let e = Runtime::load(&p, RuntimeOptions::default()).err().unwrap().to_string();
    assert!(e.contains("adapter, not a model"), "{e}");
}
