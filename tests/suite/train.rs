//! Training: data formats and errors, step 0 = base, determinism and resume, gradient
//! accumulation, Ctrl-C, export (GGUF-LoRA with manifest, PEFT) and its parity between
//! the native engine and the llama.cpp backend.

use std::path::Path;
use std::process::Command;

use edgelora::adapter::{read_gguf_lora, read_peft, write_gguf_lora, FactorDtype, GgufLoraDtype};
use edgelora::engine::{GenerateRequest, Prompt, SamplingParams};
use edgelora::gguf::GgufFile;
use edgelora::model::config::ModelConfig;
use edgelora::model::grad::{LoraParams, TrainModel};
use edgelora::train::data::{pack, parse_record, read_jsonl, tokenize, Example, Record, Sourced};
use edgelora::train::{parse_targets, StepMetrics, TrainConfig, Trainer};
use edgelora::{Error, TrainError};

use crate::common::{model_gguf, model_path, tiny_model, tmpdir};
#[cfg(feature = "llama")]
use crate::common::runtime;

fn edgelora_bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_edgelora"))
}

/// Synthetic examples for the tiny model (vocab 40): a learnable pattern.
fn tiny_examples(n: usize) -> Vec<Example> {
    (0..n)
        .map(|i| {
            let len = 4 + i % 5;
            let tokens: Vec<i32> = (0..len).map(|j| ((i * 7 + j * 3) % 40) as i32).collect();
            let trained = (0..len).map(|j| j >= 2).collect();
            Example { tokens, trained }
        })
        .collect()
}

fn tiny_config(steps: usize) -> TrainConfig {
    TrainConfig { rank: 4, alpha: 8.0, targets: parse_targets("all-linear").unwrap(), steps, batch: 3, lr: 1e-2, warmup_ratio: 0.2, ..TrainConfig::default() }
}

