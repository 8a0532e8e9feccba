//! `edgelora serve`: one base model serving many business scenarios over an
//! OpenAI-compatible HTTP API (axum + tokio): `/v1/chat/completions` and
//! `/v1/completions` (plain or server-sent events), `/v1/models`, a router of scenarios
//! and A/B arms (`router`), feedback capture into a training log, adapters loaded and
//! unloaded at run time (`/admin/*`), `/health` and Prometheus `/metrics` (`metrics`).
//!
//! With a [`Batcher`] (the native engine, on the CPU or the whole forward on the GPU)
//! requests are decoded together, each with its own adapter set, joining and leaving the
//! batch between steps (`engine::batch`); otherwise (llama.cpp) they run one at a time in
//! arrival order. Either way at most `max_queue` wait beyond the running ones;
//! more get 429.

pub mod metrics;
pub mod openai;
pub mod router;

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::convert::Infallible;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, Path as UrlPath, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::sse::{Event, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use axum::{Json, Router};
use serde_json::{json, Value};
use tokio::sync::{mpsc, Semaphore};

use self::metrics::Metrics;
use self::openai::{finish_reason, ApiError, Common, Input};
use self::router::{Route, RouterConfig};
use crate::engine::{BatchSink, Batcher, CancelFlag, ChatMessage, Engine, GenerateRequest, Generation, Prompt, SamplingParams};

/// How the server behaves (the CLI's flags).
#[derive(Debug, Clone)]
pub struct ServeOptions {
    /// The base model's id in `/v1/models` and `model` (the file stem).
    pub model_id: String,
    pub api_key: Option<String>,
    /// Admin endpoints exist only with a key.
    pub admin_key: Option<String>,
    /// `POST /admin/adapters` loads only files inside this folder.
    pub adapter_dir: Option<PathBuf>,
    pub router_path: Option<PathBuf>,
    /// Feedback capture (off without a file: privacy).
    pub feedback_log: Option<PathBuf>,
    /// Requests waiting beyond the running one; more get 429.
    pub max_queue: usize,
    pub max_body_bytes: usize,
    /// `max_tokens` above this is refused (400).
    pub max_tokens_cap: usize,
    /// `max_tokens` when the request and its scenario do not say.
    pub default_max_tokens: usize,
    /// Completions remembered for feedback (oldest forgotten first).
    pub feedback_memory: usize,
}

impl Default for ServeOptions {
    fn default() -> Self {
        ServeOptions {
            model_id: "base".into(),
            api_key: None,
            admin_key: None,
            adapter_dir: None,
            router_path: None,
            feedback_log: None,
            max_queue: 64,
            max_body_bytes: 1 << 20,
            max_tokens_cap: 2048,
            default_max_tokens: 256,
            feedback_memory: 10_000,
        }
    }
}

/// A finished completion kept for `/v1/feedback`.
#[derive(Debug, Clone)]
struct Completed {
    input: Input,
    answer: String,
    route: Route,
}

/// Everything the handlers share.
pub struct ServerState {
    engine: Arc<dyn Engine>,
    /// Continuous batching over `engine` (the native engine, host or device), else one at a time.
    batcher: Option<Arc<Batcher>>,
    opts: ServeOptions,
    /// Loaded adapters by name with the scale a request naming one gets.
    adapters: RwLock<BTreeMap<String, f32>>,
    router: RwLock<RouterConfig>,
    permits: Arc<Semaphore>,
    shutting_down: AtomicBool,
    next_id: AtomicU64,
    completed: Mutex<(HashMap<String, Completed>, VecDeque<String>)>,
    feedback_file: Mutex<()>,
    pub metrics: Metrics,
}

impl ServerState {
    /// `adapters`: what is already loaded on `engine` (name → default scale); `batcher`:
    /// continuous batching over the same engine, else requests run one at a time.
    pub fn new(engine: Arc<dyn Engine>, batcher: Option<Arc<Batcher>>, opts: ServeOptions, adapters: BTreeMap<String, f32>) -> Result<Arc<ServerState>, crate::Error> {
        let names: Vec<String> = adapters.keys().cloned().collect();
        let router = match &opts.router_path {
            Some(p) => RouterConfig::read(p, &names)?,
            None => RouterConfig::default(),
        };
        for s in &router.scenarios {
            if s.name == opts.model_id || adapters.contains_key(&s.name) {
                return Err(crate::ServeError::Router { path: opts.router_path.clone().unwrap_or_default(), reason: format!("scenario {:?} has the name of the base model or of an adapter", s.name) }.into());
            }
        }
        let running = batcher.as_ref().map_or(1, |b| b.max_batch());
        Ok(Arc::new(ServerState {
            engine,
            batcher,
            permits: Arc::new(Semaphore::new(opts.max_queue + running)),
            opts,
            adapters: RwLock::new(adapters),
            router: RwLock::new(router),
            shutting_down: AtomicBool::new(false),
            next_id: AtomicU64::new(1),
            completed: Mutex::new((HashMap::new(), VecDeque::new())),
            feedback_file: Mutex::new(()),
            metrics: Metrics::new(),
        }))
    }

    /// Names of the loaded adapters.
    pub fn adapter_names(&self) -> Vec<String> {
        self.adapters.read().expect("lock").keys().cloned().collect()
    }

    /// Stops taking generation requests (they get 503); running ones finish.
    pub fn begin_shutdown(&self) {
        self.shutting_down.store(true, Ordering::SeqCst);
    }

    /// Waits for the batcher's queued and running requests to end and stops its thread.
    pub fn finish_batcher(&self) {
        if let Some(b) = &self.batcher {
            b.shutdown();
        }
    }

    /// Re-reads the router file; the old router stays on error.
    pub fn reload_router(&self) -> Result<usize, crate::Error> {
        let Some(p) = &self.opts.router_path else { return Ok(0) };
        let names: Vec<String> = self.adapters.read().expect("lock").keys().cloned().collect();
        let cfg = RouterConfig::read(p, &names)?;
        let n = cfg.scenarios.len();
        *self.router.write().expect("lock") = cfg;
        Ok(n)
    }
}

type S = State<Arc<ServerState>>;

/// The HTTP application (routes and limits) over `state`.
pub fn app(state: Arc<ServerState>) -> Router {
    let mut r = Router::new()
        .route("/health", get(health))
        .route("/metrics", get(metrics_text))
        .route("/v1/models", get(models))
        .route("/v1/chat/completions", post(chat_completions))
        .route("/v1/completions", post(completions))
        .route("/v1/feedback", post(feedback));
    if state.opts.admin_key.is_some() {
        r = r
            .route("/admin/adapters", get(admin_list).post(admin_load))
            .route("/admin/adapters/{name}", delete(admin_unload))
            .route("/admin/router", post(admin_router));
    }
    let limit = state.opts.max_body_bytes;
    // RequestBodyLimitLayer refuses a too-large Content-Length before reading the body
    // (and cuts a chunked one at the limit); its plain 413 becomes an OpenAI error.
    r.fallback(|| async { ApiError::not_found("not_found", "no such endpoint") })
        .layer(DefaultBodyLimit::disable())
        .layer(tower_http::limit::RequestBodyLimitLayer::new(limit))
        .layer(axum::middleware::map_response(move |r: Response| async move { openai_413(r, limit) }))
        .with_state(state)
}

fn openai_413(r: Response, limit: usize) -> Response {
    let json = r.headers().get("content-type").is_some_and(|v| v.as_bytes().starts_with(b"application/json"));
    if r.status() == StatusCode::PAYLOAD_TOO_LARGE && !json {
        return ApiError::new(StatusCode::PAYLOAD_TOO_LARGE, "invalid_request_error", "request_too_large", format!("the body is larger than this server's limit of {limit} bytes (--max-body-bytes)")).into_response();
    }
    r
}

fn bearer(h: &HeaderMap) -> Option<&str> {
    h.get("authorization").and_then(|v| v.to_str().ok()).and_then(|v| v.strip_prefix("Bearer ")).map(str::trim)
}

fn check_key(h: &HeaderMap, key: &Option<String>) -> Result<(), ApiError> {
    match key {
        Some(k) if bearer(h) != Some(k.as_str()) => Err(ApiError::unauthorized()),
        _ => Ok(()),
    }
}

fn body_bytes(body: Result<Bytes, BytesRejection>) -> Result<Bytes, ApiError> {
    body.map_err(|e| {
        let status = e.status();
        if status == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::new(status, "invalid_request_error", "request_too_large", format!("the body is larger than the server's limit: {e}"))
        } else {
            ApiError::new(status, "invalid_request_error", "invalid_body", format!("cannot read the body: {e}"))
        }
    })
}

