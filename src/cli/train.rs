//! `edgelora train`: a LoRA adapter trained on the frozen quantized base, exported as
//! GGUF-LoRA (and optionally PEFT), with checkpoints, resume, a metrics file and Ctrl-C.

use std::io::Write;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};

use edgelora::adapter::{write_gguf_lora, write_peft, DataRef, FactorDtype, GgufLoraDtype, Lineage};
use edgelora::engine::Vocabulary;
use edgelora::gguf::GgufFile;
use edgelora::model::precision::Precision;
use edgelora::train::data::{fingerprint, Dataset};
use edgelora::train::optim::{AdamW, Schedule};
use edgelora::train::report::{duplicates_to_drop, BalanceSpec, DataFile, DataReport};
use edgelora::train::auto::{search, AutoOptions};
use edgelora::train::trainer::replay_draws;
use edgelora::train::budget::{estimate, fit, peak_rss_bytes, RunShape};
use edgelora::train::parent::{read_parent, Parent};
use edgelora::train::{parse_targets, Outcome, TrainConfig, Trainer};

#[derive(Args)]
pub struct TrainArgs {
    /// The base model (stays quantized and frozen)
    #[arg(long, short = 'm', default_value = super::DEFAULT_MODEL)]
    model: PathBuf,
    /// Training data, JSONL: {instruction,input,output} | {prompt,completion} | {messages} | {text}
    #[arg(long)]
    data: PathBuf,
    /// Validation data (JSONL); its loss is reported before and after training
    #[arg(long = "eval")]
    eval: Option<PathBuf>,
    /// Without --eval: hold out this fraction of --data for validation
    #[arg(long, default_value_t = 0.0)]
    val_split: f64,
    /// Output adapter (GGUF-LoRA, f16)
    #[arg(long)]
    out: PathBuf,
    /// Also write the adapter as a PEFT folder
    #[arg(long, value_name = "DIR")]
    peft_out: Option<PathBuf>,
    /// LoRA rank [default: 16; with --init-adapter: the adapter's]
    #[arg(long)]
    rank: Option<usize>,
    /// LoRA alpha (scale alpha/rank) [default: 32; with --init-adapter: the adapter's]
    #[arg(long)]
    alpha: Option<f32>,
    /// rsLoRA scaling: alpha/√rank
    #[arg(long)]
    rslora: bool,
    /// Modules: q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj,down_proj (or attn_q, …; qkv_proj and gate_up_proj for both parts, phi3's fused tensors) or all-linear
    /// [default: q_proj,v_proj; with --init-adapter: the adapter's]
    #[arg(long)]
    targets: Option<String>,
    /// Layers trained, FIRST-LAST (default: all). Above 0, the frozen layers below FIRST run
    /// once per example, not once per step (their outputs are kept, up to 256 MiB)
    #[arg(long, value_name = "FIRST-LAST")]
    layers: Option<String>,
    /// Peak learning rate
    #[arg(long, default_value_t = 3e-4)]
    lr: f64,
    /// Passes over the data (ignored with --steps)
    #[arg(long, default_value_t = 1)]
    epochs: usize,
    /// Optimizer steps (overrides --epochs)
    #[arg(long)]
    steps: Option<usize>,
    /// Examples per micro-batch
    #[arg(long, default_value_t = 8)]
    batch: usize,
    /// Micro-batches per optimizer step
    #[arg(long, default_value_t = 1)]
    grad_accum: usize,
    /// Learning-rate schedule: constant, linear, cosine
    #[arg(long, default_value = "cosine")]
    schedule: String,
    /// Fraction of the steps spent warming up linearly from 0
    #[arg(long, default_value_t = 0.03)]
    warmup_ratio: f64,
    /// AdamW decoupled weight decay
    #[arg(long, default_value_t = 0.0)]
    weight_decay: f64,
    /// Clip the global gradient norm to this (0 = off)
    #[arg(long, default_value_t = 1.0)]
    max_grad_norm: f64,
    /// Tokens per example (longer ones are cut)
    #[arg(long, default_value_t = 512)]
    max_len: usize,
    /// Recompute each layer's forward in backward (less memory, ~1/3 more compute)
    #[arg(long)]
    grad_checkpoint: bool,
    /// Peak-memory budget in MiB: estimated before step 1 and fitted with checkpointing or
    /// smaller micro-batches (same result), or refused
    #[arg(long, value_name = "MIB")]
    max_memory_mb: Option<u64>,
    /// Loss on prompt tokens too (default: only on responses)
    #[arg(long)]
    train_on_prompt: bool,
    /// Order each epoch in length-sorted groups of 50 batches
    #[arg(long)]
    group_by_length: bool,
    /// Precision of the products with the frozen base: f32, bf16 (bf16 operands, f32 sums;
    /// LoRA factors, gradients and optimizer state stay f32), or auto (bf16 where the CPU
    /// has AMX tiles, the one place it is faster, else f32). bf16 on a CPU without
    /// AVX512-BF16 is emulated: same values, slower
    #[arg(long, value_parser = ["f32", "bf16", "auto"], default_value = "f32")]
    precision: String,
    /// Where training runs: cpu (gpu training is not implemented)
    #[arg(long, value_parser = ["cpu", "gpu"], default_value = "cpu")]
    device: String,
    /// CPU threads (default: all cores)
    #[arg(long, short = 't')]
    threads: Option<usize>,
    /// Random seed (initialization and data order)
    #[arg(long, default_value_t = 42)]
    seed: u64,
    /// Continue the run whose checkpoint directory this is
    #[arg(long, value_name = "DIR")]
    resume: Option<PathBuf>,
    /// Checkpoint directory (default: OUT.ckpt)
    #[arg(long, value_name = "DIR")]
    checkpoint_dir: Option<PathBuf>,
    /// Save a checkpoint every N steps (0: only at the end and on Ctrl-C)
    #[arg(long, default_value_t = 50)]
    save_every: usize,
    /// Per-step metrics, JSON lines (default: OUT.metrics.jsonl; appended on --resume)
    #[arg(long, value_name = "FILE")]
    metrics: Option<PathBuf>,
    /// Drop exact and near duplicates of --data (the first of each group is kept;
    /// contradicting records are reported, never dropped)
    #[arg(long)]
    dedup: bool,
    /// Sample training examples by group: label (the answer's first word) or scenario (the
    /// records' `scenario` field), in equal shares or RATIOS (`name:w,…` or `w1:w2:…` over
    /// the sorted group names)
    #[arg(long, value_name = "label|scenario[=RATIOS]")]
    balance: Option<String>,
    /// Continue this adapter (GGUF-LoRA or PEFT): step 0 is its factors; rank, alpha,
    /// targets and layers come from it (conflicting flags are refused); the manifest
    /// records it as the parent and the round as the parent's + 1
    #[arg(long, value_name = "ADAPTER")]
    init_adapter: Option<PathBuf>,
    /// With --init-adapter: keep the AdamW moments of this checkpoint directory (default: fresh)
    #[arg(long, value_name = "CKPT_DIR", requires = "init_adapter")]
    init_optimizer: Option<PathBuf>,
    /// Mix earlier data into every micro-batch: OLD.jsonl[:FRACTION] (default 0.2), deterministic for the seed
    #[arg(long, value_name = "OLD.jsonl[:FRACTION]")]
    replay: Option<String>,
    /// Choose the recipe automatically: hold out a validation split (--eval, --val-split, or
    /// 15% drawn with the seed), screen learning rates, ranks and targets, extend the best
    /// with early stopping, then train it on all the data — all within --budget-minutes;
    /// the search and the choice go in the manifest
    #[arg(long, conflicts_with_all = ["rank", "alpha", "rslora", "targets", "lr", "epochs", "steps", "resume", "init_adapter", "replay", "balance"])]
    auto: bool,
    /// Score the validation data every N steps (its loss goes in the metrics file and the plot)
    #[arg(long, value_name = "N")]
    eval_every: Option<usize>,
    /// Draw the training curves (loss per step, validation loss, learning rate) to FILE.png or
    /// FILE.svg; with --auto, the search (validation loss and exact share per epoch, a line per recipe)
    #[arg(long, value_name = "FILE")]
    plot: Option<PathBuf>,
    /// --auto's wall-clock budget for the search and the final training
    #[arg(long, default_value_t = 15.0, requires = "auto")]
    budget_minutes: f64,
}

