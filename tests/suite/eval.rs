//! `edgelora eval` on the default model: classification metrics from the label words'
//! probabilities, `--by FIELD`, `--compare A B` (paired bootstrap, McNemar), and the
//! errors of each. The metrics' arithmetic is checked on hand-computed cases in
//! `src/train/metrics.rs`; here: that the CLI wires real model scores into it consistently.

use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;

use crate::common::{model_path, tmpdir};

fn edgelora(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_edgelora")).args(args).output().expect("run edgelora")
}

fn json_of(args: &[&str]) -> Value {
    let out = edgelora(args);
    assert!(out.status.success(), "edgelora {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).expect("eval prints JSON")
}

/// Six credit decisions (Alpaca records with a `scenario` field, two scenarios).
fn credit_data(dir: &Path) -> PathBuf {
    let rows = [(700, 0, "approve"), (600, 0, "reject"), (800, 1, "reject"), (720, 0, "approve"), (550, 2, "reject"), (690, 0, "approve")];
    let text: String = rows
        .iter()
        .enumerate()
        .map(|(i, (score, defaults, label))| {
            serde_json::json!({
                "instruction": "Decide on this loan application. Answer with one word: approve or reject.",
                "input": format!("Credit score: {score}\nPrior defaults: {defaults}"),
                "output": label,
                "scenario": if i % 3 == 0 { "cards" } else { "loans" },
            })
            .to_string()
                + "\n"
        })
        .collect();
    let p = dir.join("credit.jsonl");
    std::fs::write(&p, text).unwrap();
    p
}

fn f(v: &Value) -> f64 {
    v.as_f64().unwrap_or_else(|| panic!("{v} is not a number"))
}

#[test]
fn classification_reports_consistent_metrics_from_the_label_probabilities() {
    let dir = tmpdir();
    let data = credit_data(dir.path());
    let m = model_path();
    let (m, data) = (m.to_str().unwrap(), data.to_str().unwrap());
    let r = json_of(&["eval", "-m", m, "-t", "1", "--data", data, "--metric", "classification", "--answers", "--by", "scenario", "--json"]);
    assert_eq!(r["metric"], "classification");
    let labels: Vec<&str> = r["labels"].as_array().unwrap().iter().map(|l| l["label"].as_str().unwrap()).collect();
    assert_eq!(labels, ["approve", "reject"], "labels default to the answers' sorted first words");
    let tokens: Vec<i64> = r["label_tokens"].as_array().unwrap().iter().map(|t| t["token"].as_i64().unwrap()).collect();
    assert_ne!(tokens[0], tokens[1]);

    // Every record: scores sum to 1, the prediction is their argmax, correct = (predicted == expected).
    let records = r["records"].as_array().unwrap();
    assert_eq!(records.len(), 6);
    let mut correct = 0;
    for rec in records {
        let s: Vec<f64> = rec["scores"].as_array().unwrap().iter().map(f).collect();
        assert!((s.iter().sum::<f64>() - 1.0).abs() < 1e-9, "{rec}");
        let arg = if s[1] > s[0] { 1 } else { 0 };
        assert_eq!(rec["predicted"], labels[arg], "{rec}");
        assert_eq!(rec["correct"].as_bool().unwrap(), rec["predicted"] == rec["expected"]);
        assert!(f(&rec["label_mass"]) > 0.0 && f(&rec["label_mass"]) <= 1.0 + 1e-9);
        assert!(f(&rec["ms"]) > 0.0);
        correct += rec["correct"].as_bool().unwrap() as usize;
    }
    assert_eq!(r["correct"].as_u64().unwrap() as usize, correct);
    assert!((f(&r["accuracy"]) - correct as f64 / 6.0).abs() < 1e-12);
    // The confusion matrix: rows are the expected labels (3 approve, 3 reject), its diagonal the correct ones.
    let c: Vec<Vec<u64>> = r["confusion"].as_array().unwrap().iter().map(|row| row.as_array().unwrap().iter().map(|x| x.as_u64().unwrap()).collect()).collect();
    assert_eq!(c[0][0] + c[0][1], 3);
    assert_eq!(c[1][0] + c[1][1], 3);
    assert_eq!((c[0][0] + c[1][1]) as usize, correct);
    for l in r["labels"].as_array().unwrap() {
        assert!(l["auc"].is_number(), "both labels occur, so each has an AUC: {l}");
    }
    assert!(f(&r["latency_ms_p95"]) >= f(&r["latency_ms_p50"]));

    // --by scenario: cards = records 1 and 4, loans the other four; the groups add up.
    let g = &r["by"]["groups"];
    assert_eq!(r["by"]["field"], "scenario");
    assert_eq!((g["cards"]["n"].as_u64(), g["loans"]["n"].as_u64()), (Some(2), Some(4)));
    assert_eq!(g["cards"]["correct"].as_u64().unwrap() + g["loans"]["correct"].as_u64().unwrap(), correct as u64);
}

#[test]
fn compare_pairs_two_runs_on_the_same_records() {
    let dir = tmpdir();
    let data = credit_data(dir.path());
    let m = model_path();
    let (m, data) = (m.to_str().unwrap(), data.to_str().unwrap());
    let adapter = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/seed_r16_qv");

    // The base against itself: no difference, an interval of one point, McNemar p = 1.
    let r = json_of(&["eval", "-m", m, "-t", "1", "--data", data, "--metric", "classification", "--compare", "base", "base"]);
    assert_eq!(r["n"], 6);
    assert_eq!(r["difference"]["accuracy"]["b_minus_a"], 0.0);
    assert_eq!(r["difference"]["accuracy"]["ci95"], serde_json::json!([0.0, 0.0]));
    assert_eq!(r["difference"]["macro_f1"]["ci95"], serde_json::json!([0.0, 0.0]));
    assert_eq!(r["mcnemar"], serde_json::json!({ "a_only": 0, "b_only": 0, "p_value": 1.0 }));

    // The base against an adapter (its scale doubled): the discordant counts agree with the
    // per-record outcomes, the difference with the two accuracies, and the interval holds it.
    let r = json_of(&["eval", "-m", m, "-t", "1", "--data", data, "--metric", "classification", "--answers", "--compare", "base", &format!("{adapter}:2"), "--by", "scenario", "--seed", "3"]);
    let ok = |arm: &str| -> Vec<bool> { r[arm]["records"].as_array().unwrap().iter().map(|x| x["correct"].as_bool().unwrap()).collect() };
    let (a, b) = (ok("a"), ok("b"));
    let a_only = a.iter().zip(&b).filter(|(x, y)| **x && !**y).count() as u64;
    let b_only = a.iter().zip(&b).filter(|(x, y)| !**x && **y).count() as u64;
    assert_eq!((r["mcnemar"]["a_only"].as_u64(), r["mcnemar"]["b_only"].as_u64()), (Some(a_only), Some(b_only)));
    let d = f(&r["difference"]["accuracy"]["b_minus_a"]);
    assert!((d - (f(&r["b"]["accuracy"]) - f(&r["a"]["accuracy"]))).abs() < 1e-12);
    let ci = r["difference"]["accuracy"]["ci95"].as_array().unwrap();
    assert!(f(&ci[0]) <= d + 1e-12 && d - 1e-12 <= f(&ci[1]), "{ci:?} vs {d}");
    assert_eq!(r["b"]["adapter"], format!("{adapter}:2"));
    assert!(r["by"]["groups"]["loans"]["a"]["accuracy"].is_number() && r["by"]["groups"]["loans"]["b"]["accuracy"].is_number());
    // Same seed, same interval.
    let again = json_of(&["eval", "-m", m, "-t", "1", "--data", data, "--metric", "classification", "--compare", "base", &format!("{adapter}:2"), "--seed", "3"]);
    assert_eq!(again["difference"], r["difference"]);
}

#[test]
fn eval_errors_name_what_is_wrong() {
    let dir = tmpdir();
    let data = credit_data(dir.path());
    let m = model_path();
    let (m, data) = (m.to_str().unwrap(), data.to_str().unwrap());
    let err = |args: &[&str]| -> String {
        let out = edgelora(args);
        assert_eq!(out.status.code(), Some(1), "edgelora {args:?} should fail");
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    let base = ["eval", "-m", m, "-t", "1", "--data", data];
    let with = |extra: &[&str]| -> Vec<String> { base.iter().chain(extra).map(|s| s.to_string()).collect() };
    let run = |extra: &[&str]| err(&with(extra).iter().map(String::as_str).collect::<Vec<_>>());

    assert!(run(&["--metric", "loss", "--by", "scenario"]).contains("--by and --compare need a per-record metric"));
    assert!(run(&["--labels", "approve,reject"]).contains("--labels needs --metric classification"));
    let e = run(&["--metric", "classification", "--labels", "approve,maybe"]);
    assert!(e.contains(":2:") && e.contains("\"reject\" is not one of"), "{e}");
    // Two labels that start with the same token cannot be told apart by one forward.
    let e = run(&["--metric", "classification", "--labels", "reject,rejected"]);
    assert!(e.contains("both start with token"), "{e}");
    let e = run(&["--metric", "classification", "--labels", "approve"]);
    assert!(e.contains("at least two labels"), "{e}");
    let e = run(&["--compare", "base", "base", "-a", "x.gguf"]);
    assert!(e.contains("drop --adapter"), "{e}");
}

#[test]
fn by_arm_on_a_feedback_log_summarizes_its_ratings_and_corrections() {
    // Records as `serve --feedback-log` writes them: arm, rating, corrected.
    let dir = tmpdir();
    let log = dir.path().join("feedback.jsonl");
    let rec = |arm: &str, rating: Option<f64>, corrected: bool| {
        let mut v = serde_json::json!({"prompt": "The capital of France is", "completion": " Paris", "arm": arm, "corrected": corrected});
        if let Some(r) = rating {
            v["rating"] = r.into();
        }
        v.to_string()
    };
    let lines = [rec("v1", Some(1.0), false), rec("v1", Some(0.0), true), rec("v1", None, false), rec("v2", Some(1.0), false), rec("v2", Some(0.5), true), rec("v2", Some(1.0), true)];
    std::fs::write(&log, lines.join("\n") + "\n").unwrap();
    let m = model_path();
    let r = json_of(&["eval", "-m", m.to_str().unwrap(), "-t", "1", "--data", log.to_str().unwrap(), "--metric", "contains", "--max-tokens", "4", "--by", "arm"]);
    let g = &r["by"]["groups"];
    assert_eq!(g["v1"]["feedback"]["rated"], 2);
    assert_eq!(g["v1"]["feedback"]["mean_rating"], 0.5);
    assert_eq!(g["v1"]["feedback"]["corrected"], 1);
    assert!((g["v1"]["feedback"]["corrected_share"].as_f64().unwrap() - 1.0 / 3.0).abs() < 1e-12);
    assert_eq!(g["v2"]["feedback"]["rated"], 3);
    assert!((g["v2"]["feedback"]["mean_rating"].as_f64().unwrap() - 2.5 / 3.0).abs() < 1e-12);
    assert_eq!(g["v2"]["feedback"]["corrected"], 2);
    assert_eq!(g["v1"]["n"], 3);
    // Data without feedback fields gets no feedback block.
    let plain = dir.path().join("plain.jsonl");
    std::fs::write(&plain, "{\"prompt\": \"The capital of France is\", \"completion\": \" Paris\", \"arm\": \"v1\"}\n").unwrap();
    let r = json_of(&["eval", "-m", m.to_str().unwrap(), "-t", "1", "--data", plain.to_str().unwrap(), "--metric", "contains", "--max-tokens", "4", "--by", "arm"]);
    assert!(r["by"]["groups"]["v1"].get("feedback").is_none());
}