async fn health(State(st): S) -> Response {
    let ok = !st.shutting_down.load(Ordering::SeqCst);
    let code = if ok { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
    let batching = st.batcher.as_ref().map(|b| json!({"max_batch": b.max_batch(), "running": b.stats.running.load(Ordering::Relaxed), "waiting": b.stats.waiting.load(Ordering::Relaxed)}));
    (code, Json(json!({"status": if ok { "ok" } else { "shutting_down" }, "backend": st.engine.backend_name(), "batching": batching}))).into_response()
}

async fn metrics_text(State(st): S) -> Response {
    if let Some(b) = &st.batcher {
        let g = |v: u64| v.min(i64::MAX as u64) as i64;
        st.metrics.batch_steps.set(g(b.stats.steps.load(Ordering::Relaxed)));
        st.metrics.batch_sequences.set(g(b.stats.sequences.load(Ordering::Relaxed)));
        st.metrics.batch_rows.set(g(b.stats.rows.load(Ordering::Relaxed)));
        st.metrics.kv_used.set(g(b.stats.kv_used.load(Ordering::Relaxed) as u64));
    }
    ([("content-type", "text/plain; version=0.0.4")], st.metrics.render()).into_response()
}

async fn models(State(st): S, headers: HeaderMap) -> Response {
    if let Err(e) = check_key(&headers, &st.opts.api_key) {
        return e.into_response();
    }
    let created = now_secs();
    let mut data = vec![json!({"id": st.opts.model_id, "object": "model", "created": created, "owned_by": "edgelora", "kind": "base"})];
    for name in st.adapters.read().expect("lock").keys() {
        data.push(json!({"id": name, "object": "model", "created": created, "owned_by": "edgelora", "kind": "adapter"}));
    }
    for s in &st.router.read().expect("lock").scenarios {
        data.push(json!({"id": s.name, "object": "model", "created": created, "owned_by": "edgelora", "kind": "scenario", "arms": s.arms.iter().map(|a| a.name.clone()).collect::<Vec<_>>()}));
    }
    Json(json!({"object": "list", "data": data})).into_response()
}

fn now_secs() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

/// Picks the adapters: the `adapters` field, else `X-Scenario`, else `model` (an adapter
/// or a scenario), else a router rule, else the base.
fn route(st: &ServerState, common: &Common, headers: &HeaderMap) -> Result<(Route, Option<router::Scenario>), ApiError> {
    let loaded = st.adapters.read().expect("lock").clone();
    let router = st.router.read().expect("lock");
    let fallback = (st.next_id.load(Ordering::Relaxed) % 1000) as f64 / 1000.0;
    if let Some(list) = &common.adapters {
        let mut set = Vec::new();
        for a in list {
            if !loaded.contains_key(&a.name) {
                return Err(ApiError::not_found("adapter_not_found", format!("adapter {:?} is not loaded (loaded: {:?})", a.name, loaded.keys().collect::<Vec<_>>())));
            }
            set.push((a.name.clone(), a.scale));
        }
        // A fixed name, not the request's `model`: metric labels stay bounded.
        return Ok((Route { scenario: "adapters".into(), arm: None, adapters: set }, None));
    }
    if let Some(h) = headers.get("x-scenario") {
        let name = h.to_str().unwrap_or_default();
        let s = router.scenario(name).ok_or_else(|| ApiError::not_found("scenario_not_found", format!("X-Scenario {name:?}: no such scenario")))?;
        return Ok((s.route(common.user.as_deref(), fallback), Some(s.clone())));
    }
    match common.model.as_deref() {
        Some(m) if m != st.opts.model_id && m != "base" => {
            if let Some(&scale) = loaded.get(m) {
                return Ok((Route { scenario: m.to_string(), arm: None, adapters: vec![(m.to_string(), scale)] }, None));
            }
            if let Some(s) = router.scenario(m) {
                return Ok((s.route(common.user.as_deref(), fallback), Some(s.clone())));
            }
            Err(ApiError::not_found("model_not_found", format!("model {m:?} is not the base ({:?}), a loaded adapter or a scenario (GET /v1/models lists them)", st.opts.model_id)))
        }
        _ => {
            let lower: BTreeMap<String, String> = headers.iter().filter_map(|(k, v)| Some((k.as_str().to_ascii_lowercase(), v.to_str().ok()?.to_string()))).collect();
            if let Some(s) = router.by_rule(&lower) {
                return Ok((s.route(common.user.as_deref(), fallback), Some(s.clone())));
            }
            Ok((Route { scenario: st.opts.model_id.clone(), arm: None, adapters: Vec::new() }, None))
        }
    }
}

fn build_request(st: &ServerState, input: &Input, common: &Common, scenario: Option<&router::Scenario>, route: &Route) -> Result<GenerateRequest, ApiError> {
    let prompt = match input {
        Input::Text(t) => Prompt::Text(t.clone()),
        Input::Chat(msgs) => {
            let mut m: Vec<ChatMessage> = msgs.iter().map(|m| ChatMessage::new(&m.role, m.content.clone())).collect();
            if let Some(sys) = scenario.and_then(|s| s.system.clone()) {
                if !m.iter().any(|x| x.role == "system") {
                    m.insert(0, ChatMessage::new("system", sys));
                }
            }
            Prompt::Chat(m)
        }
    };
    let max_tokens = common.max_tokens.or(scenario.and_then(|s| s.max_tokens)).unwrap_or(st.opts.default_max_tokens);
    if max_tokens > st.opts.max_tokens_cap {
        return Err(ApiError::bad_request(format!("field `max_tokens`: {max_tokens} is above this server's cap of {} (--max-tokens-cap)", st.opts.max_tokens_cap)));
    }
    let mut req = GenerateRequest::new(prompt);
    req.max_tokens = max_tokens;
    req.adapters = route.adapters.clone();
    req.stop = common.stop.clone();
    req.sampling = SamplingParams {
        temperature: common.temperature.or(scenario.and_then(|s| s.temperature)).unwrap_or(0.0),
        top_p: common.top_p.or(scenario.and_then(|s| s.top_p)).unwrap_or(1.0),
        seed: common.seed.unwrap_or(0),
        ..SamplingParams::default()
    };
    Ok(req)
}

/// Raises the request's cancel flag when dropped (a client that went away).
struct CancelOnDrop(CancelFlag);

impl Drop for CancelOnDrop {
    fn drop(&mut self) {
        self.0.cancel();
    }
}

enum Piece {
    Text(String),
    Done(Result<crate::engine::Generation, String>),
}

async fn chat_completions(State(st): S, headers: HeaderMap, body: Result<Bytes, BytesRejection>) -> Response {
    complete(st, headers, body, true).await
}

async fn completions(State(st): S, headers: HeaderMap, body: Result<Bytes, BytesRejection>) -> Response {
    complete(st, headers, body, false).await
}

async fn complete(st: Arc<ServerState>, headers: HeaderMap, body: Result<Bytes, BytesRejection>, chat: bool) -> Response {
    let endpoint = if chat { "chat" } else { "completions" };
    let t0 = Instant::now();
    let r = complete_inner(&st, headers, body, chat).await;
    let r = match r {
        Ok(r) => r,
        Err(e) => {
            tracing::warn!(endpoint, status = e.status.as_u16(), code = e.code, "{}", e.message);
            e.into_response()
        }
    };
    let h = |k: &str| r.headers().get(k).and_then(|v| v.to_str().ok()).unwrap_or("-").to_string();
    tracing::info!(endpoint, status = r.status().as_u16(), scenario = %h("x-edgelora-scenario"), arm = %h("x-edgelora-arm"), ms = t0.elapsed().as_millis() as u64, "request");
    st.metrics.requests.with_label_values(&[endpoint, r.status().as_str()]).inc();
    r
}

async fn complete_inner(st: &Arc<ServerState>, headers: HeaderMap, body: Result<Bytes, BytesRejection>, chat: bool) -> Result<Response, ApiError> {
    if st.shutting_down.load(Ordering::SeqCst) {
        return Err(ApiError::shutting_down());
    }
    check_key(&headers, &st.opts.api_key)?;
    let body = body_bytes(body)?;
    let (input, common) = openai::parse(&body, chat)?;
    let (route, scenario) = route(st, &common, &headers)?;
    let mut req = build_request(st, &input, &common, scenario.as_ref(), &route)?;
    let permit = st.permits.clone().try_acquire_owned().map_err(|_| ApiError::queue_full(1))?;
    let n = st.next_id.fetch_add(1, Ordering::SeqCst);
    let id = format!("{}-{n}", if chat { "chatcmpl" } else { "cmpl" });
    let model = common.model.clone().unwrap_or_else(|| st.opts.model_id.clone());
    let cancel = CancelFlag::new();
    req.cancel = Some(cancel.clone());
    let guard = CancelOnDrop(cancel);
    // Unbounded: the engine never waits on a slow client (a request's pieces are bounded
    // by its max_tokens).
    let (tx, mut rx) = mpsc::unbounded_channel::<Piece>();
    let t0 = Instant::now();
    st.metrics.queue_depth.inc();
    if let Some(b) = st.batcher.clone() {
        let sink = ServeSink { tx, st: st.clone(), admitted: false, _permit: permit };
        let submitted = tokio::task::spawn_blocking(move || b.submit(req, Box::new(sink))).await.map_err(|e| ApiError::internal(e.to_string()))?;
        if let Err(e) = submitted {
            // The sink was dropped uncalled: undo its queue count.
            st.metrics.queue_depth.dec();
            return Err(submit_error(e));
        }
    } else {
        let engine = st.engine.clone();
        let st2 = st.clone();
        tokio::task::spawn_blocking(move || {
            let _permit = permit;
            st2.metrics.queue_depth.dec();
            st2.metrics.running.inc();
            let mut on_text = |p: &str| tx.send(Piece::Text(p.to_string())).is_ok();
            let r = engine.generate(&req, &mut on_text).map_err(|e| e.chain());
            st2.metrics.running.dec();
            let _ = tx.send(Piece::Done(r));
        });
    }
    let arm_header = route.arm.clone();
    let labels = (route.scenario.clone(), route.arm.clone().unwrap_or_default(), { let mut n: Vec<&str> = route.adapters.iter().map(|(n, _)| n.as_str()).collect(); n.sort_unstable(); n.dedup(); n.join(",") });
    let created = now_secs();
    let finish = {
        let st = st.clone();
        let labels = labels.clone();
        move |g: &crate::engine::Generation, first: Option<f64>| {
            st.metrics.tokens.with_label_values(&["prompt", &labels.0, &labels.1, &labels.2]).inc_by(g.n_prompt as u64);
            st.metrics.tokens.with_label_values(&["completion", &labels.0, &labels.1, &labels.2]).inc_by(g.tokens.len() as u64);
            if let Some(f) = first {
                st.metrics.ttft.with_label_values(&[&labels.0, &labels.1]).observe(f);
            }
            if g.tokens.len() > 1 {
                st.metrics.token_latency.with_label_values(&[&labels.0, &labels.1]).observe(g.gen_secs / (g.tokens.len() - 1) as f64);
            }
        }
    };
    let with_headers = |mut r: Response| -> Response {
        let h = r.headers_mut();
        if let Ok(v) = HeaderValue::from_str(&labels.0) {
            h.insert("x-edgelora-scenario", v);
        }
        if let Some(a) = arm_header.as_deref().and_then(|a| HeaderValue::from_str(a).ok()) {
            h.insert("x-edgelora-arm", a);
        }
        r
    };
    if !common.stream {
        let mut text = String::new();
        let mut first = None;
        let generation = loop {
            match rx.recv().await {
                Some(Piece::Text(t)) => {
                    first.get_or_insert(t0.elapsed().as_secs_f64());
                    text.push_str(&t);
                }
                Some(Piece::Done(r)) => break r.map_err(ApiError::internal)?,
                None => return Err(ApiError::internal("the generation stopped without a result")),
            }
        };
        drop(guard);
        finish(&generation, first);
        st.remember(&id, input, generation.text.clone(), route.clone());
        let usage = json!({"prompt_tokens": generation.n_prompt, "completion_tokens": generation.tokens.len(), "total_tokens": generation.n_prompt + generation.tokens.len()});
        let fr = finish_reason(generation.stop_reason);
        let body = if chat {
            json!({"id": id, "object": "chat.completion", "created": created, "model": model,
                   "choices": [{"index": 0, "message": {"role": "assistant", "content": generation.text}, "finish_reason": fr}], "usage": usage})
        } else {
            json!({"id": id, "object": "text_completion", "created": created, "model": model,
                   "choices": [{"index": 0, "text": generation.text, "logprobs": Value::Null, "finish_reason": fr}], "usage": usage})
        };
        return Ok(with_headers(Json(body).into_response()));
    }
    // Streaming: server-sent events; the guard lives in the stream, so a client that
    // disconnects drops it and cancels the generation.
    let st = st.clone();
    let stream = async_stream(move |yield_tx: mpsc::Sender<Result<Event, Infallible>>| async move {
        let _guard = guard;
        let chunk = |delta: Value, fr: Value| -> Event {
            let body = if chat {
                json!({"id": id, "object": "chat.completion.chunk", "created": created, "model": model, "choices": [{"index": 0, "delta": delta, "finish_reason": fr}]})
            } else {
                json!({"id": id, "object": "text_completion", "created": created, "model": model, "choices": [{"index": 0, "text": delta.get("content").cloned().unwrap_or(json!("")), "logprobs": Value::Null, "finish_reason": fr}]})
            };
            Event::default().data(body.to_string())
        };
        if chat && yield_tx.send(Ok(chunk(json!({"role": "assistant", "content": ""}), Value::Null))).await.is_err() {
            return;
        }
        let mut first = None;
        loop {
            match rx.recv().await {
                Some(Piece::Text(t)) => {
                    first.get_or_insert(t0.elapsed().as_secs_f64());
                    if yield_tx.send(Ok(chunk(json!({"content": t}), Value::Null))).await.is_err() {
                        return; // the client went away: dropping rx and the guard cancels
                    }
                }
                Some(Piece::Done(Ok(g))) => {
                    finish(&g, first);
                    let fr = finish_reason(g.stop_reason);
                    st.remember(&id, input, g.text.clone(), route);
                    let _ = yield_tx.send(Ok(chunk(json!({}), json!(fr)))).await;
                    let _ = yield_tx.send(Ok(Event::default().data("[DONE]"))).await;
                    return;
                }
                Some(Piece::Done(Err(e))) => {
                    let _ = yield_tx.send(Ok(Event::default().data(ApiError::internal(e).body().to_string()))).await;
                    return;
                }
                None => return,
            }
        }
    });
    Ok(with_headers(Sse::new(stream).into_response()))
}

/// A request's way back from the batcher: pieces into the handler's channel, the queue
/// and running gauges, the queue permit released at the end.
struct ServeSink {
    tx: mpsc::UnboundedSender<Piece>,
    st: Arc<ServerState>,
    admitted: bool,
    _permit: tokio::sync::OwnedSemaphorePermit,
}

impl BatchSink for ServeSink {
    fn admitted(&mut self) {
        self.admitted = true;
        self.st.metrics.queue_depth.dec();
        self.st.metrics.running.inc();
    }
    fn text(&mut self, piece: &str) -> bool {
        self.tx.send(Piece::Text(piece.to_string())).is_ok()
    }
    fn done(self: Box<Self>, result: crate::Result<Generation>) {
        if self.admitted {
            self.st.metrics.running.dec();
        } else {
            self.st.metrics.queue_depth.dec();
        }
        let _ = self.tx.send(Piece::Done(result.map_err(|e| e.chain())));
    }
}

/// What a refused submission means to the client.
fn submit_error(e: crate::Error) -> ApiError {
    use crate::EngineError as E;
    match &e {
        crate::Error::Engine(E::KvPool { .. } | E::ContextFull { .. } | E::EmptyPrompt | E::BadSampling { .. } | E::Tokenize(_) | E::ChatTemplate(_) | E::NoChatTemplate) => ApiError::bad_request(e.chain()),
        crate::Error::Engine(E::UnknownAdapter { .. }) => ApiError::not_found("adapter_not_found", e.chain()),
        _ => ApiError::internal(e.chain()),
    }
}

/// A stream fed by a task: `f` gets the sender; the stream ends when the task does.
fn async_stream<F, Fut>(f: F) -> tokio_stream::wrappers::ReceiverStream<Result<Event, Infallible>>
where
    F: FnOnce(mpsc::Sender<Result<Event, Infallible>>) -> Fut,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let (tx, rx) = mpsc::channel(64);
    tokio::spawn(f(tx));
    tokio_stream::wrappers::ReceiverStream::new(rx)
}

