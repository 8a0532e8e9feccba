//! Continual learning: `--init-adapter` starts exactly at the parent (step 0 = its
//! logits/loss, its factors exported unchanged), conflicting LoRA flags are refused, the
//! manifest records the lineage (round, parent, new and replayed data) that `adapter
//! history` follows and `inspect` shows; --init-optimizer keeps the moments.

use std::process::Command;

use edgelora::adapter::{history, read_gguf_lora, write_gguf_lora, GgufLoraDtype, HistoryEnd};
use edgelora::gguf::GgufFile;
use edgelora::train::eval::loss;
use edgelora::train::{parse_targets, TrainConfig, Trainer};
use serde_json::Value;

use crate::common::{model_path, tiny_model, tmpdir};

fn edgelora(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_edgelora")).args(args).output().expect("run edgelora")
}

fn examples(n: usize) -> Vec<edgelora::train::data::Example> {
    (0..n)
        .map(|i| {
            let len = 4 + i % 5;
            edgelora::train::data::Example { tokens: (0..len).map(|j| ((i * 7 + j * 3) % 40) as i32).collect(), trained: (0..len).map(|j| j >= 2).collect() }
        })
        .collect()
}

fn config(steps: usize) -> TrainConfig {
    TrainConfig { rank: 4, alpha: 8.0, targets: parse_targets("all-linear").unwrap(), steps, batch: 3, lr: 1e-2, warmup_ratio: 0.0, ..TrainConfig::default() }
}

#[test]
fn a_continued_run_starts_exactly_at_its_parent() {
    let dir = tmpdir();
    let base = tiny_model(&dir.path().join("tiny.gguf"), "llama", 3);
    // A parent trained for a few steps, exported (f16) and read back as a file would be.
    let mut t = Trainer::new(&base, config(4), examples(9), Vec::new(), "d".into()).unwrap();
    t.run(&std::sync::atomic::AtomicBool::new(false), None, 0, &mut |_| {}).unwrap();
    let p = dir.path().join("parent.gguf");
    write_gguf_lora(&t.to_adapter(&base, serde_json::json!({})).unwrap(), &p, GgufLoraDtype::F16).unwrap();
    let parent = read_gguf_lora(&GgufFile::open(&p).unwrap()).unwrap();

    let mut child = Trainer::new(&base, config(2), examples(6), examples(5), "d2".into()).unwrap();
    let fresh_loss = child.eval_loss().unwrap().unwrap();
    child.init_from(&parent).unwrap();
    // Step 0: the same loss as evaluating the parent itself, and not the fresh one's.
    let at_zero = child.eval_loss().unwrap().unwrap();
    // Same packing as the trainer (batch 3): the same numbers in the same order.
    let parent_loss = loss(&base, &[(&parent, 1.0)], &examples(5), 3).unwrap().loss;
    assert_eq!(at_zero, parent_loss, "step 0 of a continuation is the parent exactly");
    assert_ne!(at_zero, fresh_loss);
    // Exported at step 0, the factors are the parent's bit for bit.
    let again = child.to_adapter(&base, serde_json::json!({})).unwrap();
    for (name, t) in &parent.tensors {
        assert_eq!(again.tensors[name].a, t.a, "{name} A");
        assert_eq!(again.tensors[name].b, t.b, "{name} B");
    }
    assert_eq!(again.fingerprint(), parent.fingerprint());
    assert_eq!(child.config.init_fingerprint.as_deref(), Some(parent.fingerprint().as_str()));

    // A run whose rank or targets differ cannot start from it.
    let mut other = Trainer::new(&base, TrainConfig { rank: 2, ..config(2) }, examples(6), Vec::new(), "d".into()).unwrap();
    let e = other.init_from(&parent).unwrap_err().to_string();
    assert!(e.contains("--init-adapter") && e.contains("rank 4") && e.contains("rank 2"), "{e}");
    let mut other = Trainer::new(&base, TrainConfig { targets: parse_targets("q_proj").unwrap(), ..config(2) }, examples(6), Vec::new(), "d".into()).unwrap();
    let e = other.init_from(&parent).unwrap_err().to_string();
    assert!(e.contains("missing") && e.contains("extra"), "{e}");
    let mut other = Trainer::new(&base, TrainConfig { alpha: 16.0, ..config(2) }, examples(6), Vec::new(), "d".into()).unwrap();
    assert!(other.init_from(&parent).unwrap_err().to_string().contains("scale"));
}

