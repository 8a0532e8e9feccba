//! Mixed-adapter continuous batching: the batched forward (each row with its own adapter
//! set) against each sequence alone, and the scheduler (`engine::Batcher`) against
//! one-at-a-time generation: same answers, real batches, the KV pool's bounds, the prompt
//! cache's keying, cancellation.

use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::sync::Arc;
use std::time::Duration;

use edgelora::adapter::{read_peft, LoraAdapter};
use edgelora::compute::cpu::Cpu;
use edgelora::compute::Device;
use edgelora::engine::{argmax, BatchOptions, Batcher, CancelFlag, FnSink, GenerateRequest, Generation, NativeRuntime, Prompt, StopReason};
use edgelora::model::{BatchItem, NativeModel, Session};

use crate::common::{max_abs_diff, model_gguf, model_path};

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures").join(name)
}

#[test]
fn batched_forward_with_a_different_adapter_set_per_sequence_equals_each_alone() {
    let model = NativeModel::new(edgelora::gguf::GgufFile::open(model_path()).unwrap(), Box::new(Cpu)).unwrap();
    let rs = read_peft(&fixture("rslora_r8_all"), model_gguf()).unwrap();
    let seed = read_peft(&fixture("seed_r16_qv"), model_gguf()).unwrap();
    let prompt: &[i32] = &[1, 9690, 198, 2683, 359, 504, 3947, 9656, 327, 13759, 28, 744];
    // The same prompt under four sets (so a mix-up of rows and adapters shows), plus a
    // shorter prompt of its own; different lengths.
    let sets: Vec<Vec<(&LoraAdapter, f32)>> = vec![vec![], vec![(&rs, 1.0)], vec![(&seed, 1.0)], vec![(&rs, 0.5), (&seed, -0.7)], vec![(&seed, 1.0)]];
    let prompts: Vec<&[i32]> = vec![prompt, &prompt[..9], prompt, &prompt[..5], &[504, 3947, 9656]];
    let mut together: Vec<Session> = (0..5).map(|_| Session::default()).collect();
    let mut alone: Vec<Session> = (0..5).map(|_| Session::default()).collect();
    let check = |step: &str, got: &[Vec<Vec<f32>>], want: &[Vec<Vec<f32>>]| {
        for (i, (g, w)) in got.iter().zip(want).enumerate() {
            assert_eq!(g.len(), w.len(), "{step}: sequence {i} rows");
            for (gr, wr) in g.iter().zip(w) {
                // Alone and together the rows may take different kernels (≤ 8 rows: x
                // rounded to 16 bits per block; more: f32 GEMM): rounding only.
                let d = max_abs_diff(gr, wr);
                assert!(d < 2e-2, "{step}: sequence {i} differs from its own run by {d}");
                assert_eq!(argmax(gr), argmax(wr), "{step}: sequence {i}");
            }
        }
    };
    // Prefill: all five prompts in one forward (the first with every position's logits).
    let mut items: Vec<BatchItem> = together.iter_mut().zip(&prompts).zip(&sets).enumerate().map(|(i, ((s, p), a))| BatchItem { session: s, tokens: p, adapters: a, all_logits: i == 0 }).collect();
    let got = model.forward_batch(&mut items).unwrap();
    drop(items);
    let want: Vec<Vec<Vec<f32>>> = alone.iter_mut().zip(&prompts).zip(&sets).enumerate().map(|(i, ((s, p), a))| model.forward(s, p, a, i == 0).unwrap()).collect();
    assert_eq!(got[0].len(), prompt.len());
    check("prefill", &got, &want);
    // The adapter sets really differ on the same prompt (else this test could not see a mix-up).
    for (x, y) in [(0, 2), (1, 3)] {
        let (gx, gy) = (got[x].last().unwrap(), got[y].last().unwrap());
        if prompts[x] == prompts[y] {
            assert!(max_abs_diff(gx, gy) > 0.1, "sets {x} and {y} give the same logits");
        }
    }
    // Decode steps: one token each, one sequence reading two at once, one sitting out.
    for step in 0..3 {
        let feeds: Vec<Vec<i32>> = (0..5).map(|i| if i == 3 { vec![28 + step, 744] } else { vec![198 + step + i as i32] }).collect();
        let active: Vec<usize> = (0..5).filter(|&i| !(i == 4 && step == 1)).collect();
        let mut sess: Vec<(usize, &mut Session)> = together.iter_mut().enumerate().filter(|(i, _)| active.contains(i)).collect();
        let mut items: Vec<BatchItem> = sess.iter_mut().map(|(i, s)| BatchItem { session: s, tokens: &feeds[*i], adapters: &sets[*i], all_logits: false }).collect();
        let got = model.forward_batch(&mut items).unwrap();
        drop(items);
        let want: Vec<Vec<Vec<f32>>> = active.iter().map(|&i| model.forward(&mut alone[i], &feeds[i], &sets[i], false).unwrap()).collect();
        check(&format!("decode step {step}"), &got, &want);
    }
    for (t, a) in together.iter().zip(&alone) {
        assert_eq!(t.n_past(), a.n_past());
    }
    // Five sequences stepping together (≤ split_rows() rows: the integer kernels, four
    // inputs per call and one, where the CPU has them) give exactly their solo logits,
    // from the same caches (each prefilled alone twice).
    let four = &sets[..5];
    let prefill = |s: &mut Session, i: usize| {
        model.forward(s, prompts[i], &four[i], false).unwrap();
    };
    let mut together: Vec<Session> = (0..5).map(|_| Session::default()).collect();
    let mut alone: Vec<Session> = (0..5).map(|_| Session::default()).collect();
    for i in 0..5 {
        prefill(&mut together[i], i);
        prefill(&mut alone[i], i);
    }
    for step in 0..2 {
        let feeds: Vec<[i32; 1]> = (0..5).map(|i| [300 + step + 7 * i as i32]).collect();
        let mut items: Vec<BatchItem> = together.iter_mut().zip(&feeds).zip(four).map(|((s, f), a)| BatchItem { session: s, tokens: f, adapters: a, all_logits: false }).collect();
        let got = model.forward_batch(&mut items).unwrap();
        drop(items);
        for i in 0..5 {
            let want = model.forward(&mut alone[i], &feeds[i], &four[i], false).unwrap();
            let d = max_abs_diff(&got[i][0], &want[0]);
            if edgelora::quant::simd::split_dot4_kernel(edgelora::gguf::GgmlType::Q4_1).is_some() && 5 <= edgelora::compute::cpu::split_rows() {
                assert!(got[i] == want, "step {step}: sequence {i} of 5 differs from its solo run by {d}");
            } else {
                assert!(d < 2e-2, "step {step}: sequence {i} of 5: {d}");
            }
        }
    }
    // Twelve sequences decoding together — more rows than split_rows(): where the packed
    // kernels run (AVX512-VNNI), a step of decoding tokens alone takes them at any size,
    // and every row still gets exactly its solo logits; elsewhere the tiles (rounding only).
    let n = 12;
    let mut together: Vec<Session> = (0..n).map(|_| Session::default()).collect();
    let mut alone: Vec<Session> = (0..n).map(|_| Session::default()).collect();
    for i in 0..n {
        model.forward(&mut together[i], prompts[i % 5], &sets[i % 5], false).unwrap();
        model.forward(&mut alone[i], prompts[i % 5], &sets[i % 5], false).unwrap();
    }
    assert!(n > edgelora::compute::cpu::split_rows());
    for step in 0..2 {
        let feeds: Vec<[i32; 1]> = (0..n).map(|i| [400 + step + 3 * i as i32]).collect();
        let mut items: Vec<BatchItem> = together.iter_mut().zip(&feeds).enumerate().map(|(i, (s, f))| BatchItem { session: s, tokens: f, adapters: &sets[i % 5], all_logits: false }).collect();
        let got = model.forward_batch(&mut items).unwrap();
        drop(items);
        for i in 0..n {
            let want = model.forward(&mut alone[i], &feeds[i], &sets[i % 5], false).unwrap();
            let d = max_abs_diff(&got[i][0], &want[0]);
            if edgelora::compute::packed::available() {
                assert!(got[i] == want, "step {step}: sequence {i} of {n} differs from its solo run by {d}");
            } else {
                assert!(d < 2e-2 && argmax(&got[i][0]) == argmax(&want[0]), "step {step}: sequence {i} of {n}: {d}");
            }
        }
    }
    // A bad token in any item is refused naming it; nothing runs.
    let mut s = Session::default();
    let mut items = [BatchItem { session: &mut s, tokens: &[1, 1 << 30], adapters: &[], all_logits: false }];
    let e = model.forward_batch(&mut items).err().expect("bad token accepted").to_string();
    assert!(e.contains("outside the vocabulary"), "{e}");
}

