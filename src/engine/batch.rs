//! Continuous batching on the native engine: many requests, each with its own adapter
//! set, decoded together. A scheduler thread owns the running batch; between two steps
//! finished sequences leave and waiting ones join. Each step is one
//! [`NativeModel::forward_batch`](crate::model::NativeModel::forward_batch): every base
//! projection runs once over all rows, each adapter's B·(A·x) over the rows of the
//! sequences that use it — on the host, or on the device when the model runs its whole
//! forward there (`--device gpu`). Prompts enter in chunks (`prefill_chunk` tokens per step across
//! all sequences), so a long prompt does not stall the others' decoding.
//!
//! Each sequence has its own KV cache (host or device memory), reserved in full when it is admitted (prompt +
//! `max_tokens` positions, at most `n_ctx`) from a pool of `kv_memory_bytes`: a request
//! waits while the pool is full and is refused when it could never fit. Finished
//! sequences' caches stay in the pool as a prompt cache (oldest evicted first when
//! room is needed); a new request reuses one only under the same adapter set (the same
//! loads and scales) and only for the common token prefix.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc::{channel, Receiver, Sender};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Instant;

use super::decode::{Decoder, Vocab};
use super::native::{ActiveSet, NativeRuntime};
use super::request::{CancelFlag, GenerateRequest, Generation, StopReason};
use super::sampler::Sampler;
use crate::adapter::LoraAdapter;
use crate::error::{EngineError, Result};
use crate::model::{BatchItem, Session};

/// How the batcher schedules.
#[derive(Debug, Clone)]
pub struct BatchOptions {
    /// Sequences stepped together at most.
    pub max_batch: usize,
    /// The KV pool: running sequences' reservations plus the prompt cache.
    pub kv_memory_bytes: usize,
    /// Prompt tokens computed per step, shared by the sequences still in their prompt.
    pub prefill_chunk: usize,
    /// Positions per sequence at most (prompt + generated).
    pub n_ctx: usize,
}

impl Default for BatchOptions {
    fn default() -> Self {
        BatchOptions { max_batch: 16, kv_memory_bytes: 1 << 30, prefill_chunk: 64, n_ctx: 4096 }
    }
}

/// Where a request's results go; called on the scheduler thread, so keep each call short
/// (hand the text to a channel).
pub trait BatchSink: Send {
    /// The request left the queue and joined the running batch.
    fn admitted(&mut self) {}
    /// A piece of generated text; false cancels the request.
    fn text(&mut self, piece: &str) -> bool;
    /// The end: called exactly once per submitted request.
    fn done(self: Box<Self>, result: Result<Generation>);
}

/// Counters the scheduler keeps (for metrics and tests).
#[derive(Debug, Default)]
pub struct BatchStats {
    /// Forward steps run.
    pub steps: AtomicU64,
    /// Sequences summed over steps (steps / this = mean batch size).
    pub sequences: AtomicU64,
    /// Token rows summed over steps.
    pub rows: AtomicU64,
    /// Prompt tokens whose KV came from the prompt cache.
    pub cached_tokens: AtomicU64,
    pub running: AtomicUsize,
    pub waiting: AtomicUsize,
    /// Bytes of the pool in use (reservations + prompt cache).
    pub kv_used: AtomicUsize,
}

/// A request on its way: checked, tokenized, its adapters resolved.
struct Job {
    req: GenerateRequest,
    prompt: Vec<i32>,
    set: ActiveSet,
    key: Vec<(u64, u32)>,
    sampler: Sampler,
    sink: Box<dyn BatchSink>,
    /// Positions reserved for it.
    positions: usize,
}

/// A sequence in the running batch.
struct Seq {
    job: Job,
    session: Session,
    /// Prompt and generated tokens; `tokens[..fed]` are in the KV cache.
    tokens: Vec<i32>,
    fed: usize,
    decoder: Decoder,
    gen: Generation,
    reserved: usize,
    admitted: Instant,
    first: Option<Instant>,
    finished: bool,
    /// The step that failed under it (the message).
    failed: Option<String>,
}

/// A finished sequence's cache, kept for a later prompt with the same adapter set.
struct Cached {
    key: Vec<(u64, u32)>,
    tokens: Vec<i32>,
    session: Session,
}

/// The scheduler: submit requests from any thread; a thread of its own runs them.
pub struct Batcher {
    rt: Arc<NativeRuntime>,
    tx: Mutex<Option<Sender<Job>>>,
    thread: Mutex<Option<JoinHandle<()>>>,
    opts: BatchOptions,
    bytes_per_pos: usize,
    pub stats: Arc<BatchStats>,
}