impl ServerState {
    fn remember(&self, id: &str, input: Input, answer: String, route: Route) {
        if self.opts.feedback_log.is_none() {
            return;
        }
        let mut c = self.completed.lock().expect("lock");
        c.0.insert(id.to_string(), Completed { input, answer, route });
        c.1.push_back(id.to_string());
        while c.1.len() > self.opts.feedback_memory {
            if let Some(old) = c.1.pop_front() {
                c.0.remove(&old);
            }
        }
    }
}

/// `POST /v1/feedback {id, rating?, correct_output?}`: appends the completion as a
/// training record (`{messages}` for chats, `{prompt, completion}` otherwise; the
/// corrected answer when given, else the model's) with scenario, arm, adapters, rating
/// and time — a line `edgelora train --data` and `eval --data` read as is.
async fn feedback(State(st): S, headers: HeaderMap, body: Result<Bytes, BytesRejection>) -> Response {
    let r = feedback_inner(&st, headers, body).await.unwrap_or_else(|e| e.into_response());
    st.metrics.requests.with_label_values(&["feedback", r.status().as_str()]).inc();
    r
}

async fn feedback_inner(st: &Arc<ServerState>, headers: HeaderMap, body: Result<Bytes, BytesRejection>) -> Result<Response, ApiError> {
    check_key(&headers, &st.opts.api_key)?;
    let Some(log) = &st.opts.feedback_log else {
        return Err(ApiError::not_found("feedback_off", "feedback capture is off (start the server with --feedback-log FILE)"));
    };
    let body = body_bytes(body)?;
    let v: Value = serde_json::from_slice(&body).map_err(|e| ApiError::bad_request(format!("the body is not valid JSON: {e}")))?;
    let id = v.get("id").and_then(Value::as_str).ok_or_else(|| ApiError::bad_request("field `id`: expected the completion's id (a string)"))?;
    let rating = match v.get("rating") {
        None | Some(Value::Null) => None,
        Some(r) if r.is_number() => Some(r.clone()),
        Some(_) => return Err(ApiError::bad_request("field `rating`: expected a number")),
    };
    let corrected = match v.get("correct_output") {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) => Some(s.clone()),
        Some(_) => return Err(ApiError::bad_request("field `correct_output`: expected a string")),
    };
    let c = st.completed.lock().expect("lock").0.get(id).cloned().ok_or_else(|| ApiError::not_found("completion_not_found", format!("no completion {id:?} (unknown, or forgotten after {} newer ones)", st.opts.feedback_memory)))?;
    let answer = corrected.clone().unwrap_or(c.answer.clone());
    let mut rec = match &c.input {
        Input::Chat(m) => {
            let mut msgs: Vec<Value> = m.iter().map(|m| json!({"role": m.role, "content": m.content})).collect();
            msgs.push(json!({"role": "assistant", "content": answer}));
            json!({"messages": msgs})
        }
        Input::Text(p) => json!({"prompt": p, "completion": answer}),
    };
    let extra = json!({
        "id": id, "scenario": c.route.scenario, "arm": c.route.arm,
        "adapters": c.route.adapters.iter().map(|(n, s)| json!({"name": n, "scale": s})).collect::<Vec<_>>(),
        "rating": rating, "corrected": corrected.is_some(), "model_output": c.answer, "timestamp": crate::adapter::now_rfc3339(),
    });
    if let (Value::Object(r), Value::Object(e)) = (&mut rec, extra) {
        r.extend(e);
    }
    let line = format!("{rec}\n");
    let _lock = st.feedback_file.lock().expect("lock");
    let mut f = std::fs::OpenOptions::new().create(true).append(true).open(log).map_err(|e| ApiError::internal(format!("feedback log {}: {e}", log.display())))?;
    f.write_all(line.as_bytes()).and_then(|_| f.flush()).map_err(|e| ApiError::internal(format!("feedback log {}: {e}", log.display())))?;
    Ok(Json(json!({"status": "recorded", "id": id})).into_response())
}