/// `--replay OLD.jsonl[:FRACTION]`.
fn parse_replay(s: &str) -> Result<(PathBuf, f64)> {
    if let Some((p, f)) = s.rsplit_once(':') {
        if let Ok(x) = f.parse::<f64>() {
            if !(x > 0.0 && x < 1.0) {
                bail!("--replay {s:?}: the fraction {x} must be in (0, 1)");
            }
            return Ok((PathBuf::from(p), x));
        }
    }
    Ok((PathBuf::from(s), 0.2))
}

/// Ctrl-C stopped the run after a checkpoint was saved (exit code 130).
#[derive(Debug)]
pub struct Interrupted(pub String);

impl std::fmt::Display for Interrupted {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Interrupted {}

fn with_suffix(p: &std::path::Path, suffix: &str) -> PathBuf {
    let mut s = p.as_os_str().to_owned();
    s.push(suffix);
    PathBuf::from(s)
}

pub fn run(a: TrainArgs) -> Result<()> {
    let t0 = std::time::Instant::now();
    let r = run_training(a);
    if edgelora::model::profile::enabled() {
        // EDGELORA_PROFILE=1: where the run's time went, on stderr (stdout is the summary).
        let wall = t0.elapsed().as_secs_f64();
        let mut ops: Vec<(String, (f64, u64))> = edgelora::model::profile::take().into_iter().collect();
        ops.sort_by(|x, y| y.1 .0.total_cmp(&x.1 .0));
        eprintln!("\nprofile (EDGELORA_PROFILE=1), whole run of {wall:.1} s:\n| operation | seconds | calls | share of the run |\n|---|---:|---:|---:|");
        for (op, (secs, calls)) in &ops {
            eprintln!("| {op} | {secs:.2} | {calls} | {:.1}% |", 100.0 * secs / wall.max(1e-9));
        }
        let total: f64 = ops.iter().map(|o| o.1 .0).sum();
        eprintln!("| all profiled | {total:.2} | | {:.1}% |", 100.0 * total / wall.max(1e-9));
    }
    r
}

fn run_training(a: TrainArgs) -> Result<()> {
    if a.device == "gpu" {
        bail!("--device gpu: training on wgpu is not implemented; train on the CPU (--device cpu)");
    }
    let replay = a.replay.as_deref().map(parse_replay).transpose()?;
    if let Some(p) = &a.plot {
        super::plot::check_path(p)?;
    }
    if let Some(t) = a.threads {
        let _ = rayon::ThreadPoolBuilder::new().num_threads(t.max(1)).build_global();
    }
    let stop = Arc::new(AtomicBool::new(false));
    {
        let stop = stop.clone();
        ctrlc::set_handler(move || stop.store(true, Ordering::SeqCst)).context("installing the Ctrl-C handler")?;
    }
    let t_start = Instant::now();
    let base = GgufFile::open(&a.model).with_context(|| format!("reading base model {}", a.model.display()))?;
    let vocab = Vocabulary::open(&a.model).with_context(|| format!("loading the vocabulary of {}", a.model.display()))?;
    let mut data = Dataset::load(&vocab, &a.data, a.max_len, a.train_on_prompt)?;
    let report = DataReport::build(&[DataFile { path: a.data.clone(), records: data.records.clone() }], Some(&vocab), a.max_len, a.train_on_prompt)?;
    eprintln!("{}", report.summary());
    if a.dedup {
        let drop = duplicates_to_drop(&data.records);
        data = data.without(&drop);
        eprintln!("--dedup: dropped {} duplicate records, {} remain", drop.len(), data.records.len());
    }
    let (train, val) = match &a.eval {
        Some(p) => (data, Some(Dataset::load(&vocab, p, a.max_len, a.train_on_prompt)?)),
        None if a.auto => {
            let (t, v) = data.split_seeded(if a.val_split > 0.0 { a.val_split } else { 0.15 }, a.seed);
            (t, Some(v))
        }
        None if a.val_split > 0.0 => {
            let (t, v) = data.split(a.val_split);
            (t, Some(v))
        }
        None => (data, None),
    };
    let replay_data = match &replay {
        Some((p, _)) => Some(Dataset::load(&vocab, p, a.max_len, a.train_on_prompt).with_context(|| format!("reading --replay {}", p.display()))?),
        None => None,
    };
    drop(vocab);
    let mut fp_paths = vec![a.data.as_path()];
    if let Some(p) = &a.eval {
        fp_paths.push(p);
    }
    if let Some((p, _)) = &replay {
        fp_paths.push(p);
    }
    let data_fp = fingerprint(&fp_paths)?;
    let mut layers = match &a.layers {
        None => None,
        Some(s) => {
            let (x, y) = s.split_once('-').with_context(|| format!("--layers {s:?}: expected FIRST-LAST"))?;
            Some((x.trim().parse().with_context(|| format!("--layers {s:?}"))?, y.trim().parse().with_context(|| format!("--layers {s:?}"))?))
        }
    };
    let parent = a.init_adapter.as_deref().map(|p| read_parent(p, &base).with_context(|| format!("reading --init-adapter {}", p.display()))).transpose()?;
    let (mut rank, mut alpha, mut rslora, mut targets) = (a.rank.unwrap_or(16), a.alpha.unwrap_or(32.0), a.rslora, parse_targets(a.targets.as_deref().unwrap_or("q_proj,v_proj"))?);
    if let Some(p) = &parent {
        let path = a.init_adapter.as_ref().expect("a parent has a path").display().to_string();
        let conflict = |flag: &str, given: String, theirs: String| anyhow::anyhow!("{flag} {given} conflicts with --init-adapter {path} ({theirs}); drop {flag}");
        if let Some(r) = a.rank.filter(|&r| r != p.rank) {
            return Err(conflict("--rank", r.to_string(), format!("rank {}", p.rank)));
        }
        if let Some(x) = a.alpha.filter(|&x| (x - p.alpha).abs() > 1e-4 * p.alpha.abs().max(1.0)) {
            return Err(conflict("--alpha", x.to_string(), format!("alpha {}", p.alpha)));
        }
        if a.rslora && !p.rslora {
            return Err(conflict("--rslora", "".into(), "not rsLoRA".into()));
        }
        if let Some(t) = &a.targets {
            let mut given = parse_targets(t)?;
            let mut theirs = p.targets.clone();
            given.sort();
            theirs.sort();
            if given != theirs {
                return Err(conflict("--targets", t.clone(), format!("targets {}", p.targets.join(","))));
            }
        }
        if let Some(l) = layers.filter(|&l| l != p.layers) {
            return Err(conflict("--layers", format!("{}-{}", l.0, l.1), format!("layers {}-{}", p.layers.0, p.layers.1)));
        }
        (rank, alpha, rslora, targets) = (p.rank, p.alpha, p.rslora, p.targets.clone());
        layers = Some(p.layers);
    }

    let mut config = TrainConfig {
        rank,
        alpha,
        use_rslora: rslora,
        targets,
        layers,
        lr: a.lr,
        schedule: a.schedule.parse::<Schedule>().map_err(|e| anyhow::anyhow!("--schedule: {e}"))?,
        warmup_ratio: a.warmup_ratio,
        steps: 1,
        batch: a.batch,
        grad_accum: a.grad_accum,
        max_len: a.max_len,
        optimizer: AdamW { weight_decay: a.weight_decay, ..AdamW::default() },
        max_grad_norm: a.max_grad_norm,
        seed: a.seed,
        grad_checkpoint: a.grad_checkpoint,
        train_on_prompt: a.train_on_prompt,
        group_by_length: a.group_by_length,
        balance: a.balance.clone(),
        dedup: a.dedup,
        replay: replay.as_ref().map(|(_, f)| *f),
        init_fingerprint: None,
        micro_batch: None,
        // `Trainer::new` resolves auto for this CPU and records it resolved.
        precision: a.precision.parse::<Precision>().map_err(|e| anyhow::anyhow!("--precision: {e}"))?,
    };
    if replay.is_some() && (a.balance.is_some() || a.group_by_length) {
        bail!("--replay cannot be combined with --balance or --group-by-length");
    }
    let balance = match &a.balance {
        None => None,
        Some(b) => {
            let spec: BalanceSpec = b.parse()?;
            let (groups, of_example) = spec.groups(&a.data, &train.records)?;
            eprintln!("--balance: {}", groups.iter().map(|(n, s)| format!("{n} {:.1}%", s * 100.0)).collect::<Vec<_>>().join(", "));
            Some((groups.into_iter().map(|(_, s)| s).collect::<Vec<f64>>(), of_example))
        }
    };
    if a.auto {
        let opts = AutoOptions { budget_secs: a.budget_minutes * 60.0, ..AutoOptions::default() };
        let val_examples = val.map(|v| v.examples).unwrap_or_default();
        eprintln!("--auto: {} training and {} validation examples, budget {:.1} min", train.examples.len(), val_examples.len(), a.budget_minutes);
        let (trainer, report) = search(&base, &config, train.examples, val_examples, data_fp, &opts, &mut |line| eprintln!("auto: {line}"))?;
        let summary = serde_json::json!({
            "steps": trainer.step,
            "examples": report.n_train + if report.final_on == "all" { report.n_val } else { 0 },
            "wall_secs": t_start.elapsed().as_secs_f64(),
            "round": 1,
            "auto": report,
        });
        export(&a, &base, &trainer, summary, None, None)?;
        if let Some(p) = &a.plot {
            let curves: Vec<super::plot::SearchCurve> = report
                .trials
                .iter()
                .enumerate()
                .map(|(i, t)| super::plot::SearchCurve { label: t.recipe.label(), points: t.points.iter().map(|p| (p.epoch, p.val_loss, p.val_exact)).collect(), chosen: i == report.chosen })
                .collect();
            let name = a.out.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
            super::plot::search_curves(p, &curves, report.chosen_epochs, &format!("edgelora train --auto: {name}"))?;
            eprintln!("wrote {}", p.display());
        }
        return Ok(());
    }
    let n_train = train.examples.len();
    let epoch_len = match &replay {
        Some((_, f)) => n_train + replay_draws(n_train, *f),
        None => n_train,
    };
    config.steps = a.steps.unwrap_or_else(|| config.steps_for_epochs(a.epochs, epoch_len));
    let val_examples = val.map(|v| v.examples).unwrap_or_default();
    let val_count = val_examples.len();
    let mut examples = train.examples;
    if let Some(r) = replay_data {
        eprintln!("--replay: {} earlier examples, {} drawn per epoch ({:.0}% of every batch)", r.examples.len(), epoch_len - n_train, replay.as_ref().map_or(0.0, |x| x.1) * 100.0);
        examples.extend(r.examples);
    }
    let mc = edgelora::model::config::ModelConfig::from_gguf(&base)?;
    let shape = RunShape::of(&mc, &config, std::fs::metadata(&a.model).map(|m| m.len()).unwrap_or(0), examples.iter().map(|e| e.tokens.len()).collect());
    let plan = match a.max_memory_mb {
        Some(mb) => {
            let e = fit(&mc, &shape, config.batch, config.grad_checkpoint, mb << 20)?;
            config.grad_checkpoint = e.checkpoint;
            config.micro_batch = (e.micro_batch < config.batch).then_some(e.micro_batch);
            e
        }
        None => estimate(&mc, &shape, config.batch, config.grad_checkpoint),
    };
    eprintln!(
        "memory: about {:.0} MiB at peak ({} examples per forward{}){}",
        plan.total_mb(),
        plan.micro_batch,
        if plan.checkpoint { ", gradient checkpointing" } else { "" },
        a.max_memory_mb.map(|b| format!(", budget {b} MiB")).unwrap_or_default()
    );
    let mut trainer = Trainer::new(&base, config, examples, val_examples, data_fp)?;
    if let Some((shares, of_example)) = balance {
        trainer.set_balance(shares, of_example)?;
    }
    if let Some((_, f)) = &replay {
        trainer.set_replay(n_train, *f)?;
    }
    if let Some(p) = &parent {
        // Before --resume: the checkpoint's configuration records the parent's fingerprint.
        trainer.init_from(&p.adapter)?;
        if let Some(dir) = &a.init_optimizer {
            trainer.init_optimizer(dir).with_context(|| format!("--init-optimizer {}", dir.display()))?;
        }
        eprintln!("continuing {} (round {}): rank {}, alpha {}, targets {}, layers {}-{}", a.init_adapter.as_ref().expect("a parent has a path").display(), p.next_round() - 1, p.rank, p.alpha, p.targets.join(","), p.layers.0, p.layers.1);
    }
    let ckpt_dir = a.checkpoint_dir.clone().unwrap_or_else(|| with_suffix(&a.out, ".ckpt"));
    if let Some(r) = &a.resume {
        trainer.resume(r).with_context(|| format!("resuming from {}", r.display()))?;
        eprintln!("resumed at step {}/{}", trainer.step, trainer.config.steps);
    }
    let metrics_path = a.metrics.clone().unwrap_or_else(|| with_suffix(&a.out, ".metrics.jsonl"));
    let mut metrics = std::fs::OpenOptions::new()
        .create(true)
        .write(true)
        .append(a.resume.is_some())
        .truncate(a.resume.is_none())
        .open(&metrics_path)
        .with_context(|| format!("opening the metrics file {}", metrics_path.display()))?;
    let n_params: usize = trainer.params.values().map(|p| p.a.len() + p.b.len()).sum();
    eprintln!(
        "training {} LoRA tensors ({n_params} parameters, r {} alpha {}) on {n_train} examples: {} steps of {}×{} examples",
        trainer.params.len(),
        trainer.config.rank,
        trainer.config.alpha,
        trainer.config.steps,
        trainer.config.batch,
        trainer.config.grad_accum
    );
    if trainer.config.precision == Precision::Bf16 {
        let how = edgelora::compute::bf16::describe();
        eprintln!("precision: bf16 products with the frozen base, f32 sums and master weights; {how}");
    }
    let eval_before = if trainer.step == 0 { trainer.eval_loss()? } else { None };
    if let Some(l) = eval_before {
        writeln!(metrics, "{}", serde_json::json!({"step": 0, "eval_loss": l}))?;
    }
    let bar = ProgressBar::new(trainer.config.steps as u64);
    bar.set_style(ProgressStyle::with_template("{bar:30} {pos}/{len} steps [{elapsed_precise} < {eta_precise}] {msg}").expect("valid template"));
    bar.set_position(trainer.step as u64);
    let (mut tokens, mut secs, mut last_loss) = (0usize, 0f64, f64::NAN);
    let mut write_err = None;
    let every = a.eval_every.filter(|&n| n > 0 && val_count > 0).unwrap_or(usize::MAX);
    let outcome = loop {
        let until = trainer.step.saturating_add(every).min(trainer.config.steps);
        let outcome = trainer.run_to(until, &stop, Some(&ckpt_dir), a.save_every, &mut |m| {
            tokens += m.tokens;
            secs += m.secs;
            last_loss = m.loss;
            bar.set_position(m.step as u64);
            bar.set_message(format!("loss {:.4}  gnorm {:.3}  lr {:.2e}  {:.0} tok/s", m.loss, m.grad_norm, m.lr, m.tokens_per_s));
            if let Err(e) = writeln!(metrics, "{}", serde_json::to_string(m).expect("metrics serialize")).and_then(|_| metrics.flush()) {
                write_err.get_or_insert(e);
            }
        })?;
        if outcome == Outcome::Interrupted || trainer.step >= trainer.config.steps {
            break outcome;
        }
        if let Some(l) = trainer.eval_loss()? {
            writeln!(metrics, "{}", serde_json::json!({"step": trainer.step, "eval_loss": l}))?;
            bar.println(format!("step {}: validation loss {l:.4}", trainer.step));
        }
    };
    bar.finish_and_clear();
    if let Some(e) = write_err {
        return Err(e).with_context(|| format!("writing the metrics file {}", metrics_path.display()));
    }
    if outcome == Outcome::Interrupted {
        return Err(Interrupted(format!("interrupted at step {}/{}; checkpoint saved in {} (continue with --resume {})", trainer.step, trainer.config.steps, ckpt_dir.display(), ckpt_dir.display())).into());
    }
    let eval_after = trainer.eval_loss()?;
    if let Some(l) = eval_after {
        writeln!(metrics, "{}", serde_json::json!({"step": trainer.step, "eval_loss": l}))?;
    }
    drop(metrics);
    let summary = serde_json::json!({
        "steps": trainer.step,
        "examples": n_train,
        "final_train_loss": last_loss,
        "eval_loss_before": eval_before,
        "eval_loss_after": eval_after,
        "train_tokens_this_run": tokens,
        "train_secs_this_run": secs,
        "tokens_per_s": tokens as f64 / secs.max(1e-9),
        "wall_secs": t_start.elapsed().as_secs_f64(),
        "round": parent.as_ref().map_or(1, Parent::next_round),
        "memory_estimate_mb": plan.total_mb(),
        "peak_rss_mb": peak_rss_bytes().map(|b| b as f64 / (1u64 << 20) as f64),
    });
    export(&a, &base, &trainer, summary, parent.as_ref(), replay.as_ref())?;
    if let Some(p) = &a.plot {
        plot_metrics(&metrics_path, p, &a.out)?;
    }
    Ok(())
}

/// Draws the training curves from the metrics file (every step of this run and, after
/// --resume, of the runs before it).
fn plot_metrics(metrics: &std::path::Path, out: &std::path::Path, adapter: &std::path::Path) -> Result<()> {
    let text = std::fs::read_to_string(metrics).with_context(|| format!("reading the metrics file {}", metrics.display()))?;
    let (mut steps, mut eval) = (Vec::new(), Vec::new());
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        let v: serde_json::Value = serde_json::from_str(line).with_context(|| format!("metrics file {}: a line is not JSON", metrics.display()))?;
        let step = v["step"].as_f64().unwrap_or(0.0);
        match (v["loss"].as_f64(), v["lr"].as_f64(), v["eval_loss"].as_f64()) {
            (Some(loss), Some(lr), _) => steps.push(super::plot::StepPoint { step, loss, lr }),
            (_, _, Some(l)) => eval.push((step, l)),
            _ => {}
        }
    }
    let name = adapter.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    super::plot::training_curves(out, &steps, &eval, &format!("edgelora train: {name}"))?;
    eprintln!("wrote {}", out.display());
    Ok(())
}