fn runtime_with_adapters() -> Arc<NativeRuntime> {
    let rt = NativeRuntime::load(model_path(), Device::Cpu, 1).unwrap();
    rt.load_adapter("rs", fixture("rslora_r8_all")).unwrap();
    rt.load_adapter("seed", fixture("seed_r16_qv")).unwrap();
    Arc::new(rt)
}

fn request(prompt: &str, adapters: &[(&str, f32)], max_tokens: usize) -> GenerateRequest {
    let mut r = GenerateRequest::new(Prompt::Text(prompt.into()));
    r.adapters = adapters.iter().map(|(n, s)| (n.to_string(), *s)).collect();
    r.max_tokens = max_tokens;
    r
}

type Outcome = (String, edgelora::Result<Generation>);

/// Submits `req`; its streamed text and its end come back on the receiver.
fn submit(b: &Batcher, req: GenerateRequest) -> mpsc::Receiver<Outcome> {
    let (tx, rx) = mpsc::channel();
    let streamed = Arc::new(std::sync::Mutex::new(String::new()));
    let s2 = streamed.clone();
    b.submit(
        req,
        Box::new(FnSink {
            text: move |p: &str| {
                s2.lock().unwrap().push_str(p);
                true
            },
            done: move |r| {
                let text = streamed.lock().unwrap().clone();
                let _ = tx.send((text, r));
            },
        }),
    )
    .unwrap();
    rx
}