fn check_admin(st: &ServerState, h: &HeaderMap) -> Result<(), ApiError> {
    check_key(h, &st.opts.admin_key)
}

async fn admin_list(State(st): S, headers: HeaderMap) -> Response {
    if let Err(e) = check_admin(&st, &headers) {
        return e.into_response();
    }
    let list: Vec<Value> = st.adapters.read().expect("lock").iter().map(|(n, s)| json!({"name": n, "scale": s})).collect();
    Json(json!({"adapters": list})).into_response()
}

/// A path inside the adapter folder: relative, no `..`, and still inside once symlinks are resolved.
fn confined(dir: &Path, rel: &str) -> Result<PathBuf, ApiError> {
    let p = Path::new(rel);
    if p.is_absolute() || p.components().any(|c| !matches!(c, std::path::Component::Normal(_))) {
        return Err(ApiError::bad_request(format!("field `path`: {rel:?} must be a relative path inside the adapter folder (no `..`, not absolute)")));
    }
    let root = dir.canonicalize().map_err(|e| ApiError::internal(format!("adapter folder {}: {e}", dir.display())))?;
    let full = root.join(p).canonicalize().map_err(|e| ApiError::not_found("adapter_file_not_found", format!("{rel}: {e}")))?;
    if !full.starts_with(&root) {
        return Err(ApiError::bad_request(format!("field `path`: {rel:?} leads outside the adapter folder (a symlink)")));
    }
    Ok(full)
}

