//! `edgelora serve`: the OpenAI-compatible server (`edgelora::serve`) over one model
//! and its adapters. SIGTERM/Ctrl-C shut it down gracefully (exit 0); SIGHUP reloads
//! the router file.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{bail, Context, Result};
use clap::Args;

use edgelora::adapter::{is_peft_dir, ReadOptions};
use edgelora::engine::{parse_adapter_arg, BatchOptions, Batcher, Engine};
use edgelora::serve::{serve, ServeOptions, ServerState};

use super::{Loaded, ModelArgs};

#[derive(Args)]
pub struct ServeArgs {
    #[command(flatten)]
    model: ModelArgs,
    /// Load every GGUF-LoRA file and PEFT folder in DIR at start (named by stem); with
    /// --admin-key, POST /admin/adapters loads from this folder only
    #[arg(long, value_name = "DIR")]
    adapter_dir: Option<PathBuf>,
    /// Address to bind (127.0.0.1: this machine only)
    #[arg(long, default_value = "127.0.0.1")]
    host: String,
    /// Port (0: any free port; the address is printed on stderr)
    #[arg(long, default_value_t = 8080)]
    port: u16,
    /// Require `Authorization: Bearer KEY` on the API
    #[arg(long, conflicts_with = "api_key_file")]
    api_key: Option<String>,
    /// Read the API key from a file (first line)
    #[arg(long, value_name = "FILE")]
    api_key_file: Option<PathBuf>,
    /// Enable /admin/* (adapters, router reload) with this bearer key
    #[arg(long)]
    admin_key: Option<String>,
    /// Scenarios and A/B arms (TOML; see README "Serve"); reloaded on SIGHUP or POST /admin/router
    #[arg(long, value_name = "FILE")]
    router: Option<PathBuf>,
    /// Record completions for POST /v1/feedback and append feedback to this JSONL (training format); off by default
    #[arg(long, value_name = "FILE")]
    feedback_log: Option<PathBuf>,
    /// Requests waiting beyond the running ones (then 429)
    #[arg(long, default_value_t = 64)]
    max_queue: usize,
    /// Requests decoded together, each with its own adapters (native engine, on the CPU or
    /// with --device gpu on the device; the llama.cpp backend serves one request at a time)
    #[arg(long, default_value_t = 16)]
    max_batch: usize,
    /// KV cache pool of the batch: each request reserves prompt + max_tokens positions
    /// when it joins (waits while the pool is full; refused with 400 if it could never
    /// fit); finished requests' caches stay as a prompt cache in what is left
    #[arg(long, default_value_t = 1024)]
    kv_memory_mb: usize,
    /// Prompt tokens computed per batch step (a long prompt enters in chunks so the
    /// running requests keep decoding)
    #[arg(long, default_value_t = 64)]
    prefill_chunk: usize,
    /// Largest request body (then 413)
    #[arg(long, default_value_t = 1 << 20)]
    max_body_bytes: usize,
    /// Largest max_tokens a request may ask for (then 400)
    #[arg(long, default_value_t = 2048)]
    max_tokens_cap: usize,
    /// max_tokens when neither the request nor its scenario says
    #[arg(long, default_value_t = 256)]
    default_max_tokens: usize,
}

/// `[NAME=]PATH[:SCALE]` → (name, path, scale); the name defaults to the file stem.
fn parse_named(arg: &str) -> Result<(String, PathBuf, f32)> {
    let (name, rest) = match arg.split_once('=') {
        Some((n, r)) if !n.is_empty() && !n.contains('/') => (Some(n.to_string()), r),
        _ => (None, arg),
    };
    let (path, scale) = parse_adapter_arg(rest)?;
    let name = match name {
        Some(n) => n,
        None => stem(&path)?,
    };
    Ok((name, path, scale))
}

fn stem(p: &Path) -> Result<String> {
    let s = p.file_stem().and_then(|s| s.to_str()).filter(|s| !s.is_empty()).with_context(|| format!("{}: cannot name an adapter after this path (use NAME=PATH)", p.display()))?;
    Ok(s.to_string())
}

fn read_key(a: &ServeArgs) -> Result<Option<String>> {
    if let Some(k) = &a.api_key {
        return Ok(Some(k.clone()));
    }
    let Some(f) = &a.api_key_file else { return Ok(None) };
    let text = std::fs::read_to_string(f).with_context(|| format!("reading --api-key-file {}", f.display()))?;
    let key = text.lines().next().unwrap_or("").trim().to_string();
    if key.is_empty() {
        bail!("--api-key-file {}: the first line is empty", f.display());
    }
    Ok(Some(key))
}

