//! The training job an app drives (`train::TrainJob`): in-memory data, progress and
//! stop, pause/resume in one process, resume from a checkpoint directory (bit-identical
//! to an uninterrupted run), the memory budget, bad input, and the adapter store.

use std::path::Path;

use edgelora::adapter::{read_gguf_lora, AdapterStore};
use edgelora::gguf::GgufFile;
use edgelora::train::budget::peak_rss_bytes;
use edgelora::train::{parse_targets, JobOptions, JobOutcome, TrainConfig, TrainJob};
use edgelora::{AdapterError, Error, TrainError};

use crate::common::{model_path, tmpdir};

pub const INSTRUCTION: &str = "Decide on this loan application. Answer with one word: approve or reject.";

/// Credit-style records (the credit example's shape): approve when the score is high
/// and the debt low.
pub fn credit_records(n: usize, offset: usize) -> Vec<(String, String)> {
    (0..n)
        .map(|i| {
            let k = i + offset;
            let score = 520 + (k * 37) % 300;
            let dti = 10 + (k * 13) % 45;
            let answer = if score >= 650 && dti <= 35 { "approve" } else { "reject" };
            (format!("Credit score: {score}\nDebt-to-income: {dti}%"), answer.to_string())
        })
        .collect()
}

fn small_options(steps: usize, ckpt: Option<&Path>) -> JobOptions {
    JobOptions {
        config: TrainConfig { rank: 4, alpha: 8.0, targets: parse_targets("q_proj,v_proj").unwrap(), steps, batch: 2, max_len: 96, lr: 5e-3, warmup_ratio: 0.0, seed: 7, ..TrainConfig::default() },
        checkpoint_dir: ckpt.map(Path::to_path_buf),
        save_every: 2,
        ..JobOptions::default()
    }
}

fn job_with_data(opts: JobOptions, n: usize) -> TrainJob {
    let mut job = TrainJob::open(model_path(), opts).unwrap();
    for (input, answer) in credit_records(n, 0) {
        job.add_example(INSTRUCTION, &input, &answer, false).unwrap();
    }
    job
}

fn factors(job: &mut TrainJob) -> Vec<(String, Vec<u32>, Vec<u32>)> {
    job.adapter().unwrap().tensors.into_iter().map(|(k, t)| (k, t.a.iter().map(|x| x.to_bits()).collect(), t.b.iter().map(|x| x.to_bits()).collect())).collect()
}

#[test]
fn a_job_stopped_and_continued_or_resumed_from_its_checkpoint_matches_an_uninterrupted_run() {
    let mut straight = job_with_data(small_options(4, None), 8);
    let mut seen = Vec::new();
    assert_eq!(
        straight
            .run(&mut |p| {
                seen.push((p.step, p.total_steps));
                assert!(p.loss.is_finite() && p.lr > 0.0 && p.grad_norm.is_finite() && p.tokens_per_s > 0.0 && p.eta_secs >= 0.0);
                true
            })
            .unwrap(),
        JobOutcome::Finished
    );
    assert_eq!(seen, vec![(1, 4), (2, 4), (3, 4), (4, 4)]);
    let want = factors(&mut straight);

    // Stopped by the callback after step 1, continued in the same process.
    let dir = tmpdir();
    let ckpt = dir.path().join("ckpt");
    let mut paused = job_with_data(small_options(4, Some(&ckpt)), 8);
    assert_eq!(paused.run(&mut |p| p.step < 1).unwrap(), JobOutcome::Cancelled);
    assert_eq!(paused.steps(), (1, 4));
    assert!(ckpt.join("checkpoint.safetensors").exists(), "a checkpoint is saved on stop");
    // cancel() before run: the run stops before its first step (and the flag is consumed).
    paused.cancel();
    assert_eq!(paused.run(&mut |_| true).unwrap(), JobOutcome::Cancelled);
    assert_eq!(paused.steps(), (1, 4));
    // Adding training data once training started is refused.
    assert!(matches!(paused.add_example(INSTRUCTION, "x", "approve", false), Err(Error::Train(TrainError::BadOption { .. }))));
    // Stopped again at step 3 and resumed by a new job opened on the checkpoint directory.
    assert_eq!(paused.run(&mut |p| p.step < 3).unwrap(), JobOutcome::Cancelled);
    drop(paused);
    let mut resumed = job_with_data(small_options(4, Some(&ckpt)), 8);
    resumed.prepare().unwrap();
    assert_eq!(resumed.steps(), (3, 4), "the new job continues at the checkpoint's step");
    assert_eq!(resumed.run(&mut |_| true).unwrap(), JobOutcome::Finished);
    assert!(factors(&mut resumed) == want, "factors after stop + resume differ from the uninterrupted run");
}