async fn admin_load(State(st): S, headers: HeaderMap, body: Result<Bytes, BytesRejection>) -> Response {
    let r = async {
        check_admin(&st, &headers)?;
        let body = body_bytes(body)?;
        let v: Value = serde_json::from_slice(&body).map_err(|e| ApiError::bad_request(format!("the body is not valid JSON: {e}")))?;
        let name = v.get("name").and_then(Value::as_str).ok_or_else(|| ApiError::bad_request("field `name`: expected a string"))?.to_string();
        let rel = v.get("path").and_then(Value::as_str).ok_or_else(|| ApiError::bad_request("field `path`: expected a string"))?.to_string();
        let scale = match v.get("scale") {
            None | Some(Value::Null) => 1.0,
            Some(x) => x.as_f64().filter(|x| x.is_finite()).ok_or_else(|| ApiError::bad_request("field `scale`: expected a finite number"))? as f32,
        };
        let dir = st.opts.adapter_dir.clone().ok_or_else(|| ApiError::bad_request("the server has no --adapter-dir: adapters cannot be loaded at run time"))?;
        let path = confined(&dir, &rel)?;
        if name == st.opts.model_id || st.router.read().expect("lock").scenario(&name).is_some() {
            return Err(ApiError::bad_request(format!("name {name:?} is the base model's or a scenario's")));
        }
        let engine = st.engine.clone();
        let (n2, p2) = (name.clone(), path.clone());
        let loaded = tokio::task::spawn_blocking(move || engine.load_adapter(&n2, &p2, crate::adapter::ReadOptions::default())).await.map_err(|e| ApiError::internal(e.to_string()))?;
        match loaded {
            Ok(_) => {
                st.adapters.write().expect("lock").insert(name.clone(), scale);
                Ok(Json(json!({"status": "loaded", "name": name})).into_response())
            }
            Err(crate::Error::Engine(crate::EngineError::DuplicateAdapter { .. })) => Err(ApiError::new(StatusCode::CONFLICT, "invalid_request_error", "adapter_exists", format!("an adapter named {name:?} is loaded"))),
            Err(e) => Err(ApiError::bad_request(format!("loading {}: {}", path.display(), e.chain()))),
        }
    }
    .await;
    r.unwrap_or_else(|e: ApiError| e.into_response())
}

