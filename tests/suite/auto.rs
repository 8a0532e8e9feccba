//! `train --auto` (`train::auto::search`): every candidate screened the same number of
//! steps, the best extended with early stopping, the chosen recipe retrained on all the
//! data (or, stopped by the budget, continued on all of it) — or stage 2's best kept when
//! the budget cannot hold it; examples added to a run mid-way; the teacher-forced
//! validation score it ranks by; and the CLI's refusals.

use std::process::Command;

use edgelora::train::auto::{search, AutoOptions, Layers, Recipe};
use edgelora::train::data::Example;
use edgelora::train::eval::validate;
use edgelora::train::{parse_targets, TrainConfig, Trainer};

use crate::common::{model_path, tiny_model, tmpdir};

fn examples(n: usize, seed: usize) -> Vec<Example> {
    (0..n)
        .map(|i| {
            let len = 5 + (i + seed) % 4;
            // A prompt, then a one-token answer that is a function of the prompt's first token.
            let mut tokens: Vec<i32> = (0..len).map(|j| ((i * 5 + j * 3 + seed) % 30) as i32).collect();
            tokens.push(30 + tokens[0] % 3);
            let trained = (0..tokens.len()).map(|j| j + 1 == tokens.len()).collect();
            Example { tokens, trained }
        })
        .collect()
}

fn space() -> Vec<Recipe> {
    // The first two train the upper layer only (they share its frozen states), the third all.
    let r = |lr: f64, rank: usize, targets: &str, layers| Recipe { lr, rank, alpha: 2.0 * rank as f32, targets: targets.into(), layers };
    vec![r(1e-2, 4, "all-linear", Layers::UpperHalf), r(1e-4, 4, "all-linear", Layers::UpperHalf), r(1e-2, 2, "q_proj,v_proj", Layers::All)]
}

fn base_config() -> TrainConfig {
    TrainConfig { batch: 4, warmup_ratio: 0.0, ..TrainConfig::default() }
}

#[test]
fn the_search_screens_each_candidate_extends_the_best_and_retrains_on_all_data() {
    let dir = tmpdir();
    let base = tiny_model(&dir.path().join("tiny.gguf"), "llama", 3);
    let (train, val) = (examples(24, 0), examples(8, 100));
    let opts = AutoOptions { budget_secs: 3600.0, space: space(), max_epochs: 3.0, patience: 2, screen_share: 0.3, final_share: 0.45 };
    let mut lines = Vec::new();
    let (trainer, report) = search(&base, &base_config(), train.clone(), val.clone(), "d".into(), &opts, &mut |l| lines.push(l.to_string())).unwrap();

    // Screen: every candidate the same steps (half an epoch of 24/4 here: the budget is
    // large), the better two continued to twice that.
    assert_eq!(report.trials.len(), 3);
    assert_eq!(report.screen_steps, 3);
    assert!(report.trials.iter().all(|t| t.points[0].step == 3), "{:?}", report.trials);
    // The screen ranks by validation loss.
    let key = |p: &edgelora::train::auto::ScorePoint| p.val_loss;
    let order = |rung: usize, among: &[usize]| -> Vec<usize> {
        let mut v = among.to_vec();
        v.sort_by(|&a, &b| key(&report.trials[a].points[rung]).partial_cmp(&key(&report.trials[b].points[rung])).unwrap().then(a.cmp(&b)));
        v
    };
    let mut up = order(0, &[0, 1, 2])[..2].to_vec();
    up.sort();
    let continued: Vec<usize> = (0..3).filter(|&i| report.trials[i].points.len() > 1).collect();
    assert_eq!(continued, up, "{:?}", report.trials);
    assert!(continued.iter().all(|&i| report.trials[i].points[1].step == 6));
    // The chosen one had the lowest loss at rung 2.
    let best = order(1, &continued)[0];
    assert_eq!(report.chosen, best, "{:?}", report.trials);
    // Stage 2 scored it every half epoch (3 steps) until it stopped for a stated reason.
    let steps: Vec<usize> = report.trials[best].points.iter().map(|p| p.step).collect();
    assert!(steps.windows(2).all(|w| w[1] == w[0] + 3), "{steps:?}");
    assert!(report.stopped.contains("epochs") || report.stopped.contains("no better"), "{}", report.stopped);
    // The chosen length is a scored point, and the final run trained it on all 32 examples.
    assert!(report.trials[best].points.iter().any(|p| (p.epoch - report.chosen_epochs).abs() < 1e-9));
    assert_eq!(report.final_on, "all");
    assert_eq!(report.final_steps, ((report.chosen_epochs * 8.0).round() as usize).max(1));
    assert_eq!(trainer.step, report.final_steps);
    assert_eq!(trainer.config.lr, space()[best].lr);
    assert_eq!(trainer.config.targets, parse_targets(&space()[best].targets).unwrap());
    assert_eq!(trainer.config.layers, space()[best].layers.range(2));
    assert_eq!(trainer.frozen_states().is_some(), space()[best].layers == Layers::UpperHalf);
    assert!(lines.iter().any(|l| l.starts_with("screen 3/3")) && lines.iter().any(|l| l.starts_with("screen rung 2")) && lines.iter().any(|l| l.starts_with("final:")), "{lines:?}");

    // Deterministic: the same inputs give the same choice and the same factors.
    let (again, r2) = search(&base, &base_config(), train, val, "d".into(), &opts, &mut |_| {}).unwrap();
    assert_eq!((r2.chosen, r2.final_steps), (report.chosen, report.final_steps));
    assert_eq!(again.params, trainer.params);
}