#[test]
fn record_formats_parse_and_bad_records_name_line_and_field() {
    let p = Path::new("data.jsonl");
    assert!(matches!(parse_record(r#"{"instruction":"i","input":"x","output":"o"}"#, p, 1).unwrap(), Record::Alpaca { .. }));
    assert!(matches!(parse_record(r#"{"instruction":"i","output":"o"}"#, p, 1).unwrap(), Record::Alpaca { .. }));
    assert!(matches!(parse_record(r#"{"prompt":"p","completion":"c"}"#, p, 1).unwrap(), Record::PromptCompletion { .. }));
    assert!(matches!(parse_record(r#"{"text":"t"}"#, p, 1).unwrap(), Record::Text(_)));
    assert!(matches!(parse_record(r#"{"messages":[{"role":"user","content":"a"},{"role":"assistant","content":"b"}]}"#, p, 1).unwrap(), Record::Messages(_)));
    for (text, field, what) in [
        (r#"{"instruction":"i","output":3}"#, "output", "expected a string, found a number"),
        (r#"{"instruction":"i"}"#, "output", "missing"),
        (r#"{"prompt":"p"}"#, "completion", "missing"),
        (r#"{"messages":[{"role":"user","content":"a"}]}"#, "messages", "no assistant message"),
        (r#"{"messages":[{"role":"bot","content":"a"}]}"#, "messages[0].role", "is not system, user or assistant"),
        (r#"{"messages":[{"role":"user"},{"role":"assistant","content":"b"}]}"#, "messages[0].content", "missing"),
        (r#"{"messages":"hi"}"#, "messages", "expected an array"),
        (r#"{"foo":1}"#, "<record>", "match no format"),
        (r#"[1,2]"#, "<json>", "expected an object"),
        (r#"{"text": "unterminated"#, "<json>", "not valid JSON"),
    ] {
        match parse_record(text, p, 7) {
            Err(Error::Train(TrainError::Record { line: 7, field: f, reason, .. })) => {
                assert_eq!(f, field, "{text}");
                assert!(reason.contains(what), "{text}: {reason}");
            }
            other => panic!("{text}: {other:?}"),
        }
    }
    let dir = tmpdir();
    let f = dir.path().join("d.jsonl");
    std::fs::write(&f, "{\"text\":\"a\"}\n\n{\"text\":5}\n").unwrap();
    let e = read_jsonl(&f).unwrap_err().to_string();
    assert!(e.contains("d.jsonl:3") && e.contains("\"text\""), "{e}");
    std::fs::write(&f, "\n").unwrap();
    assert!(read_jsonl(&f).unwrap_err().to_string().contains("no records"));
}

#[test]
fn chat_records_train_only_on_the_assistant_turn() {
    let vocab = edgelora::engine::Vocabulary::open(&model_path()).unwrap();
    assert_eq!(vocab.tokenizer_name(), "edgelora");
    let tok = edgelora::tokenizer::Tokenizer::from_gguf(model_gguf()).unwrap();
    let rt = &vocab;
    let p = Path::new("d.jsonl");
    let rec = |s: &str| Sourced { record: parse_record(s, p, 1).unwrap(), line: 1 };
    let ex = tokenize(rt, &rec(r#"{"instruction":"Say yes.","input":"","output":"yes"}"#), p, 512, false).unwrap();
    let trained: Vec<i32> = ex.tokens.iter().zip(&ex.trained).filter(|(_, &t)| t).map(|(&t, _)| t).collect();
    let text = tok.decode(&trained);
    assert_eq!(text.trim_end(), "yes<|im_end|>", "trained span: {text:?}");
    let full = tok.decode(&ex.tokens);
    assert!(full.contains("<|im_start|>user\nSay yes.<|im_end|>") && full.ends_with("<|im_start|>assistant\nyes<|im_end|>\n"), "{full:?}");
    // The model's Jinja template: SmolLM2's default system turn opens a chat without one.
    assert!(full.starts_with("<|im_start|>system\nYou are a helpful AI assistant named SmolLM"), "{full:?}");
    // messages: both assistant turns trained, the user turns not
    let ex = tokenize(rt, &rec(r#"{"messages":[{"role":"user","content":"hi"},{"role":"assistant","content":"A1"},{"role":"user","content":"again"},{"role":"assistant","content":"B2"}]}"#), p, 512, false).unwrap();
    let trained: Vec<i32> = ex.tokens.iter().zip(&ex.trained).filter(|(_, &t)| t).map(|(&t, _)| t).collect();
    let text = tok.decode(&trained);
    assert!(text.contains("A1") && text.contains("B2") && !text.contains("again") && !text.contains("hi"), "{text:?}");
    // prompt/completion: completion + EOS trained
    let ex = tokenize(rt, &rec(r#"{"prompt":"2+2=","completion":" 4"}"#), p, 512, false).unwrap();
    assert_eq!(ex.n_targets(), ex.trained.iter().filter(|&&t| t).count());
    assert!(!ex.trained[0]);
    // too short a max_len leaves nothing to learn: an error naming the line
    let e = tokenize(rt, &rec(r#"{"instruction":"Say yes please, in a long sentence.","output":"yes"}"#), p, 8, false).unwrap_err().to_string();
    assert!(e.contains("d.jsonl:1") && e.contains("max-len"), "{e}");
    // packing: targets are the next tokens where trained
    let b = pack(&[&ex, &ex]);
    assert_eq!(b.seq_lens, vec![ex.tokens.len() - 1; 2]);
    assert_eq!(b.n_targets(), 2 * ex.n_targets());
}

#[test]
fn step_zero_is_the_base_model_exactly() {
    let dir = tmpdir();
    let f = tiny_model(&dir.path().join("m.gguf"), "llama", 5);
    let t = Trainer::new(&f, tiny_config(4), tiny_examples(6), Vec::new(), "data".into()).unwrap();
    assert!(t.params.values().all(|p| p.b.iter().all(|&v| v == 0.0) && p.a.iter().any(|&v| v != 0.0)));
    let model = TrainModel::<f32>::new(&f, &ModelConfig::from_gguf(&f).unwrap()).unwrap();
    let ex = tiny_examples(4);
    let batch = pack(&ex.iter().collect::<Vec<_>>());
    let with = model.losses(&t.params, &batch, 4).unwrap();
    let without = model.losses(&LoraParams::new(), &batch, 4).unwrap();
    assert_eq!(with, without, "B = 0 must reproduce the base bit for bit");
}

#[test]
#[cfg(feature = "llama")]
fn step_zero_export_gives_the_base_logits_in_llama_cpp() {
    let base = model_gguf();
    let exs = vec![Example { tokens: vec![1, 2, 3, 4], trained: vec![false, true, true, true] }];
    let t = Trainer::new(base, TrainConfig { steps: 1, ..TrainConfig::default() }, exs, Vec::new(), "d".into()).unwrap();
    let a = t.to_adapter(base, serde_json::json!({})).unwrap();
    let dir = tmpdir();
    let path = dir.path().join("step0.gguf");
    write_gguf_lora(&a, &path, GgufLoraDtype::F16).unwrap();
    let rt = runtime();
    rt.load_adapter("s0", &path).unwrap();
    let toks = rt.tokenize(&Prompt::Text("The bank approves loans when".into())).unwrap();
    let base_logits = rt.logits(&toks, &[]).unwrap();
    let with = rt.logits(&toks, &[("s0".into(), 1.0)]).unwrap();
    assert_eq!(base_logits, with);
}

fn run_steps(t: &mut Trainer, n: usize) -> Vec<StepMetrics> {
    (0..n).map(|_| t.train_step().unwrap()).collect()
}

fn same_numbers(a: &[StepMetrics], b: &[StepMetrics]) {
    assert_eq!(a.len(), b.len());
    for (x, y) in a.iter().zip(b) {
        assert_eq!((x.step, x.loss, x.grad_norm, x.lr, x.tokens, x.targets), (y.step, y.loss, y.grad_norm, y.lr, y.tokens, y.targets));
    }
}

#[test]
fn training_is_deterministic_and_resume_repeats_the_uninterrupted_run() {
    let dir = tmpdir();
    let f = tiny_model(&dir.path().join("m.gguf"), "qwen2", 6);
    let cfg = tiny_config(8);
    let mut full = Trainer::new(&f, cfg.clone(), tiny_examples(7), Vec::new(), "fp".into()).unwrap();
    let all = run_steps(&mut full, 8);
    assert!(all[7].loss < all[0].loss, "the loss falls: {} → {}", all[0].loss, all[7].loss);
    // same seed, same run
    let mut again = Trainer::new(&f, cfg.clone(), tiny_examples(7), Vec::new(), "fp".into()).unwrap();
    same_numbers(&run_steps(&mut again, 8), &all);
    // 3 steps, checkpoint, a new process-worth of state, resume, 5 more
    let ck = dir.path().join("ck");
    let mut first = Trainer::new(&f, cfg.clone(), tiny_examples(7), Vec::new(), "fp".into()).unwrap();
    let head = run_steps(&mut first, 3);
    first.save_checkpoint(&ck).unwrap();
    drop(first);
    let mut resumed = Trainer::new(&f, cfg.clone(), tiny_examples(7), Vec::new(), "fp".into()).unwrap();
    resumed.resume(&ck).unwrap();
    assert_eq!(resumed.step, 3);
    let tail = run_steps(&mut resumed, 5);
    same_numbers(&[head, tail].concat(), &all);
    assert_eq!(resumed.params, full.params);
    // resume refuses other settings or data
    let mut other = Trainer::new(&f, TrainConfig { lr: 2e-2, ..cfg.clone() }, tiny_examples(7), Vec::new(), "fp".into()).unwrap();
    assert!(other.resume(&ck).unwrap_err().to_string().contains("training configuration"));
    let mut other = Trainer::new(&f, cfg, tiny_examples(7), Vec::new(), "other data".into()).unwrap();
    assert!(other.resume(&ck).unwrap_err().to_string().contains("training data"));
    // a damaged checkpoint is an error naming it
    std::fs::write(ck.join("checkpoint.safetensors"), b"garbage").unwrap();
    let e = other.resume(&ck).unwrap_err().to_string();
    assert!(e.contains("checkpoint.safetensors"), "{e}");
}

#[test]
fn gradient_accumulation_equals_one_big_batch() {
    let dir = tmpdir();
    let f = tiny_model(&dir.path().join("m.gguf"), "llama", 8);
    // 6 examples: batch 6 × 1 vs batch 3 × 2 (same examples per step, same order).
    let mut big = Trainer::new(&f, TrainConfig { batch: 6, grad_accum: 1, max_grad_norm: 0.0, ..tiny_config(3) }, tiny_examples(6), Vec::new(), "fp".into()).unwrap();
    let mut acc = Trainer::new(&f, TrainConfig { batch: 3, grad_accum: 2, max_grad_norm: 0.0, ..tiny_config(3) }, tiny_examples(6), Vec::new(), "fp".into()).unwrap();
    // The epoch order depends only on the seed and the example count, so both see the
    // same six examples per step; losses and updates agree to float rounding.
    for _ in 0..3 {
        let (a, b) = (big.train_step().unwrap(), acc.train_step().unwrap());
        assert_eq!((a.tokens, a.targets), (b.tokens, b.targets));
        assert!((a.loss - b.loss).abs() < 1e-6 * a.loss, "{} vs {}", a.loss, b.loss);
        assert!((a.grad_norm - b.grad_norm).abs() < 1e-4 * a.grad_norm, "{} vs {}", a.grad_norm, b.grad_norm);
    }
    for (name, p) in &big.params {
        for (x, y) in p.a.iter().chain(&p.b).zip(acc.params[name].a.iter().chain(&acc.params[name].b)) {
            assert!((x - y).abs() < 1e-4, "{name}: {x} vs {y}");
        }
    }
}

#[test]
fn bad_options_are_errors_naming_the_option() {
    assert!(parse_targets("q_proj,wq").unwrap_err().to_string().contains("--targets"));
    assert_eq!(parse_targets("q_proj,attn_v,q_proj").unwrap(), vec!["attn_q", "attn_v"]);
    assert_eq!(parse_targets("all-linear").unwrap().len(), 7);
    let dir = tmpdir();
    let f = tiny_model(&dir.path().join("m.gguf"), "llama", 1);
    for (cfg, opt) in [
        (TrainConfig { rank: 0, ..tiny_config(2) }, "--rank"),
        (TrainConfig { lr: -1.0, ..tiny_config(2) }, "--lr"),
        (TrainConfig { layers: Some((1, 5)), ..tiny_config(2) }, "--layers"),
        (TrainConfig { warmup_ratio: 1.5, ..tiny_config(2) }, "--warmup-ratio"),
    ] {
        let e = Trainer::new(&f, cfg, tiny_examples(3), Vec::new(), "d".into()).err().expect("an error").to_string();
        assert!(e.contains(opt), "{opt}: {e}");
    }
    let e = Trainer::new(&f, tiny_config(2), Vec::new(), Vec::new(), "d".into()).err().expect("an error").to_string();
    assert!(e.contains("no training examples"), "{e}");
    let short = vec![Example { tokens: vec![3], trained: vec![true] }];
    let e = Trainer::new(&f, tiny_config(2), short, Vec::new(), "d".into()).err().expect("an error").to_string();
    assert!(e.contains("fewer than 2 tokens"), "{e}");
}

/// `--precision bf16` trains (emulated where the CPU lacks AVX512-BF16, and says so) and
/// the adapter's manifest records it; `auto` resolves to what runs faster on this CPU (bf16
/// on AMX tiles); an unknown precision is a usage error; a resume in another precision is
/// refused (the checkpoint's configuration differs).
#[test]
fn precision_flag_trains_in_bf16_records_it_and_refuses_a_mixed_resume() {
    let dir = tmpdir();
    let data = write_data(dir.path(), 8);
    let train = |out: &Path, precision: &str, extra: &[&str]| {
        edgelora_bin()
            .args(["train", "--model", model_path().to_str().unwrap(), "--data", data.to_str().unwrap(), "--out", out.to_str().unwrap()])
            .args(["--steps", "2", "--batch", "2", "--rank", "2", "--max-len", "48", "-t", "2", "--precision", precision])
            .args(extra)
            .output()
            .unwrap()
    };
    let out = dir.path().join("bf16.gguf");
    let ck = dir.path().join("ck");
    let o = train(&out, "bf16", &["--checkpoint-dir", ck.to_str().unwrap()]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{err}");
    assert!(err.contains("precision: bf16") && err.contains(&edgelora::compute::bf16::describe()), "{err}");
    let hyper = read_gguf_lora(&GgufFile::open(&out).unwrap()).unwrap().manifest.hyperparameters.unwrap();
    assert_eq!(hyper["precision"], "bf16", "{hyper}");

    let o = train(&dir.path().join("f32.gguf"), "f32", &["--resume", ck.to_str().unwrap()]);
    assert!(!o.status.success(), "a bf16 checkpoint resumed in f32");
    assert!(String::from_utf8_lossy(&o.stderr).contains("configuration differs"), "{}", String::from_utf8_lossy(&o.stderr));

    let auto = dir.path().join("auto.gguf");
    let o = train(&auto, "auto", &[]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let hyper = read_gguf_lora(&GgufFile::open(&auto).unwrap()).unwrap().manifest.hyperparameters.unwrap();
    // f32 is the default and is not written; auto is never recorded unresolved.
    assert_eq!(hyper.get("precision").and_then(|v| v.as_str()), edgelora::compute::bf16::faster_than_f32().then_some("bf16"), "{hyper}");

    let o = train(&dir.path().join("x.gguf"), "fp8", &[]);
    assert_eq!(o.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&o.stderr).contains("possible values"), "{}", String::from_utf8_lossy(&o.stderr));
}

#[test]
fn layer_range_limits_the_trained_tensors() {
    let dir = tmpdir();
    let f = tiny_model(&dir.path().join("m.gguf"), "llama", 2);
    let mut t = Trainer::new(&f, TrainConfig { layers: Some((1, 1)), targets: parse_targets("v_proj").unwrap(), ..tiny_config(2) }, tiny_examples(4), Vec::new(), "d".into()).unwrap();
    assert_eq!(t.params.keys().collect::<Vec<_>>(), vec!["blk.1.attn_v.weight"]);
    let m = t.train_step().unwrap();
    assert!(m.grad_norm > 0.0);
}

/// Writes a small Alpaca data set: parity answers, or `constant` for every question.
fn write_data(dir: &Path, n: usize) -> std::path::PathBuf {
    write_data_answering(dir, n, None)
}

fn write_data_answering(dir: &Path, n: usize, constant: Option<&str>) -> std::path::PathBuf {
    let p = dir.join("train.jsonl");
    let lines: Vec<String> = (0..n)
        .map(|i| serde_json::json!({"instruction": format!("Is {i} even? One word."), "input": "", "output": constant.unwrap_or(if i % 2 == 0 { "even" } else { "odd" })}).to_string())
        .collect();
    std::fs::write(&p, lines.join("\n")).unwrap();
    p
}

fn metrics_lines(p: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(p).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).filter(|v: &serde_json::Value| v.get("loss").is_some()).collect()
}

fn numbers(v: &serde_json::Value) -> (u64, f64, f64, f64) {
    (v["step"].as_u64().unwrap(), v["loss"].as_f64().unwrap(), v["grad_norm"].as_f64().unwrap(), v["lr"].as_f64().unwrap())
}

#[test]
fn ctrl_c_saves_a_checkpoint_and_resume_continues_the_same_curve() {
    let dir = tmpdir();
    let data = write_data(dir.path(), 24);
    let model = model_path();
    let args = |out: &Path| -> Vec<String> {
        ["--model", model.to_str().unwrap(), "--data", data.to_str().unwrap(), "--out", out.to_str().unwrap(), "--steps", "10", "--batch", "2", "--rank", "4", "--max-len", "48", "-t", "1", "--save-every", "0", "--lr", "1e-3"].iter().map(|s| s.to_string()).collect()
    };
    // uninterrupted
    let full = dir.path().join("full.gguf");
    let out = edgelora_bin().arg("train").args(args(&full)).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let want = metrics_lines(&dir.path().join("full.gguf.metrics.jsonl"));
    assert_eq!(want.len(), 10);
    // interrupted by SIGINT after the second step
    let part = dir.path().join("part.gguf");
    let metrics = dir.path().join("part.gguf.metrics.jsonl");
    let child = edgelora_bin().arg("train").args(args(&part)).stdout(std::process::Stdio::null()).stderr(std::process::Stdio::piped()).spawn().unwrap();
    let t0 = std::time::Instant::now();
    while std::fs::read_to_string(&metrics).map(|s| s.lines().count()).unwrap_or(0) < 2 {
        assert!(t0.elapsed().as_secs() < 300, "no progress");
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    // SAFETY: signalling our own child process.
    unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
    let out = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(130), "{err}");
    assert!(err.contains("interrupted at step") && err.contains("--resume"), "{err}");
    assert!(!part.exists(), "no adapter is written by an interrupted run");
    let ck = dir.path().join("part.gguf.ckpt");
    assert!(ck.join("checkpoint.safetensors").exists());
    let stopped = metrics_lines(&metrics).len();
    assert!((2..10).contains(&stopped), "stopped after {stopped} steps");
    // resume: the curve continues exactly as the uninterrupted run's
    let out = edgelora_bin().arg("train").args(args(&part)).arg("--resume").arg(&ck).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let got = metrics_lines(&metrics);
    assert_eq!(got.iter().map(numbers).collect::<Vec<_>>(), want.iter().map(numbers).collect::<Vec<_>>());
    // both adapters are the same bytes but for the manifest's timing fields
    let (a, b) = (read_gguf_lora(&GgufFile::open(&full).unwrap()).unwrap(), read_gguf_lora(&GgufFile::open(&part).unwrap()).unwrap());
    assert_eq!(a.tensors, b.tensors);
}

#[test]
#[cfg(feature = "llama")]
fn exported_adapter_has_its_manifest_and_agrees_across_backends_and_formats() {
    let dir = tmpdir();
    // A constant answer the base never gives: the trained adapter must change the answer
    // clearly (no near-tie for llama.cpp's activation rounding to flip).
    let data = write_data_answering(dir.path(), 16, Some("banana"));
    let out = dir.path().join("a.gguf");
    let peft = dir.path().join("peft");
    let model = model_path();
    let o = edgelora_bin()
        .args(["train", "--model", model.to_str().unwrap(), "--data", data.to_str().unwrap(), "--val-split", "0.25", "--out", out.to_str().unwrap(), "--peft-out", peft.to_str().unwrap(), "--steps", "6", "--batch", "4", "--lr", "3e-3", "--targets", "all-linear", "--rank", "4", "-t", "1"])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let summary: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(summary["steps"], 6);
    assert!(summary["eval_loss_after"].as_f64().unwrap() < summary["eval_loss_before"].as_f64().unwrap());
    let base = model_gguf();
    let a = read_gguf_lora(&GgufFile::open(&out).unwrap()).unwrap();
    assert_eq!(a.tensors.len(), 30 * 7);
    assert!(a.tensors.values().all(|t| t.dtype == FactorDtype::F16 && t.rank == 4 && t.scale == 8.0));
    let m = &a.manifest;
    assert_eq!(m.base_fingerprint.as_deref(), Some(base.tensor_info_fingerprint().as_str()));
    assert_eq!(m.data_fingerprint.as_ref().map(String::len), Some(64));
    assert_eq!(m.hyperparameters.as_ref().unwrap()["rank"], 4);
    assert_eq!(m.training.as_ref().unwrap()["steps"], 6);
    assert!(m.training.as_ref().unwrap()["final_train_loss"].as_f64().unwrap() > 0.0);
    // PEFT export holds the same factors (q/k rows un-permuted and back)
    let p = read_peft(&peft, base).unwrap();
    assert_eq!(p.tensors, a.tensors);
    // same greedy answers on the native engine and the llama.cpp backend
    let rt = runtime();
    rt.load_adapter("t", &out).unwrap();
    let native = edgelora::engine::NativeRuntime::load(model_path(), edgelora::compute::Device::Cpu, 1).unwrap();
    native.load_adapter("t", &out).unwrap();
    for i in [1, 2, 7] {
        let mut req = GenerateRequest::new(Prompt::Chat(vec![edgelora::engine::ChatMessage::new("user", format!("Is {i} even? One word."))]));
        req.adapters = vec![("t".into(), 1.0)];
        req.sampling = SamplingParams { temperature: 0.0, ..SamplingParams::default() };
        req.max_tokens = 4;
        let (x, y) = (rt.generate(&req, &mut |_| true).unwrap(), native.generate(&req, &mut |_| true).unwrap());
        assert_eq!(x.text, y.text, "prompt {i}");
        assert!(x.text.to_lowercase().contains("banana"), "the adapter did not take: {:?}", x.text);
    }
}

#[test]
fn eval_command_scores_answers_and_loss() {
    let dir = tmpdir();
    let data = write_data(dir.path(), 4);
    let model = model_path();
    let o = edgelora_bin().args(["eval", "--model", model.to_str().unwrap(), "--data", data.to_str().unwrap(), "--metric", "first-word", "--max-tokens", "3", "-t", "1", "--answers"]).output().unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["n"], 4);
    let answers = v["answers"].as_array().unwrap();
    let correct = answers.iter().filter(|a| a["correct"].as_bool().unwrap()).count();
    assert_eq!(v["correct"].as_u64().unwrap() as usize, correct);
    let o = edgelora_bin().args(["eval", "--model", model.to_str().unwrap(), "--data", data.to_str().unwrap(), "--metric", "loss"]).output().unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let (loss, ppl) = (v["loss"].as_f64().unwrap(), v["perplexity"].as_f64().unwrap());
    assert!(loss > 0.0 && (ppl - loss.exp()).abs() < 1e-9 * ppl);
    let o = edgelora_bin().args(["eval", "--model", model.to_str().unwrap(), "--data", data.to_str().unwrap(), "--metric", "bleu"]).output().unwrap();
    assert_eq!(o.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&o.stderr).contains("--metric"));
}