impl Batcher {
    /// Starts the scheduler thread over `rt` (on the host, or the whole forward on the
    /// device: the KV pool is then device memory).
    pub fn start(rt: Arc<NativeRuntime>, opts: BatchOptions) -> Result<Batcher> {
        if opts.max_batch == 0 || opts.prefill_chunk == 0 || opts.n_ctx == 0 {
            return Err(EngineError::BadOption(format!("batching: max_batch {}, prefill_chunk {} and n_ctx {} must be at least 1", opts.max_batch, opts.prefill_chunk, opts.n_ctx)).into());
        }
        let c = &rt.model.config;
        let bytes_per_pos = c.n_layer * 2 * c.n_head_kv * c.head_dim * 4;
        let (tx, rx) = channel();
        let stats = Arc::new(BatchStats::default());
        let mut sched = Scheduler { rt: rt.clone(), opts: opts.clone(), bytes_per_pos, stats: stats.clone(), waiting: VecDeque::new(), running: Vec::new(), cache: VecDeque::new(), used: 0 };
        let thread = std::thread::Builder::new().name("edgelora-batcher".into()).spawn(move || sched.run(rx)).map_err(|e| EngineError::Backend(format!("starting the batcher thread: {e}")))?;
        Ok(Batcher { rt, tx: Mutex::new(Some(tx)), thread: Mutex::new(Some(thread)), opts, bytes_per_pos, stats })
    }

    /// Sequences stepped together at most.
    pub fn max_batch(&self) -> usize {
        self.opts.max_batch
    }

    /// KV bytes one position takes (all layers, K and V).
    pub fn bytes_per_position(&self) -> usize {
        self.bytes_per_pos
    }

    /// Queues `req`; `sink` receives its text and, once, its end. Errors found before
    /// queueing (tokenizing, an unknown adapter, bad sampling, a prompt beyond the
    /// context, a reservation beyond the whole KV pool) are returned here and `sink` is
    /// dropped uncalled.
    pub fn submit(&self, req: GenerateRequest, sink: Box<dyn BatchSink>) -> Result<()> {
        let prompt = self.rt.tokenize(&req.prompt)?;
        if prompt.is_empty() {
            return Err(EngineError::EmptyPrompt.into());
        }
        if prompt.len() >= self.opts.n_ctx {
            return Err(EngineError::ContextFull { needed: prompt.len() + 1, n_ctx: self.opts.n_ctx }.into());
        }
        let mut sampler = Sampler::new(req.sampling.clone())?;
        sampler.observe(&prompt);
        let (set, key) = self.rt.resolve(&req.adapters)?;
        let positions = (prompt.len() + req.max_tokens).min(self.opts.n_ctx);
        if positions * self.bytes_per_pos > self.opts.kv_memory_bytes {
            let mib = |b: usize| b as f64 / (1 << 20) as f64;
            return Err(EngineError::KvPool { needed_mib: mib(positions * self.bytes_per_pos), positions, pool_mib: mib(self.opts.kv_memory_bytes) }.into());
        }
        let job = Job { req, prompt, set, key, sampler, sink, positions };
        let tx = self.tx.lock().unwrap_or_else(|e| e.into_inner());
        let tx = tx.as_ref().ok_or_else(|| EngineError::BadOption("the batcher is shut down".into()))?;
        self.stats.waiting.fetch_add(1, Ordering::SeqCst);
        tx.send(job).map_err(|_| EngineError::Backend("the batcher thread has stopped".into()).into())
    }

    /// Stops taking requests, lets every queued and running one finish, joins the thread.
    pub fn shutdown(&self) {
        self.tx.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(t) = self.thread.lock().unwrap_or_else(|e| e.into_inner()).take() {
            let _ = t.join();
        }
    }
}

impl Drop for Batcher {
    fn drop(&mut self) {
        self.shutdown();
    }
}

struct Scheduler {
    rt: Arc<NativeRuntime>,
    opts: BatchOptions,
    bytes_per_pos: usize,
    stats: Arc<BatchStats>,
    waiting: VecDeque<Job>,
    running: Vec<Seq>,
    /// Oldest first.
    cache: VecDeque<Cached>,
    /// Pool bytes in use: running reservations + cached sessions.
    used: usize,
}