pub fn run(a: ServeArgs) -> Result<()> {
    if a.model.merge {
        bail!("serve applies adapters per request; --merge is not supported (merge offline with `edgelora merge` and serve the merged model)");
    }
    let api_key = read_key(&a)?;
    let (engine, batcher): (Arc<dyn Engine>, Option<Arc<Batcher>>) = match a.model.open(&a.model.model)? {
        #[cfg(feature = "llama")]
        Loaded::Llama(r) => (Arc::new(r), None),
        Loaded::Native(n) => {
            let n = Arc::new(n);
            let n_train = n.model_config().n_ctx_train;
            // --ctx per request, within what the model was trained for.
            let n_ctx = (a.model.n_ctx as usize).clamp(1, n_train.max(1));
            let opts = BatchOptions { max_batch: a.max_batch.max(1), kv_memory_bytes: a.kv_memory_mb.max(1) << 20, prefill_chunk: a.prefill_chunk.max(1), n_ctx };
            let b = Batcher::start(n.clone(), opts).context("starting the batcher")?;
            (n, Some(Arc::new(b)))
        }
    };
    let mut adapters: BTreeMap<String, f32> = BTreeMap::new();
    let mut load = |name: String, path: &Path, scale: f32| -> Result<()> {
        if adapters.contains_key(&name) {
            bail!("two adapters are named {name:?}: name them with NAME=PATH");
        }
        for w in engine.load_adapter(&name, path, ReadOptions { lenient: a.model.lenient }).with_context(|| format!("loading adapter {name} from {}", path.display()))? {
            eprintln!("{w}");
        }
        adapters.insert(name, scale);
        Ok(())
    };
    for arg in &a.model.adapters {
        let (name, path, scale) = parse_named(arg)?;
        load(name, &path, scale)?;
    }
    if let Some(dir) = &a.adapter_dir {
        let mut entries: Vec<PathBuf> = std::fs::read_dir(dir).with_context(|| format!("reading --adapter-dir {}", dir.display()))?.filter_map(|e| e.ok().map(|e| e.path())).collect();
        entries.sort();
        for p in entries {
            if p.extension().is_some_and(|e| e == "gguf") || (p.is_dir() && is_peft_dir(&p)) {
                load(stem(&p)?, &p, 1.0)?;
            }
        }
    }
    let model_id = stem(&a.model.model)?;
    let opts = ServeOptions {
        model_id,
        api_key,
        admin_key: a.admin_key.clone(),
        adapter_dir: a.adapter_dir.clone(),
        router_path: a.router.clone(),
        feedback_log: a.feedback_log.clone(),
        max_queue: a.max_queue,
        max_body_bytes: a.max_body_bytes,
        max_tokens_cap: a.max_tokens_cap,
        default_max_tokens: a.default_max_tokens.min(a.max_tokens_cap),
        ..ServeOptions::default()
    };
    let state = ServerState::new(engine, batcher, opts, adapters)?;
    let _ = tracing_subscriber::fmt().with_writer(std::io::stderr).with_target(false).with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr())).try_init();
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().worker_threads(2).build().context("starting the async runtime")?;
    rt.block_on(async move {
        let addr = format!("{}:{}", a.host, a.port);
        let listener = tokio::net::TcpListener::bind(&addr).await.with_context(|| format!("binding {addr}"))?;
        let local = listener.local_addr()?;
        eprintln!("edgelora serve: listening on http://{local} (model {}, adapters {:?})", a.model.model.display(), state.adapter_names());
        let reload = state.clone();
        tokio::spawn(async move {
            let Ok(mut hup) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) else { return };
            while hup.recv().await.is_some() {
                match reload.reload_router() {
                    Ok(n) => tracing::info!(scenarios = n, "router reloaded (SIGHUP)"),
                    Err(e) => tracing::error!("router reload failed, the old router stays: {}", e.chain()),
                }
            }
        });
        let shutdown = async {
            let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).expect("SIGTERM handler");
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
            eprintln!("edgelora serve: shutting down (finishing running requests)");
        };
        serve(listener, state, shutdown).await.context("serving")?;
        eprintln!("edgelora serve: stopped");
        anyhow::Ok(())
    })
}