#[test]
fn a_checkpoint_of_other_settings_or_data_is_refused_naming_what_differs() {
    let dir = tmpdir();
    let ckpt = dir.path().join("ckpt");
    let mut job = job_with_data(small_options(2, Some(&ckpt)), 4);
    assert_eq!(job.run(&mut |p| p.step < 1).unwrap(), JobOutcome::Cancelled);
    drop(job);
    let mut other_lr = small_options(2, Some(&ckpt));
    other_lr.config.lr = 1e-3;
    let err = job_with_data(other_lr, 4).prepare().unwrap_err();
    assert!(matches!(&err, Error::Train(TrainError::Checkpoint { .. })) && err.to_string().contains("training configuration differs"), "{err}");
    let err = job_with_data(small_options(2, Some(&ckpt)), 5).prepare().unwrap_err();
    assert!(err.to_string().contains("training data differs"), "{err}");
    // A different memory budget is not a different run: checkpointing/micro-batches may change.
    let mut budget = small_options(2, Some(&ckpt));
    budget.config.grad_checkpoint = true;
    let mut j = job_with_data(budget, 4);
    j.prepare().unwrap();
    assert_eq!(j.steps(), (1, 2));
}

#[test]
fn bad_input_gets_a_typed_error_naming_the_record_field_or_path() {
    // A model path that is not a model.
    let dir = tmpdir();
    let not_model = dir.path().join("notes.txt");
    std::fs::write(&not_model, "hello").unwrap();
    let err = TrainJob::open(&not_model, JobOptions::default()).err().expect("not a model");
    assert!(matches!(err, Error::Gguf(_)) && err.to_string().contains("notes.txt"), "{err}");
    // An unwritable checkpoint directory (under a regular file: fails even as root).
    let bad_dir = not_model.join("ckpt");
    let err = TrainJob::open(model_path(), small_options(2, Some(&bad_dir))).err().expect("unwritable");
    assert!(matches!(err, Error::Train(TrainError::Checkpoint { .. })) && err.to_string().contains("ckpt"), "{err}");
    let mut job = TrainJob::open(model_path(), small_options(2, None)).unwrap();
    // No data.
    let err = job.run(&mut |_| true).unwrap_err();
    assert!(err.to_string().contains("no training examples"), "{err}");
    // A record with no answer.
    match job.add_example(INSTRUCTION, "Credit score: 700", "  ", false) {
        Err(Error::Train(TrainError::Record { field, line: 1, .. })) => assert_eq!(field, "output"),
        other => panic!("expected a record error on output, got {other:?}"),
    }
    match job.add_record_json(r#"{"instruction": "hi"}"#, false) {
        Err(Error::Train(TrainError::Record { field, .. })) => assert_eq!(field, "output"),
        other => panic!("expected a record error on output, got {other:?}"),
    }
    let jsonl = dir.path().join("d.jsonl");
    std::fs::write(&jsonl, "{\"prompt\":\"a\",\"completion\":\"b\"}\n{\"prompt\":\"a\"}\n").unwrap();
    let err = job.add_jsonl(&jsonl, false).unwrap_err();
    assert!(err.to_string().contains("d.jsonl:2") && err.to_string().contains("completion"), "{err}");
    assert_eq!(job.n_train(), 0, "a bad file adds nothing");
    // Evaluation without evaluation data.
    job.add_example(INSTRUCTION, "Credit score: 700", "approve", false).unwrap();
    assert!(job.evaluate().unwrap_err().to_string().contains("no evaluation examples"));
}

#[test]
fn a_memory_budget_picks_micro_batches_with_the_same_result_or_refuses_before_step_one() {
    // Refused before training: a budget below the model itself.
    let mut opts = small_options(2, None);
    opts.max_memory_mb = Some(16);
    let mut job = job_with_data(opts, 8);
    let err = job.run(&mut |_| panic!("no step may run")).unwrap_err();
    match &err {
        Error::Train(TrainError::Memory { estimate_mb, budget_mb, .. }) => assert!(estimate_mb > budget_mb && *budget_mb == 16.0, "{err}"),
        other => panic!("expected a memory error, got {other:?}"),
    }
    assert!(err.to_string().contains("16 MiB"), "{err}");

    // A budget between the micro-batch-of-2 and of-4 estimates: micro-batches of 2,
    // accumulated to batch 4: the same step as batch 4 up to float rounding (the shared
    // chat prefix is summed over 2 sequences then 2 micro-batches instead of over 4, and
    // AdamW's normalised first steps magnify such differences where a gradient is near
    // zero: measured 2e-3 of |B| max on an AVX2 host; a lost micro-batch would be ~50%).
    let mut full_opts = small_options(2, None);
    full_opts.config.batch = 4;
    let mut full = job_with_data(full_opts.clone(), 8);
    full.prepare().unwrap();
    let full_est = *full.memory_estimate().unwrap();
    assert_eq!((full_est.micro_batch, full_est.checkpoint), (4, false));
    full.run(&mut |_| true).unwrap();
    let mut fit_opts = full_opts;
    fit_opts.max_memory_mb = Some((full_est.total() >> 20) - 1);
    let mut fit = job_with_data(fit_opts, 8);
    fit.prepare().unwrap();
    let e = *fit.memory_estimate().unwrap();
    assert!(e.total() < full_est.total() && (e.micro_batch < 4 || e.checkpoint), "{e:?}");
    assert_eq!(fit.config().micro_batch, (e.micro_batch < 4).then_some(e.micro_batch));
    fit.run(&mut |_| true).unwrap();
    let (a, b) = (full.adapter().unwrap(), fit.adapter().unwrap());
    for (name, t) in &a.tensors {
        let u = &b.tensors[name];
        let diff = t.b.iter().zip(&u.b).map(|(x, y)| (x - y).abs()).fold(0f32, f32::max);
        let mag = t.b.iter().map(|x| x.abs()).fold(0f32, f32::max);
        assert!(diff <= 1e-2 * mag.max(1e-6) + 1e-6, "{name}: B differs by {diff} (|B| max {mag})");
    }
    assert!(peak_rss_bytes().is_some());
}