impl Scheduler {
    fn run(&mut self, rx: Receiver<Job>) {
        loop {
            if self.running.is_empty() && self.waiting.is_empty() {
                match rx.recv() {
                    Ok(job) => self.waiting.push_back(job),
                    Err(_) => return, // shut down and nothing left
                }
            }
            while let Ok(job) = rx.try_recv() {
                self.waiting.push_back(job);
            }
            self.admit();
            self.step();
            self.retire();
            self.stats.kv_used.store(self.used, Ordering::SeqCst);
        }
    }

    /// Moves waiting requests into the batch, in arrival order, while there is a slot and
    /// room in the pool (evicting cached prompts as needed).
    fn admit(&mut self) {
        while self.running.len() < self.opts.max_batch {
            let Some(job) = self.waiting.front() else { break };
            if job.req.cancel.as_ref().is_some_and(CancelFlag::is_cancelled) {
                let job = self.waiting.pop_front().expect("front");
                self.stats.waiting.fetch_sub(1, Ordering::SeqCst);
                let gen = Generation::started(job.prompt.len(), 0);
                job.sink.done(Ok(gen));
                continue;
            }
            let need = job.positions * self.bytes_per_pos;
            // The cached session sharing the longest prefix under the same adapter set.
            let best = self.cache.iter().enumerate().filter(|(_, c)| c.key == job.key).map(|(i, c)| (i, common_prefix(&c.tokens, &job.prompt).min(job.prompt.len() - 1))).filter(|&(_, n)| n > 0).max_by_key(|&(_, n)| n);
            let reuse = best.map(|(i, n)| {
                let c = self.cache.remove(i).expect("index");
                self.used -= c.session.kv_bytes();
                (c, n)
            });
            while self.used + need > self.opts.kv_memory_bytes {
                let Some(old) = self.cache.pop_front() else { break };
                self.used -= old.session.kv_bytes();
            }
            if self.used + need > self.opts.kv_memory_bytes {
                // Waits for running sequences to finish; a cached session taken for it
                // goes back as it was.
                if let Some((c, _)) = reuse {
                    self.used += c.session.kv_bytes();
                    self.cache.push_back(c);
                }
                break;
            }
            let mut job = self.waiting.pop_front().expect("front");
            self.stats.waiting.fetch_sub(1, Ordering::SeqCst);
            let (mut session, fed) = match reuse {
                Some((c, n)) => {
                    let mut s = c.session;
                    s.truncate(n);
                    (s, n)
                }
                None => (Session::default(), 0),
            };
            if let Err(e) = self.rt.model.reserve(&mut session, job.positions) {
                // The device could not allocate it: this request fails, the others go on.
                job.sink.done(Err(e));
                continue;
            }
            let reserved = session.kv_bytes().max(need);
            self.used += reserved;
            self.stats.cached_tokens.fetch_add(fed as u64, Ordering::Relaxed);
            job.sink.admitted();
            let gen = Generation::started(job.prompt.len(), fed);
            let decoder = Decoder::new(&job.req);
            let tokens = job.prompt.clone();
            self.running.push(Seq { job, session, tokens, fed, decoder, gen, reserved, admitted: Instant::now(), first: None, finished: false, failed: None });
        }
        self.stats.running.store(self.running.len(), Ordering::SeqCst);
    }

