//! Mixed-precision training (`TrainConfig::precision`, `edgelora train --precision`): bf16
//! products with the frozen base follow the f32 run's loss curve on the credit example
//! and reach the same accuracy. On a CPU with AMX the products run on its tiles; without
//! AVX512-BF16 they are emulated (the same values as the hardware's up to float rounding),
//! so this runs everywhere.

use std::path::{Path, PathBuf};

use edgelora::model::precision::Precision;
use edgelora::train::{parse_targets, JobOptions, TrainConfig, TrainJob};

use crate::common::{model_path, tmpdir};
use crate::train_job::{credit_records, INSTRUCTION};

const STEPS: usize = 16;

fn options(precision: Precision, init: Option<PathBuf>) -> JobOptions {
    JobOptions {
        config: TrainConfig { rank: 8, alpha: 16.0, targets: parse_targets("q_proj,v_proj").unwrap(), steps: STEPS, batch: 4, max_len: 96, lr: 5e-3, warmup_ratio: 0.0, seed: 11, precision, ..TrainConfig::default() },
        init_adapter: init,
        ..JobOptions::default()
    }
}

fn with_data(mut job: TrainJob) -> TrainJob {
    for (input, answer) in credit_records(64, 0) {
        job.add_example(INSTRUCTION, &input, &answer, false).unwrap();
    }
    for (input, answer) in credit_records(24, 1000) {
        job.add_example(INSTRUCTION, &input, &answer, true).unwrap();
    }
    job
}

/// (loss, exact-answer share) of an adapter on the held-out records, scored in f32 for
/// both runs (as the engine runs it).
fn judge(adapter: &Path) -> (f64, f64) {
    let mut j = with_data(TrainJob::open(model_path(), options(Precision::F32, Some(adapter.to_path_buf()))).unwrap());
    let v = j.evaluate().unwrap();
    (v.loss, v.exact)
}

/// The band: the curve — mean loss over each 4 steps — within 10% (+0.03) of the f32
/// run's, every single step's within 15% (+0.1) (one batch's loss is noisy: near 0.02 a
/// step's rounding doubles it, and the step after a spike moves most — on AMX tiles, whose
/// sums round differently from the vector kernels', the step after a 2.6 read 0.044 in
/// f32 and 0.120 in bf16, while the held-out loss agreed to 0.4%; the bound was +0.05
/// while only the vector kernels had run); the held-out loss within 5% (+0.02); the final held-out
/// accuracy within one record of 24 (the runs are not bit-equal, so a record near the
/// decision boundary may flip), and both far above the base's.
#[test]
fn bf16_training_follows_the_f32_curve_on_the_credit_example_to_the_same_accuracy() {
    let dir = tmpdir();
    let mut runs = Vec::new();
    let mut base = None;
    for p in [Precision::F32, Precision::Bf16] {
        let mut job = with_data(TrainJob::open(model_path(), options(p, None)).unwrap());
        if base.is_none() {
            base = Some(job.evaluate().unwrap());
        }
        let mut losses = Vec::new();
        job.run(&mut |pr| {
            losses.push(pr.loss);
            true
        })
        .unwrap();
        assert_eq!(job.config().precision, p, "the job records the precision it ran");
        let path = dir.path().join(format!("{}.gguf", p.name()));
        job.export(&path, None).unwrap();
        let (loss, exact) = judge(&path);
        eprintln!("{}: losses {:?}; held-out loss {loss:.4}, exact {exact:.3}", p.name(), losses.iter().map(|l| (l * 1e4).round() / 1e4).collect::<Vec<_>>());
        runs.push((losses, loss, exact));
    }
    let base = base.unwrap();
    eprintln!("base: held-out loss {:.4}, exact {:.3}", base.loss, base.exact);
    let ((f, f_loss, f_exact), (b, b_loss, b_exact)) = (&runs[0], &runs[1]);
    assert_eq!((f.len(), b.len()), (STEPS, STEPS));
    for (i, (x, y)) in f.iter().zip(b).enumerate() {
        assert!((x - y).abs() <= 0.15 * x + 0.1, "step {}: f32 {x} bf16 {y}", i + 1);
    }
    for (i, (x, y)) in f.chunks(4).zip(b.chunks(4)).enumerate() {
        let (x, y) = (x.iter().sum::<f64>() / 4.0, y.iter().sum::<f64>() / 4.0);
        assert!((x - y).abs() <= 0.1 * x + 0.03, "steps {}-{}: mean loss f32 {x} bf16 {y}", 4 * i + 1, 4 * i + 4);
    }
    assert!(f.iter().zip(b).any(|(x, y)| x != y), "bf16 gave the f32 curve to the bit: its products did not run");
    assert!(f[STEPS - 1] < 0.5 * f[0], "the f32 run learned (first loss {}, last {})", f[0], f[STEPS - 1]);
    assert!((f_loss - b_loss).abs() <= 0.05 * f_loss + 0.02, "held-out loss f32 {f_loss} bf16 {b_loss}");
    assert!((f_exact - b_exact).abs() <= 1.0 / 24.0 + 1e-9, "held-out accuracy f32 {f_exact} bf16 {b_exact}");
    assert!(*f_exact >= base.exact + 0.25 && *b_exact >= base.exact + 0.25, "training raised the accuracy: base {}, f32 {f_exact}, bf16 {b_exact}", base.exact);
}
