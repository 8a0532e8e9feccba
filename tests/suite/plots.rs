//! Plots: `train --plot` (loss per step, validation loss every `--eval-every`, learning
//! rate), `eval --plot` (ROC per label; F1 bars with --compare), PNG and SVG by extension,
//! nothing left behind on a bad name.

use std::process::Command;

use crate::common::{model_path, tmpdir};

fn edgelora(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_edgelora")).args(args).output().expect("run edgelora")
}

fn credit_records(dir: &std::path::Path) -> String {
    let ask = "Decide on this loan application. Answer with one word: approve or reject.";
    let rows = [("Credit score: 700", "approve"), ("Credit score: 600", "reject"), ("Credit score: 810", "approve"), ("Credit score: 590", "reject"), ("Credit score: 655", "approve"), ("Credit score: 640", "reject")];
    let text: String = rows.iter().map(|(i, o)| serde_json::json!({"instruction": ask, "input": i, "output": o}).to_string() + "\n").collect();
    let p = dir.join("credit.jsonl");
    std::fs::write(&p, text).unwrap();
    p.to_str().unwrap().to_string()
}

fn is_png(p: &std::path::Path) -> bool {
    std::fs::read(p).is_ok_and(|b| b.len() > 1000 && b.starts_with(b"\x89PNG\r\n\x1a\n"))
}

#[test]
fn train_plots_the_loss_validation_and_learning_rate_curves() {
    let dir = tmpdir();
    let d = dir.path();
    let data = credit_records(d);
    let m = model_path();
    let out_png = d.join("loss.png");
    let args = |plot: &std::path::Path, out: &str| -> Vec<String> {
        ["train", "-m", m.to_str().unwrap(), "--data", &data, "--eval", &data, "--out", d.join(out).to_str().unwrap(), "--steps", "3", "--batch", "2", "-t", "1", "--max-len", "64", "--eval-every", "1", "--plot", plot.to_str().unwrap()]
            .iter()
            .map(|s| s.to_string())
            .collect()
    };
    let out = edgelora(&args(&out_png, "a.gguf").iter().map(String::as_str).collect::<Vec<_>>());
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(is_png(&out_png));
    // The validation loss was measured before, after each step, and at the end.
    let metrics = std::fs::read_to_string(d.join("a.gguf.metrics.jsonl")).unwrap();
    let evals: Vec<u64> = metrics.lines().map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()).filter(|v| v.get("eval_loss").is_some()).map(|v| v["step"].as_u64().unwrap()).collect();
    assert_eq!(evals, [0, 1, 2, 3]);

    let out_svg = d.join("loss.svg");
    let out = edgelora(&args(&out_svg, "b.gguf").iter().map(String::as_str).collect::<Vec<_>>());
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let svg = std::fs::read_to_string(&out_svg).unwrap();
    assert!(svg.starts_with("<svg") && svg.contains("validation loss") && svg.contains("learning rate"), "{}", &svg[..200.min(svg.len())]);

    // A name that is neither .png nor .svg is refused before training; nothing is written.
    let bad = d.join("loss.jpg");
    let out = edgelora(&args(&bad, "c.gguf").iter().map(String::as_str).collect::<Vec<_>>());
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains(".png or .svg"));
    assert!(!d.join("c.gguf").exists());
    let left: Vec<String> = std::fs::read_dir(d).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).filter(|n| n.contains("loss.jpg")).collect();
    assert!(left.is_empty(), "{left:?}");
}

#[test]
fn eval_plots_roc_curves_and_compare_plots_f1_bars() {
    let dir = tmpdir();
    let d = dir.path();
    let data = credit_records(d);
    let m = model_path();
    let roc = d.join("roc.png");
    let out = edgelora(&["eval", "-m", m.to_str().unwrap(), "--data", &data, "--metric", "classification", "--labels", "approve,reject", "-t", "1", "--plot", roc.to_str().unwrap()]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(is_png(&roc));
    let bars = d.join("f1.svg");
    let out = edgelora(&["eval", "-m", m.to_str().unwrap(), "--data", &data, "--metric", "classification", "--labels", "approve,reject", "-t", "1", "--compare", "base", "base", "--bootstrap", "10", "--plot", bars.to_str().unwrap()]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let svg = std::fs::read_to_string(&bars).unwrap();
    assert!(svg.contains("approve") && svg.contains("reject") && svg.contains("A: base") && svg.contains("<rect"), "{}", &svg[..300.min(svg.len())]);
    // --plot needs classification.
    let out = edgelora(&["eval", "-m", m.to_str().unwrap(), "--data", &data, "--metric", "exact", "--plot", roc.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("needs --metric classification"));
}
