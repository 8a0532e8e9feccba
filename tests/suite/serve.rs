//! `edgelora serve` over HTTP on 127.0.0.1 (a free port picked by the OS): OpenAI-shaped
//! answers equal to `edgelora generate`'s, streaming, the router and A/B arms, feedback
//! that trains, admin adapter loading confined to its folder, hostile requests, queue
//! overflow, a client that disconnects mid-stream, graceful shutdown — and the official
//! `openai` Python client against it.

use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::common::{model_path, tmpdir};

fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_edgelora"))
}

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures").join(name)
}

/// A running server; killed on drop. Its stderr is collected for the no-panic check.
pub struct Server {
    child: Child,
    pub url: String,
    log: Arc<Mutex<String>>,
}

impl Server {
    pub fn start(args: &[&str]) -> Server {
        let mut child = bin()
            .args(["serve", "--port", "0", "-t", "1", "--ctx", "1024", "--model"])
            .arg(model_path())
            .args(args)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("edgelora serve starts");
        let stderr = child.stderr.take().unwrap();
        let log = Arc::new(Mutex::new(String::new()));
        let (tx, rx) = std::sync::mpsc::channel();
        let log2 = log.clone();
        std::thread::spawn(move || {
            let mut sent = false;
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if !sent {
                    if let Some(i) = line.find("listening on http://") {
                        let url = line[i + "listening on ".len()..].split_whitespace().next().unwrap().to_string();
                        let _ = tx.send(url);
                        sent = true;
                    }
                }
                log2.lock().unwrap().push_str(&line);
                log2.lock().unwrap().push('\n');
            }
        });
        let url = match rx.recv_timeout(Duration::from_secs(120)) {
            Ok(u) => u,
            Err(_) => {
                let _ = child.kill();
                panic!("the server did not start:\n{}", log.lock().unwrap());
            }
        };
        Server { child, url, log }
    }

    pub fn log(&self) -> String {
        self.log.lock().unwrap().clone()
    }

    /// SIGTERM; returns the exit status (bounded wait).
    fn terminate(&mut self) -> Option<std::process::ExitStatus> {
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let t0 = Instant::now();
        while t0.elapsed() < Duration::from_secs(60) {
            if let Some(s) = self.child.try_wait().unwrap() {
                return Some(s);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        None
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn agent() -> ureq::Agent {
    ureq::Agent::config_builder().http_status_as_error(false).timeout_global(Some(Duration::from_secs(300))).build().into()
}

/// (status, headers as lower-case pairs, body).
pub fn post(url: &str, path: &str, body: &[u8], key: Option<&str>) -> (u16, Vec<(String, String)>, String) {
    let mut req = agent().post(format!("{url}{path}")).header("content-type", "application/json");
    if let Some(k) = key {
        req = req.header("authorization", format!("Bearer {k}"));
    }
    let mut r = req.send(body).expect("the server answers");
    let headers = r.headers().iter().map(|(k, v)| (k.as_str().to_string(), v.to_str().unwrap_or("").to_string())).collect();
    (r.status().as_u16(), headers, r.body_mut().with_config().limit(64 << 20).read_to_string().unwrap())
}

fn get(url: &str, path: &str, key: Option<&str>) -> (u16, String) {
    let mut req = agent().get(format!("{url}{path}"));
    if let Some(k) = key {
        req = req.header("authorization", format!("Bearer {k}"));
    }
    let mut r = req.call().expect("the server answers");
    (r.status().as_u16(), r.body_mut().read_to_string().unwrap())
}

fn json_of(s: &str) -> Value {
    serde_json::from_str(s).unwrap_or_else(|e| panic!("not JSON ({e}): {s}"))
}

fn header<'a>(h: &'a [(String, String)], k: &str) -> Option<&'a str> {
    h.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str())
}