async fn admin_unload(State(st): S, headers: HeaderMap, UrlPath(name): UrlPath<String>) -> Response {
    let r = async {
        check_admin(&st, &headers)?;
        if !st.adapters.read().expect("lock").contains_key(&name) {
            return Err(ApiError::not_found("adapter_not_found", format!("adapter {name:?} is not loaded")));
        }
        let in_router = st.router.read().expect("lock").scenarios.iter().any(|s| s.adapters.iter().chain(s.arms.iter().flat_map(|a| &a.adapters)).any(|a| a.name == name));
        if in_router {
            return Err(ApiError::new(StatusCode::CONFLICT, "invalid_request_error", "adapter_in_use", format!("adapter {name:?} is used by the router: change the router first")));
        }
        st.engine.unload_adapter(&name).map_err(|e| ApiError::internal(e.chain()))?;
        st.adapters.write().expect("lock").remove(&name);
        Ok(Json(json!({"status": "unloaded", "name": name})).into_response())
    }
    .await;
    r.unwrap_or_else(|e: ApiError| e.into_response())
}

async fn admin_router(State(st): S, headers: HeaderMap) -> Response {
    if let Err(e) = check_admin(&st, &headers) {
        return e.into_response();
    }
    match st.reload_router() {
        Ok(n) => Json(json!({"status": "reloaded", "scenarios": n})).into_response(),
        Err(e) => ApiError::bad_request(e.chain()).into_response(),
    }
}

/// Serves `app(state)` on `listener` until `shutdown` resolves: then new generation
/// requests get 503 and the server stops accepting, lets running requests finish, and returns.
pub async fn serve(listener: tokio::net::TcpListener, state: Arc<ServerState>, shutdown: impl std::future::Future<Output = ()> + Send + 'static) -> std::io::Result<()> {
    let st = state.clone();
    let app = app(state);
    axum::serve(listener, app)
        .with_graceful_shutdown({
            let st = st.clone();
            async move {
                shutdown.await;
                st.begin_shutdown();
            }
        })
        .await?;
    let st2 = st.clone();
    tokio::task::spawn_blocking(move || st2.finish_batcher()).await.map_err(std::io::Error::other)?;
    Ok(())
}
