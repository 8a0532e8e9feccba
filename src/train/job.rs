//! [`TrainJob`]: the personalization loop as one object an app (through the C, Java and
//! Swift SDKs) or a program drives — collect examples (JSONL files or in-memory records),
//! train in steps with a progress callback that can stop, pause and resume, survive the
//! process being killed (checkpoint directory), evaluate, and export the adapter.
//!
//! Life of a job: `open` (the model is checked and its tokenizer loaded) → `add_*`
//! (each record is parsed and tokenized at once, errors name it) → the first `run`,
//! `step` or `evaluate` freezes the training data, fits the memory budget, checks the
//! checkpoint directory and resumes from it when it holds a checkpoint of this job →
//! `run` until finished or stopped (again to continue) → `export`.
//!
//! A resumed job repeats an uninterrupted one exactly (the trainer's data order and
//! updates are a function of seed, configuration, data and step), so the factors after a
//! kill and a resume are bit-identical to a run that was never killed.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::Serialize;
use sha2::{Digest, Sha256};

use super::budget::{self, MemoryEstimate, RunShape};
use super::checkpoint;
use super::data::{parse_record, read_jsonl, tokenize, Example, Record, Sourced};
use super::eval::Validation;
use super::trainer::{StepMetrics, TrainConfig, Trainer};
use super::parent::read_parent;
use crate::adapter::{write_gguf_lora, write_peft, DataRef, FactorDtype, GgufLoraDtype, Lineage, LoraAdapter, ParentRef};
use crate::engine::Vocabulary;
use crate::error::{Error, TrainError};
use crate::gguf::GgufFile;
use crate::model::config::ModelConfig;

/// How a job trains, besides the [`TrainConfig`].
#[derive(Debug, Clone)]
pub struct JobOptions {
    /// Rank, alpha, targets, learning rate, batch, … `steps` 0 means "from `epochs`".
    pub config: TrainConfig,
    /// Passes over the data when `config.steps` is 0.
    pub epochs: usize,
    /// CPU threads for training (0: the process's rayon pool, all cores).
    pub threads: usize,
    /// Sleep between steps (thermal headroom on a phone).
    pub yield_ms: u64,
    /// Peak-memory budget: the job picks checkpointing / a smaller micro-batch to fit, or
    /// refuses before step 1.
    pub max_memory_mb: Option<u64>,
    /// Where the checkpoint lives; a job opened with a directory holding a checkpoint of
    /// the same model, settings and data continues from it.
    pub checkpoint_dir: Option<PathBuf>,
    /// Save a checkpoint every N steps (0: only when stopped and at the end).
    pub save_every: usize,
    /// Adapter name written in the manifest (continuing an adapter: its name by default).
    pub name: Option<String>,
    /// Continue this adapter (GGUF-LoRA or PEFT folder): training starts from its
    /// factors, and its rank, alpha, rsLoRA, targets and layers replace the config's; the
    /// manifest records it as the parent and the round as its round + 1.
    pub init_adapter: Option<PathBuf>,
}

impl Default for JobOptions {
    fn default() -> Self {
        JobOptions { config: TrainConfig { steps: 0, ..TrainConfig::default() }, epochs: 1, threads: 0, yield_ms: 0, max_memory_mb: None, checkpoint_dir: None, save_every: 10, name: None, init_adapter: None }
    }
}

/// What the progress callback sees after each step.
#[derive(Debug, Clone, Serialize)]
pub struct Progress {
    pub step: usize,
    pub total_steps: usize,
    pub epoch: f64,
    pub loss: f64,
    pub lr: f64,
    pub grad_norm: f64,
    pub tokens_per_s: f64,
    /// Remaining time at this run's mean step time.
    pub eta_secs: f64,
}

/// How `run` ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JobOutcome {
    Finished,
    /// Stopped by the callback or [`TrainJob::cancel`]; the checkpoint is saved (when the
    /// job has a directory) and `run` continues where it stopped.
    Cancelled,
}

self_cell::self_cell!(
    /// The mapped base and the trainer borrowing it.
    struct Session {
        owner: GgufFile,
        #[covariant]
        dependent: Trainer,
    }
);

enum Base {
    /// Before training: the model, and the data still open to additions.
    Open(GgufFile),
    Training(Session),
    /// Only while moving from one to the other.
    Moving,
}