#[test]
fn without_budget_for_the_final_run_the_best_extended_factors_are_kept() {
    let dir = tmpdir();
    let base = tiny_model(&dir.path().join("tiny.gguf"), "llama", 4);
    // A budget already spent: the screen's share holds no candidate, so only the first
    // recipe of the space is screened (half an epoch of 40/4, one rung), nothing more.
    let opts = AutoOptions { budget_secs: 1e-6, space: space(), max_epochs: 3.0, patience: 2, screen_share: 0.3, final_share: 0.45 };
    let mut lines = Vec::new();
    let (trainer, report) = search(&base, &base_config(), examples(40, 0), examples(8, 50), "d".into(), &opts, &mut |l| lines.push(l.to_string())).unwrap();
    assert_eq!(report.stopped, "the budget");
    assert_eq!(report.final_on, "train-split");
    assert_eq!(report.screen_steps, 5);
    assert_eq!((report.trials.len(), report.chosen), (1, 0));
    assert_eq!(trainer.step, 5);
    assert_eq!(report.trials[0].points.len(), 1);
    assert!(lines.iter().any(|l| l.contains("holds 1 of 3 candidates")), "{lines:?}");
    // Too little data is refused, naming the option.
    let Err(e) = search(&base, &base_config(), examples(5, 0), examples(8, 50), "d".into(), &opts, &mut |_| {}) else { panic!("5 examples were accepted") };
    let e = e.to_string();
    assert!(e.contains("--auto") && e.contains("at least 8 training"), "{e}");
}

#[test]
fn stopped_by_the_budget_the_final_stage_continues_stage_twos_run_on_all_the_data() {
    let dir = tmpdir();
    let base = tiny_model(&dir.path().join("tiny.gguf"), "llama", 6);
    // Patience and epochs out of reach: only the budget ends stage 2, with 60% of it left
    // for stage 3 (the tiny model's steps take milliseconds).
    let opts = AutoOptions { budget_secs: 3.0, space: space(), max_epochs: 1e6, patience: usize::MAX, screen_share: 0.1, final_share: 0.6 };
    let mut lines = Vec::new();
    let (trainer, report) = search(&base, &base_config(), examples(24, 0), examples(8, 100), "d".into(), &opts, &mut |l| lines.push(l.to_string())).unwrap();
    assert_eq!(report.stopped, "the budget");
    assert_eq!(report.final_on, "all");
    let from = report.continued_from.unwrap_or_else(|| panic!("stage 3 trained anew: {lines:?}"));
    // It picked up where stage 2's last score was taken, and ran its own steps after it,
    // on the schedule re-planned to end at its last step.
    assert_eq!(report.trials[report.chosen].points.last().map(|p| p.step), Some(from));
    assert!(report.final_steps > 0);
    assert_eq!(trainer.step, from + report.final_steps);
    assert_eq!(trainer.config.steps, trainer.step);
    assert!((report.final_epochs - report.final_steps as f64 / 8.0).abs() < 1e-9, "{report:?}");
    assert!(lines.iter().any(|l| l.contains(&format!("continues from step {from}"))), "{lines:?}");
}