/// `edgelora generate`'s text for the same request (greedy), on serve's default backend
/// (the native engine).
fn generate(prompt: &str, chat: bool, n: usize, adapters: &[String]) -> String {
    let mut c = bin();
    c.args(["generate", "--backend", "native", "-t", "1", "--ctx", "1024", "-n", &n.to_string(), "--prompt", prompt, "--model"]).arg(model_path());
    if chat {
        c.arg("--chat");
    }
    for a in adapters {
        c.args(["--adapter", a]);
    }
    let out = c.output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8(out.stdout).unwrap();
    let text = text.strip_suffix('\n').unwrap_or(&text);
    if chat {
        text.to_string()
    } else {
        text.strip_prefix(prompt).unwrap().to_string()
    }
}

fn assert_openai_error(status: u16, body: &str, want_status: u16, what: &str) {
    assert_eq!(status, want_status, "{what}: {body}");
    let v = json_of(body);
    assert!(v["error"]["message"].is_string() && v["error"]["type"].is_string() && v["error"]["code"].is_string(), "{what}: not an OpenAI error: {body}");
}

const ROUTER: &str = r#"
[[scenario]]
name = "credit"
system = "You decide loan applications."
max_tokens = 6
adapters = [{ name = "seed", scale = 1.0 }]

[[scenario]]
name = "ab"
[[scenario.arm]]
name = "v1"
share = 0.5
adapters = [{ name = "seed" }]
[[scenario.arm]]
name = "v2"
share = 0.5
adapters = [{ name = "rs", scale = 0.5 }]
"#;