/// One on-device training job. `Send`: an app runs it on a worker thread; [`TrainJob::cancel`]
/// (through [`TrainJob::cancel_flag`]) works from any thread.
pub struct TrainJob {
    model_path: PathBuf,
    options: JobOptions,
    tokenizer: Vocabulary,
    base: Base,
    train: Vec<(Sourced, Example)>,
    eval: Vec<(Sourced, Example)>,
    sources: Vec<String>,
    stop: Arc<AtomicBool>,
    memory: Option<MemoryEstimate>,
    pool: Option<rayon::ThreadPool>,
    last: Option<StepMetrics>,
    /// With `init_adapter`: the round and the parent reference for the lineage.
    parent: Option<(u32, ParentRef)>,
}

fn bad(option: &str, reason: impl Into<String>) -> Error {
    TrainError::BadOption { option: option.into(), reason: reason.into() }.into()
}

/// The record as a JSON object in its own format (the data fingerprint hashes these).
fn record_json(r: &Record) -> serde_json::Value {
    match r {
        Record::Alpaca { instruction, input, output } => serde_json::json!({"instruction": instruction, "input": input, "output": output}),
        Record::PromptCompletion { prompt, completion } => serde_json::json!({"prompt": prompt, "completion": completion}),
        Record::Messages(m) => serde_json::json!({"messages": m.iter().map(|m| serde_json::json!({"role": m.role, "content": m.content})).collect::<Vec<_>>()}),
        Record::Text(t) => serde_json::json!({"text": t}),
    }
}

const MEMORY: &str = "<memory>";

impl TrainJob {
    /// Opens the model (checked as every entry point checks it) and its tokenizer. Fails
    /// early on an unusable checkpoint directory or options.
    pub fn open(model_path: impl AsRef<Path>, options: JobOptions) -> Result<TrainJob, Error> {
        let model_path = model_path.as_ref().to_path_buf();
        let base = GgufFile::open(&model_path)?;
        let mc = ModelConfig::from_gguf(&base)?;
        if mc.n_layer == 0 {
            return Err(bad("model", format!("{} has no layers", model_path.display())));
        }
        let mut probe = options.config.clone();
        probe.steps = probe.steps.max(1);
        probe.check()?;
        if options.config.steps == 0 && options.epochs == 0 {
            return Err(bad("steps/epochs", "both are 0: nothing to train"));
        }
        if let Some(0) = options.max_memory_mb {
            return Err(bad("max_memory_mb", "0 MiB"));
        }
        if let Some(dir) = &options.checkpoint_dir {
            check_writable(dir)?;
        }
        let tokenizer = Vocabulary::open(&model_path)?;
        let pool = match options.threads {
            0 => None,
            n => Some(rayon::ThreadPoolBuilder::new().num_threads(n).build().map_err(|e| bad("threads", e.to_string()))?),
        };
        Ok(TrainJob {
            model_path,
            options,
            tokenizer,
            base: Base::Open(base),
            train: Vec::new(),
            eval: Vec::new(),
            sources: Vec::new(),
            stop: Arc::new(AtomicBool::new(false)),
            memory: None,
            pool,
            last: None,
            parent: None,
        })
    }

    fn frozen(&self) -> bool {
        !matches!(self.base, Base::Open(_))
    }

    fn tokenize_record(&self, rec: Sourced, path: &Path) -> Result<(Sourced, Example), Error> {
        let ex = tokenize(&self.tokenizer, &rec, path, self.options.config.max_len, self.options.config.train_on_prompt)?;
        Ok((rec, ex))
    }

    fn push(&mut self, eval: bool, items: Vec<(Sourced, Example)>, source: String) -> Result<(), Error> {
        if !eval && self.frozen() {
            return Err(bad("training data", "training has started: its data is fixed (open a new job to train on more)"));
        }
        if !eval {
            self.sources.push(source);
        }
        if eval { &mut self.eval } else { &mut self.train }.extend(items);
        Ok(())
    }

    /// Adds one `{instruction, input, output}` record (Alpaca); `eval` puts it in the
    /// evaluation set instead of the training data.
    pub fn add_example(&mut self, instruction: &str, input: &str, output: &str, eval: bool) -> Result<(), Error> {
        let n = if eval { self.eval.len() } else { self.train.len() } + 1;
        let path = Path::new(MEMORY);
        let field = |f: &str, reason: &str| -> Error { TrainError::Record { path: path.to_path_buf(), line: n, field: f.into(), reason: reason.into() }.into() };
        if instruction.trim().is_empty() {
            return Err(field("instruction", "is empty"));
        }
        if output.trim().is_empty() {
            return Err(field("output", "is empty: the example has no answer to learn"));
        }
        let rec = Sourced { record: Record::Alpaca { instruction: instruction.into(), input: input.into(), output: output.into() }, line: n };
        let item = self.tokenize_record(rec, path)?;
        self.push(eval, vec![item], MEMORY.into())
    }