#[test]
fn examples_added_mid_run_join_the_next_epochs_and_the_run_goes_on() {
    let dir = tmpdir();
    let base = tiny_model(&dir.path().join("tiny.gguf"), "llama", 7);
    // The first 8 examples train one token each; the 4 added ones train 5 each, so a step's
    // target count shows which examples it drew.
    let first = examples(8, 0);
    let added: Vec<Example> = examples(4, 40).into_iter().map(|mut e| {
        let n = e.tokens.len();
        e.trained = (0..n).map(|j| j + 5 >= n).collect();
        e
    }).collect();
    let config = TrainConfig { rank: 4, alpha: 8.0, targets: parse_targets("all-linear").unwrap(), lr: 1e-2, steps: 100, batch: 4, warmup_ratio: 0.0, ..TrainConfig::default() };
    let mut t = Trainer::new(&base, config.clone(), first.clone(), first.clone(), "d".into()).unwrap();
    let mut plain = Trainer::new(&base, config, first.clone(), first, "d".into()).unwrap();
    for _ in 0..3 {
        let (a, b) = (t.train_step().unwrap(), plain.train_step().unwrap());
        assert_eq!(a.targets, 4);
        assert_eq!(a.loss, b.loss);
    }
    t.extend_train(added).unwrap();
    // Three steps are one epoch of the 12: every example once, 8·1 + 4·5 targets; the epoch
    // count goes on from 1.5 (3 steps of 2 per epoch).
    let m: Vec<_> = (0..3).map(|_| t.train_step().unwrap()).collect();
    assert_eq!(m.iter().map(|m| m.targets).sum::<usize>(), 28, "{m:?}");
    assert!(m.iter().any(|m| m.targets > 4), "{m:?}");
    assert!((m[2].epoch - 2.5).abs() < 1e-9, "{m:?}");
    assert_eq!(t.step, 6);
    // A run whose data changed mid-way cannot be checkpointed (a resume would replay other
    // batches); a bad added example is refused.
    let e = t.save_checkpoint(&dir.path().join("ck")).unwrap_err().to_string();
    assert!(e.contains("added training examples at step 3"), "{e}");
    let e = t.extend_train(vec![Example { tokens: vec![1], trained: vec![true] }]).unwrap_err().to_string();
    assert!(e.contains("fewer than 2 tokens"), "{e}");
}

#[test]
fn validation_counts_an_answer_exact_when_every_trained_token_is_the_greedy_choice() {
    let dir = tmpdir();
    let base = tiny_model(&dir.path().join("tiny.gguf"), "llama", 5);
    let data = examples(4, 7);
    let config = TrainConfig { rank: 8, alpha: 16.0, targets: parse_targets("all-linear").unwrap(), lr: 2e-2, steps: 150, batch: 4, warmup_ratio: 0.0, ..TrainConfig::default() };
    let mut t = Trainer::new(&base, config, data.clone(), data.clone(), "d".into()).unwrap();
    let before = t.validate().unwrap().unwrap();
    t.run(&std::sync::atomic::AtomicBool::new(false), None, 0, &mut |_| {}).unwrap();
    let after = t.validate().unwrap().unwrap();
    // Memorized: every answer is the arg-max, the loss is small; before, it was not.
    assert_eq!(after.exact, 1.0, "{after:?}");
    assert!(after.loss < before.loss / 4.0, "{before:?} {after:?}");
    assert!(before.exact < 1.0, "{before:?}");
    // The batch size does not change the figures (examples are scored independently).
    let cfg = edgelora::model::config::ModelConfig::from_gguf(&base).unwrap();
    let model = edgelora::model::grad::TrainModel::<f32>::new(&base, &cfg).unwrap();
    let one = validate(&model, &t.params, &data, 1, None).unwrap();
    assert_eq!(one.exact, after.exact);
    assert!((one.loss - after.loss).abs() < 1e-4, "{} {}", one.loss, after.loss);
}

