//! `edgelora data stats` and `train --dedup / --balance`: a file with duplicates, a
//! contradiction and over-long records gets each reported; the balance shares and the
//! dedup count reach train's stderr; bad --balance values are errors naming them.

use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::{json, Value};

use crate::common::{model_path, tmpdir};

fn edgelora(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_edgelora")).args(args).output().expect("run edgelora")
}

const ASK: &str = "Decide on this loan application. Answer with one word: approve or reject.";

fn write(dir: &Path, name: &str, records: &[Value]) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, records.iter().map(|r| r.to_string() + "\n").collect::<String>()).unwrap();
    p
}

fn messy(dir: &Path) -> PathBuf {
    write(
        dir,
        "messy.jsonl",
        &[
            json!({"instruction": ASK, "input": "Credit score: 700", "output": "approve", "scenario": "loans"}),
            json!({"instruction": ASK, "input": "Credit score: 700", "output": "approve", "scenario": "loans"}),
            json!({"instruction": ASK, "input": "credit score 700!", "output": "Approve.", "scenario": "loans"}),
            json!({"instruction": ASK, "input": "Credit score: 600", "output": "reject", "scenario": "cards"}),
            json!({"instruction": ASK, "input": "Credit score: 600", "output": "approve", "scenario": "cards"}),
            json!({"prompt": format!("Q: {}\nA:", "word ".repeat(300)), "completion": " reject"}),
            json!({"messages": [{"role": "user", "content": "hello"}, {"role": "assistant", "content": format!("approve {}", "x ".repeat(300))}]}),
        ],
    )
}

#[test]
fn data_stats_reports_duplicates_contradictions_and_long_records() {
    let dir = tmpdir();
    let f = messy(dir.path());
    let m = model_path();
    let out = edgelora(&["data", "stats", f.to_str().unwrap(), "-m", m.to_str().unwrap(), "--max-len", "128", "--json"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let r: Value = serde_json::from_slice(&out.stdout).unwrap();
    let at = |line: usize| format!("{}:{line}", f.display());
    assert_eq!(r["records"], 7);
    assert_eq!(r["formats"], json!({"alpaca": 5, "messages": 1, "prompt-completion": 1}));
    assert_eq!(r["scenarios"], json!({"<none>": 2, "cards": 2, "loans": 3}));
    assert_eq!(r["labels"]["approve"], 4);
    assert_eq!(r["labels"]["reject"], 2);
    assert_eq!(r["exact_duplicates"], json!([[at(1), at(2)]]));
    assert_eq!(r["near_duplicates"], json!([[at(1), at(2), at(3)]]));
    assert_eq!(r["contradictions"].as_array().unwrap().len(), 1, "{}", r["contradictions"]);
    assert_eq!(r["contradictions"][0]["answers"], json!([[at(4), "reject"], [at(5), "approve"]]));
    let over = r["over_max_len"].as_array().unwrap();
    assert_eq!(over.len(), 2, "{over:?}");
    assert_eq!((over[0]["at"].as_str().unwrap(), over[0]["outcome"].as_str().unwrap()), (at(6).as_str(), "refused"));
    assert_eq!((over[1]["at"].as_str().unwrap(), over[1]["outcome"].as_str().unwrap()), (at(7).as_str(), "truncated"));
    assert!(over.iter().all(|o| o["tokens"].as_u64().unwrap() > 128));
    let t = &r["tokens"];
    assert!(t["min"].as_u64().unwrap() <= t["p50"].as_f64().unwrap() as u64 && t["p95"].as_f64().unwrap() <= t["max"].as_f64().unwrap());

    // Without a model: the same report minus the token figures.
    let out = edgelora(&["data", "stats", f.to_str().unwrap(), "-m", "none"]);
    assert!(out.status.success());
    let r2: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(r2["tokens"].is_null() && r2["over_max_len"] == json!([]));
    assert_eq!(r2["contradictions"], r["contradictions"]);
    let summary = String::from_utf8_lossy(&out.stderr);
    assert!(summary.contains("1 contradicting inputs") && summary.contains("1 exact"), "{summary}");
}

#[test]
fn train_dedups_balances_and_refuses_bad_ratios() {
    let dir = tmpdir();
    let mut records = vec![json!({"instruction": ASK, "input": "Credit score: 700", "output": "approve"}); 3];
    records.push(json!({"instruction": ASK, "input": "Credit score: 710", "output": "approve"}));
    records.push(json!({"instruction": ASK, "input": "Credit score: 600", "output": "reject"}));
    let data = write(dir.path(), "train.jsonl", &records);
    let out_path = dir.path().join("a.gguf");
    let m = model_path();
    let base = ["train", "-m", m.to_str().unwrap(), "--data", data.to_str().unwrap(), "--out", out_path.to_str().unwrap(), "--steps", "1", "--batch", "2", "-t", "1", "--max-len", "64"];
    let run = |extra: &[&str]| edgelora(&base.iter().chain(extra).copied().collect::<Vec<_>>());

    let out = run(&["--dedup", "--balance", "label=approve:3,reject:1"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(err.contains("data: 5 records") && err.contains("2 exact"), "{err}");
    assert!(err.contains("--dedup: dropped 2 duplicate records, 3 remain"), "{err}");
    assert!(err.contains("--balance: approve 75.0%, reject 25.0%"), "{err}");
    assert!(out_path.exists());

    for (flag, needle) in [("label=approve:1,maybe:2", "\"maybe\" is not one of the groups"), ("label=1:2:3", "3 weights for 2 groups"), ("colour", "\"colour\" is not label or scenario"), ("label=approve:-1,reject:1", "must be finite, ≥ 0")] {
        let out = run(&["--balance", flag]);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "--balance {flag}: {err}");
        assert!(err.contains(needle), "--balance {flag}: {err}");
    }
}

#[test]
fn train_with_edgelora_profile_prints_where_the_run_went() {
    let dir = tmpdir();
    let records: Vec<Value> = (0..4).map(|i| json!({"instruction": ASK, "input": format!("Credit score: {}", 600 + 40 * i), "output": if i > 1 { "approve" } else { "reject" }})).collect();
    let data = write(dir.path(), "train.jsonl", &records);
    let out_path = dir.path().join("p.gguf");
    let m = model_path();
    let args = ["train", "-m", m.to_str().unwrap(), "--data", data.to_str().unwrap(), "--out", out_path.to_str().unwrap(), "--steps", "2", "--batch", "2", "-t", "1", "--max-len", "64"];
    let out = Command::new(env!("CARGO_BIN_EXE_edgelora")).args(args).env("EDGELORA_PROFILE", "1").output().expect("run edgelora");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    let table = err.split("profile (EDGELORA_PROFILE=1)").nth(1).unwrap_or_else(|| panic!("no profile table: {err}"));
    // 2 steps × 30 layers × 7 projections, forward and backward; the head once per step each way.
    for (op, calls) in [("train forward: linear (base + LoRA)", 420), ("train backward: linear (dx, LoRA grads)", 420), ("train: output head + cross-entropy", 4)] {
        let row = table.lines().find(|l| l.starts_with(&format!("| {op} |"))).unwrap_or_else(|| panic!("no row {op}: {table}"));
        let cells: Vec<&str> = row.split('|').map(str::trim).collect();
        assert_eq!(cells[3], calls.to_string(), "{row}");
        assert!(cells[2].parse::<f64>().unwrap() > 0.0, "{row}");
    }
    // Without the variable: no table.
    let quiet = edgelora(&args);
    assert!(quiet.status.success() && !String::from_utf8_lossy(&quiet.stderr).contains("profile ("));
}