fn wait(rx: &mpsc::Receiver<Outcome>) -> (String, Generation) {
    let (text, r) = rx.recv_timeout(Duration::from_secs(300)).expect("the batcher answered within 5 minutes");
    (text, r.unwrap())
}

#[test]
fn batcher_answers_mixed_adapter_requests_as_each_alone_in_shared_steps() {
    let rt = runtime_with_adapters();
    let reqs = vec![
        request("The capital of France is", &[], 12),
        request("The capital of France is", &[("rs", 1.0)], 12),
        request("Write a haiku about the sea.", &[("seed", 1.0)], 16),
        request("List three prime numbers:", &[("rs", 0.5), ("seed", 0.5)], 10),
        request("Once upon a time, in a small village by the mountains, there lived an old clockmaker who", &[("seed", 1.0)], 14),
    ];
    let alone: Vec<Generation> = reqs.iter().map(|r| rt.generate(r, &mut |_| true).unwrap()).collect();
    let b = Batcher::start(rt.clone(), BatchOptions { max_batch: 8, prefill_chunk: 16, ..BatchOptions::default() }).unwrap();
    let rxs: Vec<_> = reqs.iter().map(|r| submit(&b, r.clone())).collect();
    for (i, (rx, want)) in rxs.iter().zip(&alone).enumerate() {
        let (streamed, got) = wait(rx);
        assert_eq!(got.tokens, want.tokens, "request {i}: batched tokens differ from its run alone");
        assert_eq!(got.text, want.text, "request {i}");
        assert_eq!(streamed, got.text, "request {i}: the streamed pieces make the text");
        assert_eq!(got.stop_reason, want.stop_reason, "request {i}");
        assert_eq!(got.n_prompt, want.n_prompt);
    }
    assert_ne!(alone[0].tokens, alone[1].tokens, "the adapter changes the answer (else the test sees no mix-up)");
    let st = &b.stats;
    let (steps, seqs, rows) = (st.steps.load(SeqCst), st.sequences.load(SeqCst), st.rows.load(SeqCst));
    // Five requests submitted at once run together: far fewer steps than their tokens.
    assert!(seqs as f64 / steps as f64 > 2.0, "mean batch {seqs}/{steps}: the requests did not share steps");
    // The 16-token chunk budget splits the prompts (the longest is over 16 tokens).
    assert!(rows > 0 && steps > 14, "{steps} steps, {rows} rows");
    assert_eq!(st.running.load(SeqCst), 0);
    assert_eq!(st.waiting.load(SeqCst), 0);

    // The prompt cache: the same prompt and set again reuses the prefix; another set does not.
    let (_, again) = wait(&submit(&b, request("The capital of France is", &[("rs", 1.0)], 12)));
    assert!(again.n_prompt_cached > 0, "same prompt and adapter set: the cached prefix is reused");
    assert_eq!(again.tokens, alone[1].tokens);
    let (_, other) = wait(&submit(&b, request("The capital of France is", &[("rs", 0.9)], 12)));
    assert_eq!(other.n_prompt_cached, 0, "another scale is another adapter set: no reuse");
    b.shutdown();
}