    /// One forward over every running sequence: a decode token each, and chunks of the
    /// prompts still being read (oldest first) up to `prefill_chunk` tokens.
    fn step(&mut self) {
        let mut budget = self.opts.prefill_chunk;
        // (sequence, tokens to feed): tokens[fed..end]
        let mut plan: Vec<(usize, usize)> = Vec::new();
        for (i, s) in self.running.iter_mut().enumerate() {
            if s.job.req.cancel.as_ref().is_some_and(CancelFlag::is_cancelled) {
                s.gen.stop_reason = StopReason::Cancelled;
                s.finished = true;
                continue;
            }
            let left = s.tokens.len() - s.fed;
            let prefill = s.fed < s.job.prompt.len();
            let n = if prefill { left.min(budget) } else { left };
            if n == 0 {
                continue;
            }
            if prefill {
                budget -= n;
            }
            plan.push((i, s.fed + n));
        }
        if plan.is_empty() {
            return;
        }
        let mut sessions: Vec<Session> = plan.iter().map(|&(i, _)| std::mem::take(&mut self.running[i].session)).collect();
        let sets: Vec<Vec<(&LoraAdapter, f32)>> = plan.iter().map(|&(i, _)| self.running[i].job.set.iter().map(|(a, s)| (a.as_ref(), *s)).collect()).collect();
        let mut items: Vec<BatchItem> = sessions
            .iter_mut()
            .zip(&plan)
            .zip(&sets)
            .map(|((session, &(i, end)), set)| {
                let s = &self.running[i];
                BatchItem { session, tokens: &s.tokens[s.fed..end], adapters: set, all_logits: false }
            })
            .collect();
        let out = self.rt.model.forward_batch(&mut items);
        drop(items);
        self.stats.steps.fetch_add(1, Ordering::Relaxed);
        self.stats.sequences.fetch_add(plan.len() as u64, Ordering::Relaxed);
        self.stats.rows.fetch_add(plan.iter().map(|&(i, end)| (end - self.running[i].fed) as u64).sum(), Ordering::Relaxed);
        for (&(i, _), session) in plan.iter().zip(sessions) {
            self.running[i].session = session;
        }
        let logits = match out {
            Ok(l) => l,
            Err(e) => {
                // The step's sessions may hold part of it: each of them ends with the error.
                let msg = e.chain();
                for &(i, _) in &plan {
                    let s = &mut self.running[i];
                    s.finished = true;
                    s.session = Session::default();
                    s.failed = Some(msg.clone());
                }
                return;
            }
        };
        let rt = &*self.rt;
        let vocab = Vocab { is_eog: &|t| rt.is_eog(t), piece: &|t| rt.token_piece(t) };
        for (&(i, end), mut rows) in plan.iter().zip(logits) {
            let s = &mut self.running[i];
            s.fed = end;
            if s.fed < s.tokens.len() {
                continue; // more prompt to read
            }
            let row = rows.pop().expect("one row per item");
            if s.first.is_none() {
                s.first = Some(Instant::now());
                s.gen.prompt_secs = s.admitted.elapsed().as_secs_f64();
            }
            let sink = &mut s.job.sink;
            match s.decoder.next(&s.job.req, &mut s.job.sampler, &row, &mut s.gen, &vocab, &mut |p| sink.text(p)) {
                Some(token) if s.tokens.len() < self.opts.n_ctx => s.tokens.push(token),
                Some(_) => {
                    s.gen.stop_reason = StopReason::ContextFull;
                    s.finished = true;
                }
                None => s.finished = true,
            }
        }
    }

    /// Ends the finished sequences: their sinks get the result, their caches go to the
    /// prompt cache (or are freed).
    fn retire(&mut self) {
        let mut i = 0;
        while i < self.running.len() {
            if !self.running[i].finished {
                i += 1;
                continue;
            }
            let Seq { mut job, session, mut tokens, fed, decoder, mut gen, reserved, first, failed, .. } = self.running.swap_remove(i);
            self.used -= reserved;
            // Counted out before its sink hears the end.
            self.stats.running.store(self.running.len(), Ordering::SeqCst);
            if let Some(msg) = failed {
                job.sink.done(Err(EngineError::Backend(msg).into()));
                continue;
            }
            let sink = &mut job.sink;
            decoder.finish(&mut gen, &mut |p| sink.text(p));
            gen.gen_secs = first.map(|f| f.elapsed().as_secs_f64()).unwrap_or(0.0);
            job.sink.done(Ok(gen));
            // Keep the cache for a later prompt when it fits beside the reservations.
            tokens.truncate(fed);
            let bytes = session.kv_bytes();
            if fed > 0 && self.used + bytes <= self.opts.kv_memory_bytes {
                self.used += bytes;
                self.cache.push_back(Cached { key: job.key, tokens, session });
            }
        }
        self.stats.running.store(self.running.len(), Ordering::SeqCst);
    }
}

fn common_prefix(a: &[i32], b: &[i32]) -> usize {
    a.iter().zip(b).take_while(|(x, y)| x == y).count()
}

/// A sink over a closure pair, for callers that do not need a type of their own.
pub struct FnSink<T, D>
where
    T: FnMut(&str) -> bool + Send,
    D: FnOnce(Result<Generation>) + Send,
{
    pub text: T,
    pub done: D,
}

impl<T, D> BatchSink for FnSink<T, D>
where
    T: FnMut(&str) -> bool + Send,
    D: FnOnce(Result<Generation>) + Send,
{
    fn text(&mut self, piece: &str) -> bool {
        (self.text)(piece)
    }
    fn done(self: Box<Self>, result: Result<Generation>) {
        (self.done)(result)
    }
}