#[test]
fn the_cli_refuses_auto_with_recipe_flags() {
    let dir = tmpdir();
    let data = dir.path().join("d.jsonl");
    std::fs::write(&data, "{\"prompt\": \"a\", \"completion\": \"b\"}\n").unwrap();
    let m = model_path();
    for flag in [["--rank", "8"], ["--lr", "1e-3"], ["--targets", "all-linear"], ["--steps", "3"]] {
        let out = Command::new(env!("CARGO_BIN_EXE_edgelora"))
            .args(["train", "-m", m.to_str().unwrap(), "--data", data.to_str().unwrap(), "--out", dir.path().join("o.gguf").to_str().unwrap(), "--auto", flag[0], flag[1]])
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{flag:?}: {err}");
        assert!(err.contains("cannot be used with") && err.contains(flag[0]), "{err}");
    }
}

#[test]
fn auto_with_plot_draws_every_recipes_search_curve() {
    // The default model, 24 short records, a half-minute budget: the search screens the
    // default space and the plot names every recipe and marks the chosen one.
    let dir = tmpdir();
    let data = dir.path().join("d.jsonl");
    let words = ["red", "blue", "green"];
    let lines: String = (0..24).map(|i| format!("{{\"prompt\": \"Item {i}: color?\", \"completion\": \"{}\"}}\n", words[i % 3])).collect();
    std::fs::write(&data, lines).unwrap();
    let (out, plot) = (dir.path().join("a.gguf"), dir.path().join("search.svg"));
    let r = Command::new(env!("CARGO_BIN_EXE_edgelora"))
        .args(["train", "-m", model_path().to_str().unwrap(), "--data", data.to_str().unwrap(), "--out", out.to_str().unwrap(), "--auto", "--budget-minutes", "0.5", "--threads", "1", "--plot", plot.to_str().unwrap()])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&r.stderr);
    assert!(r.status.success(), "{err}");
    assert!(out.exists());
    let svg = std::fs::read_to_string(&plot).unwrap();
    // Every recipe the search screened (the summary's trials: all five of the default
    // space unless the machine is too slow for the screen's share) has its curve.
    let summary: serde_json::Value = serde_json::from_slice(&r.stdout).unwrap();
    let trials = summary["auto"]["trials"].as_array().unwrap();
    assert!(!trials.is_empty() && trials.len() <= 5, "{trials:?}");
    for (t, recipe) in trials.iter().zip(edgelora::train::auto::default_space()) {
        assert_eq!(t["recipe"]["targets"], recipe.targets.as_str(), "trials follow the space's order");
        assert!(svg.contains(&recipe.label()), "the plot lacks {}", recipe.label());
    }
    assert_eq!(svg.matches("(chosen)").count(), 1, "exactly one recipe is marked chosen");
    assert!(svg.contains("chosen length"));
    // A plot path of another kind is refused before any training.
    let r = Command::new(env!("CARGO_BIN_EXE_edgelora"))
        .args(["train", "-m", model_path().to_str().unwrap(), "--data", data.to_str().unwrap(), "--out", dir.path().join("b.gguf").to_str().unwrap(), "--auto", "--plot", dir.path().join("x.jpg").to_str().unwrap()])
        .output()
        .unwrap();
    assert!(!r.status.success() && String::from_utf8_lossy(&r.stderr).contains(".png or .svg"));
}