use std::sync::atomic::Ordering::SeqCst;

#[test]
fn batcher_bounds_its_kv_pool_and_cancels() {
    let rt = runtime_with_adapters();
    let per = {
        let c = &NativeModel::new(edgelora::gguf::GgufFile::open(model_path()).unwrap(), Box::new(Cpu)).unwrap().config;
        c.n_layer * 2 * c.n_head_kv * c.head_dim * 4
    };
    // Room for one request of ~40 positions at a time.
    let b = Batcher::start(rt.clone(), BatchOptions { max_batch: 4, kv_memory_bytes: 48 * per, prefill_chunk: 64, n_ctx: 512 }).unwrap();
    assert_eq!(b.bytes_per_position(), per);
    // Beyond the whole pool: refused at once, naming the pool.
    let (tx, _rx) = mpsc::channel::<()>();
    let e = b.submit(request("Hello", &[], 100), Box::new(FnSink { text: |_: &str| true, done: move |_| drop(tx) })).err().expect("over the pool accepted").to_string();
    assert!(e.contains("KV cache") && e.contains("--kv-memory-mb"), "{e}");
    // An unknown adapter is refused at submit.
    let e = b.submit(request("Hello", &[("nope", 1.0)], 4), Box::new(FnSink { text: |_: &str| true, done: |_| {} })).err().expect("unknown adapter accepted").to_string();
    assert!(e.contains("nope"), "{e}");
    // Two that fit only one at a time: both finish, as alone, never together.
    let reqs = [request("The capital of France is", &[("rs", 1.0)], 20), request("Two plus two is", &[("seed", 1.0)], 20)];
    let rxs: Vec<_> = reqs.iter().map(|r| submit(&b, r.clone())).collect();
    for (rx, r) in rxs.iter().zip(&reqs) {
        let (_, got) = wait(rx);
        assert_eq!(got.tokens, rt.generate(r, &mut |_| true).unwrap().tokens);
    }
    assert_eq!(b.stats.sequences.load(SeqCst), b.stats.steps.load(SeqCst), "the pool held one sequence at a time");
    assert!(b.stats.kv_used.load(SeqCst) <= 48 * per);

    // Cancelled from outside after its first piece: it stops, cancelled, early.
    let cancel = CancelFlag::new();
    let mut r = request("Count from one to one hundred:", &[], 30);
    r.ignore_eog = true;
    r.cancel = Some(cancel.clone());
    let (tx, rx) = mpsc::channel();
    b.submit(
        r,
        Box::new(FnSink {
            text: move |_: &str| {
                cancel.cancel();
                true
            },
            done: move |g| {
                let _ = tx.send(g);
            },
        }),
    )
    .unwrap();
    let g = rx.recv_timeout(Duration::from_secs(300)).unwrap().unwrap();
    assert_eq!(g.stop_reason, StopReason::Cancelled);
    assert!(g.tokens.len() < 30, "{} tokens after cancelling", g.tokens.len());
    b.shutdown();
    // After shutdown: refused.
    assert!(b.submit(request("Hi", &[], 2), Box::new(FnSink { text: |_: &str| true, done: |_| {} })).is_err());
}

#[test]
fn bench_batch_reports_every_batch_size() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_edgelora"))
        .args(["bench", "batch", "-t", "1", "--batch", "1,3", "--steps", "1", "--rank", "4", "--json", "--model"])
        .arg(model_path())
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let rows = v["rows"].as_array().unwrap();
    assert_eq!(rows.iter().map(|r| r["batch"].as_u64().unwrap()).collect::<Vec<_>>(), vec![1, 3]);
    assert!(rows.iter().all(|r| r["aggregate_tok_s"].as_f64().unwrap() > 0.0));
    assert_eq!(rows[0]["vs_batch_1"].as_f64(), Some(1.0));
    // --device gpu (lavapipe where there is no GPU), on a tiny fixture model.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_edgelora"))
        .args(["bench", "batch", "--device", "gpu", "--batch", "1,4", "--steps", "2", "--rank", "4", "--json", "--model"])
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/arch/qwen3/model.f32.gguf"))
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(v["device"].as_str().unwrap().starts_with("gpu (whole forward)"), "{v}");
    assert_eq!(v["rows"].as_array().unwrap().iter().map(|r| r["batch"].as_u64().unwrap()).collect::<Vec<_>>(), vec![1, 4]);
}