    /// Adds one record as JSON in any of the four training formats.
    pub fn add_record_json(&mut self, json: &str, eval: bool) -> Result<(), Error> {
        let n = if eval { self.eval.len() } else { self.train.len() } + 1;
        let path = Path::new(MEMORY);
        let rec = Sourced { record: parse_record(json, path, n)?, line: n };
        let item = self.tokenize_record(rec, path)?;
        self.push(eval, vec![item], MEMORY.into())
    }

    /// Adds every record of a JSONL file (all or none: a bad line adds nothing).
    pub fn add_jsonl(&mut self, path: impl AsRef<Path>, eval: bool) -> Result<usize, Error> {
        let path = path.as_ref();
        let items = read_jsonl(path)?.into_iter().map(|r| self.tokenize_record(r, path)).collect::<Result<Vec<_>, _>>()?;
        let n = items.len();
        self.push(eval, items, path.display().to_string())?;
        Ok(n)
    }

    pub fn n_train(&self) -> usize {
        self.train.len()
    }

    pub fn n_eval(&self) -> usize {
        self.eval.len()
    }

    /// SHA-256 of the training records in order (what a checkpoint is bound to).
    pub fn data_fingerprint(&self) -> String {
        let mut h = Sha256::new();
        for (r, _) in &self.train {
            h.update(record_json(&r.record).to_string().as_bytes());
            h.update(b"\n");
        }
        format!("sha256:{:x}", h.finalize())
    }

    /// The flag `cancel` raises; clone it to stop the job from another thread.
    pub fn cancel_flag(&self) -> Arc<AtomicBool> {
        self.stop.clone()
    }

    /// Asks a running `run` to stop after its current step (any thread, via `cancel_flag`).
    pub fn cancel(&self) {
        self.stop.store(true, Ordering::SeqCst);
    }

    /// The memory estimate the job trains under (after the data is fixed).
    pub fn memory_estimate(&self) -> Option<&MemoryEstimate> {
        self.memory.as_ref()
    }

    /// Steps done and in all (0 in all before the data is fixed).
    pub fn steps(&self) -> (usize, usize) {
        match &self.base {
            Base::Training(s) => (s.borrow_dependent().step, s.borrow_dependent().config.steps),
            _ => (0, 0),
        }
    }

    /// The configuration the job trains with (its steps and memory choices filled in
    /// once the data is fixed).
    pub fn config(&self) -> TrainConfig {
        match &self.base {
            Base::Training(s) => s.borrow_dependent().config.clone(),
            _ => self.options.config.clone(),
        }
    }

    /// Fixes the data and builds the trainer: steps from epochs, the memory budget, the
    /// checkpoint directory (resumed when it holds this job's checkpoint).
    pub fn prepare(&mut self) -> Result<(), Error> {
        match self.base {
            Base::Training(_) => return Ok(()),
            Base::Moving => return Err(bad("job", "an earlier call failed while preparing the run (the job lost its model): open a new job")),
            Base::Open(_) => {}
        }
        if self.train.is_empty() {
            return Err(bad("training data", "no training examples were added"));
        }
        let Base::Open(base) = std::mem::replace(&mut self.base, Base::Moving) else { unreachable!("checked above") };
        match self.build(base) {
            Ok(session) => {
                self.base = Base::Training(session);
                Ok(())
            }
            Err((base, e)) => {
                self.base = Base::Open(base);
                Err(e)
            }
        }
    }