#[test]
fn evaluation_export_and_the_store_keep_versions_and_roll_back() {
    let dir = tmpdir();
    let mut job = job_with_data(small_options(3, None), 8);
    for (input, answer) in credit_records(4, 100) {
        job.add_example(INSTRUCTION, &input, &answer, true).unwrap();
    }
    let before = job.evaluate().unwrap();
    assert_eq!(before.n_examples, 4);
    job.run(&mut |_| true).unwrap();
    let after = job.evaluate().unwrap();
    assert!(after.loss < before.loss, "evaluation loss {} → {}", before.loss, after.loss);
    let v1 = dir.path().join("v1.gguf");
    let adapter = job.export(&v1, Some(&dir.path().join("peft"))).unwrap();
    let read = read_gguf_lora(&GgufFile::open(&v1).unwrap()).unwrap();
    assert_eq!(read.tensors.len(), adapter.tensors.len());
    assert!(read.manifest.data_fingerprint.as_deref() == Some(job.data_fingerprint().as_str()));
    assert!(dir.path().join("peft/adapter_config.json").exists());

    let store = AdapterStore::open(dir.path().join("store")).unwrap();
    let s1 = store.save("credit", &v1, Some(serde_json::json!({"loss": after.loss}))).unwrap();
    assert_eq!((s1.version, s1.parent), (1, None));
    let s2 = store.save("credit", &v1, None).unwrap();
    assert_eq!((s2.version, s2.parent), (2, Some(1)));
    assert_eq!(store.current("credit").unwrap().version, 2);
    assert_eq!(store.versions("credit").unwrap().len(), 2);
    assert_eq!(store.names().unwrap(), vec!["credit".to_string()]);
    assert_eq!(store.rollback("credit").unwrap().version, 1);
    assert_eq!(store.current("credit").unwrap().version, 1);
    assert!(store.current_path("credit").unwrap().ends_with("credit/v1.gguf"));
    assert!(matches!(store.rollback("credit"), Err(Error::Adapter(AdapterError::NotInStore { .. }))), "v1 has no parent");
    assert!(matches!(store.save("../x", &v1, None), Err(Error::Adapter(AdapterError::Store { .. }))));
    assert!(matches!(store.save("credit", dir.path().join("peft"), None), Err(Error::Adapter(AdapterError::Store { .. }))));
    assert!(store.save("credit", model_path(), None).is_err(), "a model is not an adapter");
    assert!(matches!(store.path("credit", 9), Err(Error::Adapter(AdapterError::NotInStore { .. }))));
    assert!(!std::fs::read_dir(dir.path().join("store/credit")).unwrap().any(|e| e.unwrap().file_name().to_string_lossy().contains(".tmp")));
}

#[test]
fn a_job_continues_an_exported_adapter_with_its_settings_and_lineage() {
    let dir = tmpdir();
    let mut first = job_with_data(small_options(2, None), 8);
    first.run(&mut |_| true).unwrap();
    let v1 = dir.path().join("v1.gguf");
    let parent = first.export(&v1, None).unwrap();
    // The options ask for rank 16 on all-linear: the parent's rank 4 on q/v wins.
    let mut opts = small_options(2, None);
    opts.config.rank = 16;
    opts.config.targets = parse_targets("all-linear").unwrap();
    opts.init_adapter = Some(v1.clone());
    opts.name = None;
    let mut next = job_with_data(opts, 8);
    next.prepare().unwrap();
    assert_eq!((next.config().rank, next.config().targets.len()), (4, 2));
    let at_start = next.adapter().unwrap();
    for (name, t) in &parent.tensors {
        let u = &at_start.tensors[name];
        assert!(t.a == u.a && t.b == u.b, "{name}: step 0 of the continued job is not the parent");
    }
    let lineage = at_start.manifest.lineage.clone().unwrap();
    assert_eq!(lineage.round, 2);
    assert_eq!(lineage.parent.unwrap().fingerprint, read_gguf_lora(&GgufFile::open(&v1).unwrap()).unwrap().fingerprint());
    next.run(&mut |_| true).unwrap();
    assert!(next.adapter().unwrap().tensors.iter().any(|(k, t)| t.b != parent.tensors[k].b), "the continued job did not train");
}