/// Writes the trained adapter (GGUF-LoRA, and PEFT with --peft-out) with its manifest's
/// lineage, and prints the summary.
fn export(a: &TrainArgs, base: &GgufFile, trainer: &Trainer, summary: serde_json::Value, parent: Option<&Parent>, replay: Option<&(PathBuf, f64)>) -> Result<()> {
    let mut adapter = trainer.to_adapter(base, summary.clone())?;
    let mut data_refs = vec![DataRef { path: a.data.display().to_string(), fingerprint: fingerprint(&[a.data.as_path()])?, role: "new".into(), fraction: None }];
    if let Some((p, f)) = replay {
        data_refs.push(DataRef { path: p.display().to_string(), fingerprint: fingerprint(&[p.as_path()])?, role: "replay".into(), fraction: Some(*f) });
    }
    adapter.manifest.lineage = Some(Lineage {
        round: parent.map_or(1, Parent::next_round),
        parent: parent.map(|p| p.reference(a.init_adapter.as_ref().expect("a parent has a path"))),
        data: data_refs,
    });
    if let Some(p) = parent {
        adapter.manifest.name.clone_from(&p.adapter.manifest.name);
    }
    write_gguf_lora(&adapter, &a.out, GgufLoraDtype::F16).with_context(|| format!("writing {}", a.out.display()))?;
    if let Some(dir) = &a.peft_out {
        write_peft(&adapter, dir, base, Some(FactorDtype::F16)).with_context(|| format!("writing the PEFT folder {}", dir.display()))?;
    }
    println!("{}", serde_json::to_string_pretty(&summary)?);
    eprintln!("wrote {}", a.out.display());
    Ok(())
}