    fn build(&mut self, base: GgufFile) -> Result<Session, (GgufFile, Error)> {
        let mut config = self.options.config.clone();
        if config.steps == 0 {
            config.steps = config.steps_for_epochs(self.options.epochs, self.train.len());
        }
        let mc = match ModelConfig::from_gguf(&base) {
            Ok(mc) => mc,
            Err(e) => return Err((base, e)),
        };
        let parent = match self.options.init_adapter.as_deref().map(|p| read_parent(p, &base)).transpose() {
            Ok(p) => p,
            Err(e) => return Err((base, e)),
        };
        if let Some(p) = &parent {
            (config.rank, config.alpha, config.use_rslora, config.targets, config.layers) = (p.rank, p.alpha, p.rslora, p.targets.clone(), Some(p.layers));
            let path = self.options.init_adapter.as_deref().expect("a parent has a path");
            self.parent = Some((p.next_round(), p.reference(path)));
            if self.options.name.is_none() {
                self.options.name.clone_from(&p.adapter.manifest.name);
            }
        }
        if let Some(mb) = self.options.max_memory_mb {
            let shape = self.run_shape(&mc, &config);
            match budget::fit(&mc, &shape, config.batch, config.grad_checkpoint, mb << 20) {
                Ok(e) => {
                    config.grad_checkpoint = e.checkpoint;
                    config.micro_batch = (e.micro_batch < config.batch).then_some(e.micro_batch);
                    self.memory = Some(e);
                }
                Err(e) => return Err((base, e)),
            }
        } else {
            let shape = self.run_shape(&mc, &config);
            self.memory = Some(budget::estimate(&mc, &shape, config.micro_batch.unwrap_or(config.batch), config.grad_checkpoint));
        }
        if let Some(dir) = &self.options.checkpoint_dir {
            if let Err(e) = check_writable(dir) {
                return Err((base, e));
            }
        }
        let train: Vec<Example> = self.train.iter().map(|(_, e)| e.clone()).collect();
        let eval: Vec<Example> = self.eval.iter().map(|(_, e)| e.clone()).collect();
        let fp = self.data_fingerprint();
        let ckpt = self.options.checkpoint_dir.clone().filter(|d| checkpoint::file_in(d).exists());
        Session::try_new_or_recover(base, |b| -> Result<Trainer<'_>, Error> {
            let mut t = Trainer::new(b, config, train, eval, fp)?;
            if let Some(p) = &parent {
                // Before resuming: the checkpoint's configuration records the parent's fingerprint.
                t.init_from(&p.adapter)?;
            }
            if let Some(dir) = &ckpt {
                t.resume(dir)?;
            }
            Ok(t)
        })
    }

    fn run_shape(&self, mc: &ModelConfig, config: &TrainConfig) -> RunShape {
        let lengths = self.train.iter().map(|(_, e)| e.tokens.len()).collect();
        RunShape::of(mc, config, std::fs::metadata(&self.model_path).map(|m| m.len()).unwrap_or(0), lengths)
    }

    fn session(&mut self) -> Result<&mut Session, Error> {
        self.prepare()?;
        match &mut self.base {
            Base::Training(s) => Ok(s),
            _ => Err(bad("job", "an earlier call failed while preparing the run (the job lost its model): open a new job")),
        }
    }

    /// One optimizer step (prepares the job first). Saves a checkpoint when one is due.
    pub fn step(&mut self) -> Result<StepMetrics, Error> {
        let dir = self.options.checkpoint_dir.clone();
        let every = self.options.save_every;
        let pool = self.pool.take();
        let result = (|| {
            let s = self.session()?;
            s.with_dependent_mut(|_, t| -> Result<StepMetrics, Error> {
                if t.step >= t.config.steps {
                    return Err(bad("steps", format!("the job has finished its {} steps", t.config.steps)));
                }
                let m = match &pool {
                    Some(p) => p.install(|| t.train_step())?,
                    None => t.train_step()?,
                };
                if let Some(d) = &dir {
                    if (every > 0 && t.step.is_multiple_of(every)) || t.step == t.config.steps {
                        t.save_checkpoint(d)?;
                    }
                }
                Ok(m)
            })
        })();
        self.pool = pool;
        if let Ok(m) = &result {
            self.last = Some(m.clone());
        }
        result
    }

    /// Runs to the last step. `on_progress` (on this thread, after each step) returns
    /// false to stop; [`TrainJob::cancel`] from another thread stops too. Either way the
    /// checkpoint is saved and `Cancelled` returned; calling `run` again continues.
    pub fn run(&mut self, on_progress: &mut dyn FnMut(&Progress) -> bool) -> Result<JobOutcome, Error> {
        self.prepare()?;
        let t0 = Instant::now();
        let mut done_here = 0usize;
        loop {
            let (step, total) = self.steps();
            if step >= total {
                return Ok(JobOutcome::Finished);
            }
            if self.stop.swap(false, Ordering::SeqCst) {
                self.save_checkpoint()?;
                return Ok(JobOutcome::Cancelled);
            }
            let m = self.step()?;
            done_here += 1;
            let per_step = t0.elapsed().as_secs_f64() / done_here as f64;
            let p = Progress {
                step: m.step,
                total_steps: total,
                epoch: m.epoch,
                loss: m.loss,
                lr: m.lr,
                grad_norm: m.grad_norm,
                tokens_per_s: m.tokens_per_s,
                eta_secs: per_step * (total - m.step) as f64,
            };
            if !on_progress(&p) {
                self.stop.store(false, Ordering::SeqCst);
                if m.step < total {
                    self.save_checkpoint()?;
                    return Ok(JobOutcome::Cancelled);
                }
            }
            if self.options.yield_ms > 0 && m.step < total {
                std::thread::sleep(Duration::from_millis(self.options.yield_ms));
            }
        }
    }

    /// Writes the checkpoint now (nothing without a checkpoint directory).
    pub fn save_checkpoint(&mut self) -> Result<(), Error> {
        let Some(dir) = self.options.checkpoint_dir.clone() else { return Ok(()) };
        let s = self.session()?;
        s.borrow_dependent().save_checkpoint(&dir)
    }

    /// Loss and greedy exact-answer share of the evaluation records (added with
    /// `eval = true`) with the current factors — before training, of the base.
    pub fn evaluate(&mut self) -> Result<Validation, Error> {
        if self.eval.is_empty() {
            return Err(bad("evaluation data", "no evaluation examples were added"));
        }
        let examples: Vec<Example> = self.eval.iter().map(|(_, e)| e.clone()).collect();
        let pool = self.pool.take();
        let result = (|| {
            let s = self.session()?;
            let t = s.borrow_dependent();
            match &pool {
                Some(p) => p.install(|| t.validate_on(&examples)),
                None => t.validate_on(&examples),
            }
        })();
        self.pool = pool;
        result
    }

    /// The adapter as trained so far (factors rounded to f16, manifest with the data
    /// fingerprint, configuration, lineage and `training` metrics).
    pub fn adapter(&mut self) -> Result<LoraAdapter, Error> {
        let name = self.options.name.clone();
        let fp = self.data_fingerprint();
        let sources = self.sources.clone();
        let (n_train, last) = (self.train.len(), self.last.clone());
        let memory = self.memory;
        let parent = self.parent.clone();
        let round = parent.as_ref().map_or(1, |p| p.0);
        let s = self.session()?;
        let t = s.borrow_dependent();
        let summary = serde_json::json!({
            "steps": t.step,
            "total_steps": t.config.steps,
            "examples": n_train,
            "final_train_loss": last.as_ref().map(|m| m.loss),
            "memory_estimate_mb": memory.map(|m| m.total_mb()),
            "round": round,
        });
        let mut a = t.to_adapter(s.borrow_owner(), summary)?;
        a.manifest.source = Some("edgelora TrainJob".into());
        a.manifest.name = name;
        let mut seen = std::collections::BTreeSet::new();
        let data = sources.into_iter().filter(|s| seen.insert(s.clone())).map(|p| DataRef { path: p, fingerprint: fp.clone(), role: "new".into(), fraction: None }).collect();
        a.manifest.lineage = Some(Lineage { round, parent: parent.map(|p| p.1), data });
        Ok(a)
    }

    /// Writes the adapter as GGUF-LoRA (f16, atomically) and, with `peft_dir`, as a PEFT folder.
    pub fn export(&mut self, path: impl AsRef<Path>, peft_dir: Option<&Path>) -> Result<LoraAdapter, Error> {
        let a = self.adapter()?;
        write_gguf_lora(&a, path.as_ref(), GgufLoraDtype::F16)?;
        if let Some(dir) = peft_dir {
            let s = self.session()?;
            write_peft(&a, dir, s.borrow_owner(), Some(FactorDtype::F16))?;
        }
        Ok(a)
    }
}

/// Creates `dir` and writes a probe file in it, so an unusable checkpoint directory is an
/// error before step 1, not after an hour of training.
fn check_writable(dir: &Path) -> Result<(), Error> {
    let err = |reason: String| -> Error { TrainError::Checkpoint { path: dir.to_path_buf(), reason }.into() };
    if dir.exists() && !dir.is_dir() {
        return Err(err("is not a directory".into()));
    }
    std::fs::create_dir_all(dir).map_err(|e| err(format!("cannot create the checkpoint directory: {e}")))?;
    tempfile::NamedTempFile::new_in(dir).map(drop).map_err(|e| err(format!("cannot write in the checkpoint directory: {e}")))
}

#[allow(dead_code)]
fn assert_send() {
    fn is_send<T: Send>() {}
    is_send::<TrainJob>();
}