#[test]
fn continue_with_replay_records_the_lineage_that_history_follows() {
    let dir = tmpdir();
    let d = dir.path();
    let ask = "Decide on this loan application. Answer with one word: approve or reject.";
    let write = |name: &str, rows: &[(&str, &str)]| {
        let text: String = rows.iter().map(|(i, o)| serde_json::json!({"instruction": ask, "input": i, "output": o}).to_string() + "\n").collect();
        std::fs::write(d.join(name), text).unwrap();
        d.join(name).to_str().unwrap().to_string()
    };
    let old = write("old.jsonl", &[("Credit score: 700", "approve"), ("Credit score: 600", "reject"), ("Credit score: 810", "approve"), ("Credit score: 590", "reject")]);
    let new = write("new.jsonl", &[("Credit score: 660, debt 50%", "reject"), ("Credit score: 720, debt 10%", "approve"), ("Credit score: 655, debt 45%", "reject")]);
    let m = model_path();
    let m = m.to_str().unwrap();
    let v1 = d.join("v1.gguf");
    let v2 = d.join("v2.gguf");
    let common = ["-m", m, "--steps", "2", "--batch", "2", "-t", "1", "--max-len", "64"];
    let train = |extra: &[&str]| edgelora(&["train"].iter().chain(&common).chain(extra).copied().collect::<Vec<_>>());

    let out = train(&["--data", &old, "--out", v1.to_str().unwrap(), "--rank", "4", "--alpha", "8", "--targets", "q_proj,v_proj"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let out = train(&["--data", &new, "--replay", &format!("{old}:0.5"), "--init-adapter", v1.to_str().unwrap(), "--out", v2.to_str().unwrap()]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(err.contains("continuing") && err.contains("rank 4, alpha 8"), "{err}");
    assert!(err.contains("--replay: 4 earlier examples, 3 drawn per epoch (50% of every batch)"), "{err}");
    let summary: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(summary["round"], 2);

    // The lineage: round 2, parent v1 (by file hash), new and replayed data.
    let (chain, end) = history(&v2, &[]).unwrap();
    assert_eq!(end, HistoryEnd::Root);
    assert_eq!(chain.len(), 2);
    assert_eq!(chain[1].path.file_name().unwrap(), "v1.gguf");
    let l2 = chain[0].manifest.lineage.clone().unwrap();
    assert_eq!(l2.round, 2);
    assert_eq!(l2.data.iter().map(|x| (x.role.as_str(), x.fraction)).collect::<Vec<_>>(), [("new", None), ("replay", Some(0.5))]);
    assert_eq!(l2.parent.as_ref().unwrap().file_sha256, edgelora::adapter::file_sha256(&v1).unwrap());
    assert_eq!(chain[1].manifest.lineage.as_ref().unwrap().round, 1);
    let parent_fp = read_gguf_lora(&GgufFile::open(&v1).unwrap()).unwrap().fingerprint();
    assert_eq!(l2.parent.unwrap().fingerprint, parent_fp);
    // The same continued from the same data and seed is the same adapter (replay is deterministic).
    let v2b = d.join("v2b.gguf");
    assert!(train(&["--data", &new, "--replay", &format!("{old}:0.5"), "--init-adapter", v1.to_str().unwrap(), "--out", v2b.to_str().unwrap()]).status.success());
    let fp = |p: &std::path::Path| read_gguf_lora(&GgufFile::open(p).unwrap()).unwrap().fingerprint();
    assert_eq!(fp(&v2), fp(&v2b));

    // The CLI prints the chain; inspect names the parent.
    let out = edgelora(&["adapter", "history", v2.to_str().unwrap()]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success() && text.contains("round 2") && text.contains("↑ round 1") && text.contains("no parent"), "{text}");
    let out = edgelora(&["inspect", v2.to_str().unwrap()]);
    assert!(String::from_utf8_lossy(&out.stdout).contains("lineage: round 2, parent"));

    // Moved away from its child, the parent is found again through --store.
    let store = d.join("store");
    std::fs::create_dir(&store).unwrap();
    let moved = d.join("elsewhere");
    std::fs::create_dir(&moved).unwrap();
    std::fs::rename(&v2, moved.join("v2.gguf")).unwrap();
    std::fs::rename(&v1, store.join("renamed-v1.gguf")).unwrap();
    let (chain, end) = history(&moved.join("v2.gguf"), &[]).unwrap();
    assert!(matches!(end, HistoryEnd::ParentNotFound { .. }) && chain.len() == 1, "{end:?}");
    let (chain, end) = history(&moved.join("v2.gguf"), &[store.clone()]).unwrap();
    assert_eq!((chain.len(), end), (2, HistoryEnd::Root));
    assert_eq!(chain[1].path, store.join("renamed-v1.gguf"));

    // Conflicting flags are refused, naming them.
    let v1s = store.join("renamed-v1.gguf");
    for (flag, value, needle) in [("--rank", "8", "--rank 8 conflicts"), ("--targets", "all-linear", "--targets all-linear conflicts"), ("--alpha", "16", "--alpha 16 conflicts"), ("--layers", "0-3", "--layers 0-3 conflicts")] {
        let out = train(&["--data", &new, "--init-adapter", v1s.to_str().unwrap(), "--out", d.join("x.gguf").to_str().unwrap(), flag, value]);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{flag}: {err}");
        assert!(err.contains(needle) && err.contains("drop"), "{flag}: {err}");
    }
    // --init-optimizer needs --init-adapter; a replay fraction outside (0, 1) is refused.
    let out = train(&["--data", &new, "--init-optimizer", d.to_str().unwrap(), "--out", d.join("x.gguf").to_str().unwrap()]);
    assert_ne!(out.status.code(), Some(0));
    let out = train(&["--data", &new, "--replay", &format!("{old}:1.5"), "--out", d.join("x.gguf").to_str().unwrap()]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("must be in (0, 1)"));
}

#[test]
fn init_optimizer_keeps_the_moments_of_a_checkpoint() {
    let dir = tmpdir();
    let base = tiny_model(&dir.path().join("tiny.gguf"), "llama", 5);
    let ck = dir.path().join("ck");
    let mut t = Trainer::new(&base, config(3), examples(9), Vec::new(), "d".into()).unwrap();
    t.run(&std::sync::atomic::AtomicBool::new(false), Some(&ck), 0, &mut |_| {}).unwrap();
    let parent = read_back(&base, &t, dir.path());
    // Same parent, fresh vs kept moments: the first step differs.
    let step = |keep: bool| {
        let mut c = Trainer::new(&base, config(1), examples(6), Vec::new(), "d".into()).unwrap();
        c.init_from(&parent).unwrap();
        if keep {
            c.init_optimizer(&ck).unwrap();
        }
        c.train_step().unwrap();
        c.params.values().next().unwrap().b.clone()
    };
    assert_ne!(step(false), step(true));
    // A checkpoint of other tensors is refused, naming it.
    let mut c = Trainer::new(&base, TrainConfig { targets: parse_targets("q_proj").unwrap(), ..config(1) }, examples(6), Vec::new(), "d".into()).unwrap();
    let e = c.init_optimizer(&ck).unwrap_err().to_string();
    assert!(e.contains("checkpoint") && e.contains("do not match"), "{e}");
}

fn read_back(base: &GgufFile, t: &Trainer, dir: &std::path::Path) -> edgelora::adapter::LoraAdapter {
    let p = dir.join("p.gguf");
    write_gguf_lora(&t.to_adapter(base, serde_json::json!({})).unwrap(), &p, GgufLoraDtype::F16).unwrap();
    read_gguf_lora(&GgufFile::open(&p).unwrap()).unwrap()
}