#[test]
fn serve_answers_as_generate_routes_records_feedback_and_survives_hostile_requests() {
    let dir = tmpdir();
    let router = dir.path().join("router.toml");
    std::fs::write(&router, ROUTER).unwrap();
    let feedback = dir.path().join("feedback.jsonl");
    let adapter_dir = dir.path().join("adapters");
    std::fs::create_dir_all(&adapter_dir).unwrap();
    let outside = dir.path().join("outside");
    std::fs::create_dir_all(&outside).unwrap();
    std::os::unix::fs::symlink(&outside, adapter_dir.join("escape")).unwrap();
    let seed = fixture("seed_r16_qv");
    let rs = fixture("rslora_r8_all");
    let mut server = Server::start(&[
        "--adapter",
        &format!("seed={}", seed.display()),
        "--adapter",
        &format!("rs={}:0.5", rs.display()),
        "--router",
        router.to_str().unwrap(),
        "--feedback-log",
        feedback.to_str().unwrap(),
        "--admin-key",
        "adm",
        "--adapter-dir",
        adapter_dir.to_str().unwrap(),
        "--max-tokens-cap",
        "64",
    ]);
    let url = server.url.clone();

    // Models: the base, each adapter and each scenario.
    let (s, body) = get(&url, "/v1/models", None);
    assert_eq!(s, 200);
    let ids: Vec<String> = json_of(&body)["data"].as_array().unwrap().iter().map(|m| m["id"].as_str().unwrap().to_string()).collect();
    for id in ["SmolLM2-135M-Instruct.Q4_1", "seed", "rs", "credit", "ab"] {
        assert!(ids.iter().any(|i| i == id), "{id} missing from {ids:?}");
    }

    // Greedy answers equal `edgelora generate`'s: base, an adapter, a weighted set.
    let q = "What is the capital of France?";
    let chat = |model: Value, extra: Value| -> (u16, Vec<(String, String)>, Value) {
        let mut b = json!({"messages": [{"role": "user", "content": q}], "max_tokens": 12, "temperature": 0});
        if !model.is_null() {
            b["model"] = model;
        }
        if let (Value::Object(o), Value::Object(e)) = (&mut b, extra) {
            o.extend(e);
        }
        let (s, h, body) = post(&url, "/v1/chat/completions", b.to_string().as_bytes(), None);
        (s, h, json_of(&body))
    };
    let (s, _, base) = chat(Value::Null, json!({}));
    assert_eq!(s, 200, "{base}");
    assert_eq!(base["choices"][0]["message"]["content"].as_str().unwrap(), generate(q, true, 12, &[]));
    assert_eq!(base["object"], "chat.completion");
    let u = &base["usage"];
    assert!(u["prompt_tokens"].as_u64().unwrap() > 0 && u["total_tokens"].as_u64() == Some(u["prompt_tokens"].as_u64().unwrap() + u["completion_tokens"].as_u64().unwrap()));
    let (_, _, with_rs) = chat(json!("rs"), json!({}));
    assert_eq!(with_rs["choices"][0]["message"]["content"].as_str().unwrap(), generate(q, true, 12, &[format!("{}:0.5", rs.display())]));
    let (_, _, weighted) = chat(Value::Null, json!({"adapters": [{"name": "seed", "scale": 0.7}, {"name": "rs", "scale": 0.3}]}));
    assert_eq!(weighted["choices"][0]["message"]["content"].as_str().unwrap(), generate(q, true, 12, &[format!("{}:0.7", seed.display()), format!("{}:0.3", rs.display())]));

    // Completions, plain and streamed: the same text; the stream ends with [DONE].
    let p = "The capital of France is";
    let body = json!({"prompt": p, "max_tokens": 8, "model": "seed"}).to_string();
    let (s, _, plain) = post(&url, "/v1/completions", body.as_bytes(), None);
    assert_eq!(s, 200);
    let plain = json_of(&plain)["choices"][0]["text"].as_str().unwrap().to_string();
    assert_eq!(plain, generate(p, false, 8, &[format!("{}:1", seed.display())]));
    let body = json!({"prompt": p, "max_tokens": 8, "model": "seed", "stream": true}).to_string();
    let (s, h, sse) = post(&url, "/v1/completions", body.as_bytes(), None);
    assert_eq!(s, 200);
    assert!(header(&h, "content-type").unwrap().starts_with("text/event-stream"));
    let events: Vec<&str> = sse.lines().filter_map(|l| l.strip_prefix("data: ")).collect();
    assert_eq!(*events.last().unwrap(), "[DONE]", "{sse}");
    let streamed: String = events[..events.len() - 1].iter().map(|e| json_of(e)["choices"][0]["text"].as_str().unwrap_or("").to_string()).collect();
    assert_eq!(streamed, plain);
    let finish = json_of(events[events.len() - 2])["choices"][0]["finish_reason"].clone();
    assert!(finish == "length" || finish == "stop", "{finish}");

    // A scenario: its system prompt and max_tokens, its name in a header; A/B arms stick per user.
    let (s, h, v) = chat(json!("credit"), json!({"max_tokens": Value::Null}));
    assert_eq!(s, 200, "{v}");
    assert_eq!(header(&h, "x-edgelora-scenario"), Some("credit"));
    assert!(v["usage"]["completion_tokens"].as_u64().unwrap() <= 6);
    let arm_of = |user: &str| -> String {
        let b = json!({"model": "ab", "user": user, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 1}).to_string();
        let (s, h, body) = post(&url, "/v1/chat/completions", b.as_bytes(), None);
        assert_eq!(s, 200, "{body}");
        header(&h, "x-edgelora-arm").unwrap().to_string()
    };
    let arms: Vec<String> = (0..12).map(|i| arm_of(&format!("user-{i}"))).collect();
    assert!(arms.iter().any(|a| a == "v1") && arms.iter().any(|a| a == "v2"), "{arms:?}");
    assert_eq!(arm_of("user-3"), arms[3]);
    let (s, _, sc) = post(&url, "/v1/chat/completions", br#"{"messages":[{"role":"user","content":"hi"}],"max_tokens":1}"#, None);
    assert_eq!(s, 200, "{sc}");
    let h_scn = {
        let mut r = agent().post(format!("{url}/v1/chat/completions")).header("x-scenario", "credit").send(r#"{"messages":[{"role":"user","content":"hi"}],"max_tokens":1}"#).unwrap();
        (r.status().as_u16(), r.headers().get("x-edgelora-scenario").map(|v| v.to_str().unwrap().to_string()), r.body_mut().read_to_string().unwrap())
    };
    assert_eq!((h_scn.0, h_scn.1.as_deref()), (200, Some("credit")), "{}", h_scn.2);

    // Feedback: a corrected answer becomes a {messages} record that trains as is.
    let id = weighted["id"].as_str().unwrap();
    let (s, _, body) = post(&url, "/v1/feedback", json!({"id": id, "rating": 1, "correct_output": "Paris."}).to_string().as_bytes(), None);
    assert_eq!(s, 200, "{body}");
    let (s, _, body) = post(&url, "/v1/feedback", json!({"id": base["id"], "rating": 0}).to_string().as_bytes(), None);
    assert_eq!(s, 200, "{body}");
    let (s, _, body) = post(&url, "/v1/feedback", br#"{"id": "chatcmpl-999999"}"#, None);
    assert_openai_error(s, &body, 404, "unknown completion");
    let log = std::fs::read_to_string(&feedback).unwrap();
    let first = json_of(log.lines().next().unwrap());
    assert_eq!(first["messages"].as_array().unwrap().last().unwrap()["content"], "Paris.");
    assert_eq!(first["adapters"].as_array().unwrap().len(), 2);
    let trained = bin()
        .args(["train", "--steps", "1", "--batch", "2", "--rank", "2", "--data"])
        .arg(&feedback)
        .arg("--out")
        .arg(dir.path().join("fb.gguf"))
        .arg("--model")
        .arg(model_path())
        .output()
        .unwrap();
    assert!(trained.status.success(), "the feedback log does not train: {}", String::from_utf8_lossy(&trained.stderr));

    // Hostile and bad requests: each an OpenAI-shaped error; the server keeps serving.
    let bad: Vec<(&str, Vec<u8>, u16, &str)> = vec![
        ("/v1/chat/completions", b"{not json".to_vec(), 400, "malformed JSON"),
        ("/v1/chat/completions", br#"{"messages": "hi"}"#.to_vec(), 400, "messages of the wrong type"),
        ("/v1/chat/completions", br#"{"messages": [{"role": "user", "content": "hi"}], "max_tokens": "ten"}"#.to_vec(), 400, "max_tokens of the wrong type"),
        ("/v1/chat/completions", br#"{"messages": [{"role": "user", "content": "hi"}], "max_tokens": 100000000}"#.to_vec(), 400, "huge max_tokens"),
        ("/v1/chat/completions", br#"{"messages": [{"role": "wizard", "content": "hi"}]}"#.to_vec(), 400, "bad role"),
        ("/v1/chat/completions", br#"{"messages": [{"role": "user", "content": "hi"}], "temperature": -1}"#.to_vec(), 400, "negative temperature"),
        ("/v1/completions", br#"{"prompt": 42}"#.to_vec(), 400, "prompt of the wrong type"),
        ("/v1/chat/completions", br#"{"model": "nope", "messages": [{"role": "user", "content": "hi"}]}"#.to_vec(), 404, "unknown model"),
        ("/v1/chat/completions", br#"{"adapters": [{"name": "nope"}], "messages": [{"role": "user", "content": "hi"}]}"#.to_vec(), 404, "unknown adapter"),
    ];
    for (path, body, want, what) in bad {
        let (s, _, text) = post(&url, path, &body, None);
        assert_openai_error(s, &text, want, what);
    }

    // A 10 MB body: refused from its Content-Length (413) before the body is read; the
    // client may keep sending, so this one is written on a socket by hand.
    {
        let addr = url.trim_start_matches("http://");
        let mut sock = std::net::TcpStream::connect(addr).unwrap();
        write!(sock, "POST /v1/completions HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n", 10 << 20).unwrap();
        let _ = sock.write_all(&vec![b'x'; 64 << 10]);
        sock.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let mut resp = Vec::new();
        let mut buf = [0u8; 4096];
        while let Ok(n) = sock.read(&mut buf) {
            if n == 0 {
                break;
            }
            resp.extend_from_slice(&buf[..n]);
            if resp.windows(4).any(|w| w == b"}}\r\n") || resp.ends_with(b"}}") {
                break;
            }
        }
        let resp = String::from_utf8_lossy(&resp);
        assert!(resp.starts_with("HTTP/1.1 413") && resp.contains("\"request_too_large\""), "a 10 MB body: {resp}");
    }

    // Admin: loads only from --adapter-dir (no traversal, no symlink escape); unload.
    std::fs::copy(fixture("seed_r16_qv/adapter_config.json"), outside.join("adapter_config.json")).unwrap();
    std::fs::copy(fixture("seed_r16_qv/adapter_model.safetensors"), outside.join("adapter_model.safetensors")).unwrap();
    let synth = dir.path().join("adapters/tiny.gguf");
    let out = bin().args(["adapter", "synth", "--rank", "2", "--targets", "attn_q,attn_v", "--out"]).arg(&synth).arg("--model").arg(model_path()).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    for (body, want, what) in [
        (json!({"name": "x", "path": "../outside"}), 400, "path traversal"),
        (json!({"name": "x", "path": "/etc/passwd"}), 400, "absolute path"),
        (json!({"name": "x", "path": "escape"}), 400, "symlink escape"),
        (json!({"name": "x", "path": "missing.gguf"}), 404, "missing file"),
    ] {
        let (s, _, text) = post(&url, "/admin/adapters", body.to_string().as_bytes(), Some("adm"));
        assert_openai_error(s, &text, want, what);
    }
    let (s, _, text) = post(&url, "/admin/adapters", br#"{"name": "tiny", "path": "tiny.gguf"}"#, None);
    assert_openai_error(s, &text, 401, "admin without its key");
    let (s, _, text) = post(&url, "/admin/adapters", br#"{"name": "tiny", "path": "tiny.gguf"}"#, Some("adm"));
    assert_eq!(s, 200, "{text}");
    let (s, _, text) = post(&url, "/v1/chat/completions", br#"{"model": "tiny", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}"#, None);
    assert_eq!(s, 200, "{text}");
    let mut r = agent().delete(format!("{url}/admin/adapters/tiny")).header("authorization", "Bearer adm").call().unwrap();
    assert_eq!(r.status().as_u16(), 200, "{}", r.body_mut().read_to_string().unwrap());
    let (s, _, text) = post(&url, "/v1/chat/completions", br#"{"model": "tiny", "messages": [{"role": "user", "content": "hi"}]}"#, None);
    assert_openai_error(s, &text, 404, "an unloaded adapter");

    // A client that disconnects mid-stream: the server goes on serving.
    {
        let addr = url.trim_start_matches("http://");
        let mut sock = std::net::TcpStream::connect(addr).unwrap();
        let body = json!({"prompt": "Once upon a time", "max_tokens": 60, "stream": true}).to_string();
        write!(sock, "POST /v1/completions HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}", body.len()).unwrap();
        let mut buf = [0u8; 512];
        let n = sock.read(&mut buf).unwrap();
        assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"));
        drop(sock);
    }
    let (s, _, text) = post(&url, "/v1/chat/completions", br#"{"messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}"#, None);
    assert_eq!(s, 200, "{text}");

    // Metrics and health.
    let (s, m) = get(&url, "/metrics", None);
    assert_eq!(s, 200);
    for name in ["edgelora_requests_total", "edgelora_tokens_total", "edgelora_queue_depth", "edgelora_time_to_first_token_seconds", "edgelora_time_per_output_token_seconds"] {
        assert!(m.contains(name), "{name} missing from /metrics");
    }
    assert!(m.contains("arm=\"v1\"") || m.contains("arm=\"v2\""), "no per-arm series");
    assert_eq!(get(&url, "/health", None).0, 200);

    // Graceful shutdown on SIGTERM: exit 0, no panic in the log.
    let status = server.terminate().expect("the server exits within 60 s of SIGTERM");
    assert!(status.success(), "exit status {status:?}\n{}", server.log());
    assert!(!server.log().contains("panicked"), "{}", server.log());
}

#[test]
#[cfg(feature = "llama")]
fn serve_refuses_a_missing_key_and_answers_429_when_its_queue_is_full() {
    // The llama.cpp backend: one request at a time (the batcher's path is the default).
    let server = Server::start(&["--backend", "llama", "--api-key", "sekret", "--max-queue", "0"]);
    let url = server.url.clone();
    let (s, _, text) = post(&url, "/v1/chat/completions", br#"{"messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}"#, None);
    assert_openai_error(s, &text, 401, "missing key");
    let (s, _, text) = post(&url, "/v1/chat/completions", br#"{"messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}"#, Some("wrong"));
    assert_openai_error(s, &text, 401, "wrong key");
    assert_eq!(get(&url, "/v1/models", None).0, 401);
    // One long request holds the engine; with no queue, a second one gets 429 + Retry-After.
    let u2 = url.clone();
    let long = std::thread::spawn(move || post(&u2, "/v1/completions", br#"{"prompt": "Once upon a time", "max_tokens": 200}"#, Some("sekret")));
    let t0 = Instant::now();
    let mut got_429 = false;
    while t0.elapsed() < Duration::from_secs(20) && !long.is_finished() {
        std::thread::sleep(Duration::from_millis(200));
        let (s, h, text) = post(&url, "/v1/completions", br#"{"prompt": "Hi", "max_tokens": 1}"#, Some("sekret"));
        if s == 429 {
            assert_openai_error(s, &text, 429, "queue full");
            assert!(header(&h, "retry-after").is_some());
            got_429 = true;
            break;
        }
    }
    assert!(got_429, "no 429 while a request held the engine with --max-queue 0");
    let (s, _, text) = long.join().unwrap();
    assert_eq!(s, 200, "{text}");
    assert!(!server.log().contains("panicked"));
}

/// The official `openai` client (installed by scripts/install-deps into
/// ~/.cache/edgelora-venv): chat and completions, streaming and not, base / adapter /
/// scenario / weighted `adapters`; greedy answers equal `edgelora generate`'s.
#[test]
fn the_openai_python_client_talks_to_serve() {
    let venv = std::env::var_os("EDGELORA_VENV").map(PathBuf::from).unwrap_or_else(|| PathBuf::from(std::env::var("HOME").unwrap()).join(".cache/edgelora-venv"));
    let python = venv.join("bin/python");
    let ok = Command::new(&python).args(["-c", "import openai"]).output().is_ok_and(|o| o.status.success());
    assert!(ok, "{} cannot import openai: run scripts/install-deps (it creates the venv)", python.display());
    let dir = tmpdir();
    let router = dir.path().join("router.toml");
    std::fs::write(&router, ROUTER).unwrap();
    let seed = fixture("seed_r16_qv");
    let server = Server::start(&["--adapter", &format!("seed={}", seed.display()), "--adapter", &format!("rs={}:0.5", fixture("rslora_r8_all").display()), "--router", router.to_str().unwrap(), "--api-key", "k"]);
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/python/openai_client.py");
    let out = Command::new(&python).arg(script).arg(format!("{}/v1", server.url)).arg("k").output().unwrap();
    assert!(out.status.success(), "openai client failed:\n{}\n{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    let got = json_of(&String::from_utf8_lossy(&out.stdout));
    let q = "What is the capital of France?";
    let p = "The capital of France is";
    let rs = format!("{}:0.5", fixture("rslora_r8_all").display());
    assert_eq!(got["chat_base"], generate(q, true, 10, &[]));
    assert_eq!(got["chat_base_stream"], got["chat_base"]);
    assert_eq!(got["chat_adapter"], generate(q, true, 10, &[rs.clone()]));
    assert_eq!(got["chat_weighted"], generate(q, true, 10, &[format!("{}:0.7", seed.display()), format!("{}:0.3", fixture("rslora_r8_all").display())]));
    assert_eq!(got["completion_adapter"], generate(p, false, 8, &[rs]));
    assert_eq!(got["completion_adapter_stream"], got["completion_adapter"]);
    assert!(got["chat_scenario"].as_str().is_some_and(|s| !s.is_empty()));
    assert!(got["models"].as_array().unwrap().iter().any(|m| m == "credit"));
    assert!(!server.log().contains("panicked"));
}

fn rss_kib(pid: u32) -> u64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    s.lines().find(|l| l.starts_with("VmRSS:")).and_then(|l| l.split_whitespace().nth(1)).and_then(|v| v.parse().ok()).unwrap()
}

/// 8 concurrent greedy requests on 4 adapter sets and the base each get the text they get
/// alone; then a bounded load (512 requests, 16 at a time) ends with no error but 429s,
/// and the server's RSS after it is within 10% of its RSS after warm-up.
#[test]
fn serve_under_concurrent_load_answers_as_alone_and_keeps_its_memory() {
    let seed = fixture("seed_r16_qv");
    let rs = fixture("rslora_r8_all");
    let server = Server::start(&["--adapter", &format!("seed={}", seed.display()), "--adapter", &format!("rs={}", rs.display()), "--max-queue", "8"]);
    let url = server.url.clone();
    let sets: Vec<Value> = vec![
        json!([]),
        json!([{"name": "seed", "scale": 1.0}]),
        json!([{"name": "rs", "scale": 0.5}]),
        json!([{"name": "seed", "scale": 0.5}, {"name": "rs", "scale": 0.5}]),
        json!([{"name": "rs", "scale": -0.5}]),
    ];
    let body = |i: usize| json!({"prompt": format!("Item {i}: the capital of France is"), "max_tokens": 6, "adapters": sets[i % sets.len()]}).to_string();
    let alone: Vec<String> = (0..8).map(|i| {
        let (s, _, t) = post(&url, "/v1/completions", body(i).as_bytes(), None);
        assert_eq!(s, 200, "{t}");
        json_of(&t)["choices"][0]["text"].as_str().unwrap().to_string()
    }).collect();
    let metric = |name: &str| -> f64 {
        let (_, text) = get(&url, "/metrics", None);
        text.lines().find(|l| l.starts_with(name) && l[name.len()..].starts_with(' ')).and_then(|l| l.split_whitespace().nth(1)).and_then(|v| v.parse().ok()).unwrap_or_else(|| panic!("{name} missing from /metrics"))
    };
    let (steps0, seqs0) = (metric("edgelora_batch_steps"), metric("edgelora_batch_sequences"));
    let together: Vec<_> = (0..8)
        .map(|i| {
            let (u, b) = (url.clone(), body(i));
            std::thread::spawn(move || post(&u, "/v1/completions", b.as_bytes(), None))
        })
        .collect();
    for (i, h) in together.into_iter().enumerate() {
        let (s, _, t) = h.join().unwrap();
        assert_eq!(s, 200, "{t}");
        assert_eq!(json_of(&t)["choices"][0]["text"].as_str().unwrap(), alone[i], "request {i} (adapters {}) differs from its solo answer", sets[i % sets.len()]);
    }
    // They were decoded together: the batcher's steps carried several sequences.
    let (steps, seqs) = (metric("edgelora_batch_steps") - steps0, metric("edgelora_batch_sequences") - seqs0);
    assert!(seqs > 2.0 * steps, "the concurrent requests did not share steps: {seqs} sequences in {steps} steps");
    // Bounded load: 16 clients × 32 requests of 2 tokens on rotating adapter sets, after a
    // warm-up round of the same shape (16 × 8) that brings thread pools and caches to
    // their steady size.
    let load = |per_client: usize| -> std::collections::BTreeMap<u16, usize> {
        let clients: Vec<_> = (0..16)
            .map(|c| {
                let u = url.clone();
                let sets = sets.clone();
                std::thread::spawn(move || {
                    let mut counts = std::collections::BTreeMap::new();
                    for k in 0..per_client {
                        let b = json!({"prompt": format!("Client {c} request {k}:"), "max_tokens": 2, "adapters": sets[(c + k) % sets.len()]}).to_string();
                        let (s, _, t) = post(&u, "/v1/completions", b.as_bytes(), None);
                        assert!(s == 200 || s == 429, "status {s}: {t}");
                        *counts.entry(s).or_insert(0usize) += 1;
                    }
                    counts
                })
            })
            .collect();
        let mut total = std::collections::BTreeMap::new();
        for h in clients {
            for (s, n) in h.join().unwrap() {
                *total.entry(s).or_insert(0usize) += n;
            }
        }
        total
    };
    let pid = server.child.id();
    load(8);
    let warm = rss_kib(pid);
    let total = load(32);
    let after = rss_kib(pid);
    eprintln!("load: {total:?}; RSS after warm-up {warm} KiB, after the load {after} KiB");
    assert!(total.get(&200).copied().unwrap_or(0) > 0, "{total:?}");
    assert!((after as f64) <= warm as f64 * 1.10, "RSS grew from {warm} to {after} KiB over the load");
    assert!(!server.log().contains("panicked"));
}
