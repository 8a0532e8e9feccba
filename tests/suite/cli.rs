//! The `edgelora` binary: help, README's command table, exit codes, JSON output.

use std::process::Command;

use edgelora::gguf::GgufFile;

use crate::common::{model_path, tmpdir};

fn edgelora(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_edgelora")).args(args).output().expect("run edgelora")
}

fn subcommands_in_help() -> Vec<String> {
    let out = edgelora(&["--help"]);
    assert!(out.status.success());
    let help = String::from_utf8(out.stdout).unwrap();
    let section = help.split("Commands:").nth(1).unwrap().split("Options:").next().unwrap().to_string();
    section
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .filter(|w| *w != "help")
        .map(str::to_string)
        .collect()
}

#[test]
fn readme_command_table_matches_help() {
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
    // Table rows look like: | `edgelora generate …` | … |
    let mut in_readme: Vec<String> = readme
        .lines()
        .filter(|l| l.starts_with("| `edgelora "))
        .map(|l| l.trim_start_matches("| `edgelora ").split([' ', '`']).next().unwrap().to_string())
        .collect();
    in_readme.dedup();
    assert_eq!(in_readme, subcommands_in_help(), "README's CLI table and `edgelora --help` disagree");
}

#[test]
fn bad_input_exits_1_with_the_cause() {
    let out = edgelora(&["generate", "--model", "/nonexistent/x.gguf", "-p", "hi"]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("error: loading model /nonexistent/x.gguf") && err.contains("caused by:"), "{err}");
    let out = edgelora(&["inspect", "/nonexistent/y.gguf"]);
    assert_eq!(out.status.code(), Some(1));
    let dir = tmpdir();
    let junk = dir.path().join("junk.gguf");
    std::fs::write(&junk, b"GGUF\x03\x00\x00\x00").unwrap();
    let out = edgelora(&["inspect", junk.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("truncated"));
    let out = edgelora(&["logits", "--model", model_path().to_str().unwrap(), "--tokens", "1,999999"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("999999"));
    // Usage errors are clap's exit code 2.
    assert_eq!(edgelora(&["generate", "--bogus"]).status.code(), Some(2));
}

#[test]
fn logits_json_and_binary_dump() {
    let dir = tmpdir();
    let bin = dir.path().join("l.f32");
    let m = model_path();
    let out = edgelora(&["logits", "-m", m.to_str().unwrap(), "-t", "1", "-p", "The capital of France is", "--top", "3", "--json", "--out", bin.to_str().unwrap()]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let top = v["top"].as_array().unwrap();
    assert_eq!(top.len(), 3);
    assert_eq!(v["n_vocab"], 49152);
    assert!(top[0]["piece"].as_str().unwrap().contains("Paris"), "{v}");
    let raw = std::fs::read(&bin).unwrap();
    assert_eq!(raw.len(), 49152 * 4);
    let id = top[0]["id"].as_u64().unwrap() as usize;
    let l = f32::from_le_bytes(raw[id * 4..id * 4 + 4].try_into().unwrap());
    assert_eq!(l as f64, top[0]["logit"].as_f64().unwrap());
    // Special tokens in --prompt are parsed; --tokens gives the same answer.
    let ids: Vec<String> = v["tokens"].as_array().unwrap().iter().map(|t| t.to_string()).collect();
    let out2 = edgelora(&["logits", "-m", m.to_str().unwrap(), "-t", "1", "--tokens", &ids.join(","), "--top", "3", "--json"]);
    let v2: serde_json::Value = serde_json::from_slice(&out2.stdout).unwrap();
    assert_eq!(v["top"], v2["top"]);
}

#[test]
fn inspect_a_model_and_an_adapter() {
    let m = model_path();
    let out = edgelora(&["inspect", m.to_str().unwrap(), "--json"]);
    assert!(out.status.success());
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["kind"], "model");
    assert_eq!(v["architecture"], "llama");
    assert_eq!(v["totals"]["tensors"], v["tensors"].as_array().unwrap().len());
    assert_eq!(v["metadata"]["llama.block_count"], 30);

    let dir = tmpdir();
    let a = dir.path().join("a.gguf");
    let out = edgelora(&["adapter", "synth", "-m", m.to_str().unwrap(), "--out", a.to_str().unwrap(), "--rank", "8", "--targets", "attn_q,attn_v"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let out = edgelora(&["inspect", a.to_str().unwrap(), "--json"]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["kind"], "adapter");
    assert_eq!(v["lora_ranks"]["8"], 60);
    // And generate accepts it.
    let out = edgelora(&["generate", "-m", m.to_str().unwrap(), "-t", "1", "-p", "Hi", "-n", "4", "--adapter", &format!("{}:0.5", a.display())]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
}

#[test]
fn adapter_convert_compose_verify() {
    let m = model_path();
    let m = m.to_str().unwrap();
    let fx = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures");
    let seed = format!("{fx}/seed_r16_qv");
    let rs = format!("{fx}/rslora_r8_all");
    let dir = tmpdir();
    let out = |n: &str| dir.path().join(n).to_str().unwrap().to_string();

    let v = edgelora(&["adapter", "verify", "-m", m, &rs]);
    assert!(v.status.success(), "{}", String::from_utf8_lossy(&v.stderr));
    let text = String::from_utf8_lossy(&v.stdout);
    assert!(text.starts_with("OK:") && text.contains("210 tensors") && text.contains("r4·s8"), "{text}");

    let g = out("rs.gguf");
    let c = edgelora(&["adapter", "convert", &rs, &g, "-m", m, "--dtype", "f32", "--name", "rs", "--adapter-version", "2.1"]);
    assert!(c.status.success(), "{}", String::from_utf8_lossy(&c.stderr));
    let i = edgelora(&["inspect", &g, "--json"]);
    let j: serde_json::Value = serde_json::from_slice(&i.stdout).unwrap();
    assert_eq!(j["metadata"]["edgelora.manifest.name"], "rs");
    assert_eq!(j["metadata"]["edgelora.manifest.version"], "2.1");
    assert_eq!(j["metadata"]["edgelora.manifest.rank"], 8);
    let p = out("rs-peft");
    assert!(edgelora(&["adapter", "convert", &g, &p, "-m", m]).status.success());
    let i = edgelora(&["inspect", &p, "--json"]);
    let j: serde_json::Value = serde_json::from_slice(&i.stdout).unwrap();
    assert_eq!(j["config"]["rank_pattern"]["down_proj"], 4);
    assert_eq!(j["manifest"]["version"], "2.1");

    let cat = out("cat.gguf");
    let r = edgelora(&["adapter", "compose", "--out", &cat, &format!("{seed}:0.7"), &format!("{rs}:0.3"), "--method", "cat", "-m", m]);
    assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
    let r = edgelora(&["adapter", "compose", "--out", &out("lin.gguf"), &seed, &rs, "--method", "linear", "-m", m]);
    assert_eq!(r.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&r.stderr).contains("equal ranks"));
    assert!(!dir.path().join("lin.gguf").exists());
    let r = edgelora(&["adapter", "compose", "--out", &out("svd.gguf"), &seed, &rs, "--method", "svd", "--rank", "4", "-m", m]);
    assert!(String::from_utf8_lossy(&r.stderr).contains("retained energy"), "{}", String::from_utf8_lossy(&r.stderr));

    // A PEFT folder works wherever an adapter is taken.
    let gen = edgelora(&["generate", "-m", m, "-t", "1", "-p", "Hi", "-n", "3", "--adapter", &format!("{seed}:0.5"), "--adapter", &cat]);
    assert!(gen.status.success(), "{}", String::from_utf8_lossy(&gen.stderr));
    // A model is not an adapter.
    let bad = edgelora(&["adapter", "verify", "-m", m, m]);
    assert_eq!(bad.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&bad.stderr).contains("general.type"));
}

#[test]
fn merge_command_and_merge_at_load() {
    let m = model_path();
    let m = m.to_str().unwrap();
    let seed = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/seed_r16_qv");
    let dir = tmpdir();
    let out = dir.path().join("merged.gguf");
    // refit: what --merge at load uses by default; the summary names it and says gptq is closer.
    let r = edgelora(&["merge", "-m", m, "-a", &format!("{seed}:0.5"), "--quantizer", "refit", "--out", out.to_str().unwrap()]);
    let err = String::from_utf8_lossy(&r.stderr);
    assert!(r.status.success(), "{err}");
    assert!(err.contains("60 tensors merged") && err.contains("with the refit quantizer; gptq is closer"), "{err}");
    let logits = |extra: &[&str]| -> serde_json::Value {
        let mut args = vec!["logits", "-t", "1", "-p", "The capital of France is", "--top", "5", "--json"];
        args.extend_from_slice(extra);
        let o = edgelora(&args);
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        serde_json::from_slice(&o.stdout).unwrap()
    };
    // --merge merges at load into a temporary file: the same model as `merge` wrote.
    let at_load = logits(&["-m", m, "--merge", "-a", &format!("{seed}:0.5")]);
    let from_file = logits(&["-m", out.to_str().unwrap()]);
    assert_eq!(at_load["top"], from_file["top"]);
    // --merge-quantizer picks the quantizer of the merge at load.
    let ggml = dir.path().join("ggml.gguf");
    let r = edgelora(&["merge", "-m", m, "-a", &format!("{seed}:0.5"), "--quantizer", "ggml", "--out", ggml.to_str().unwrap()]);
    assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
    let at_load = logits(&["-m", m, "--merge", "--merge-quantizer", "ggml", "-a", &format!("{seed}:0.5")]);
    let from_file = logits(&["-m", ggml.to_str().unwrap()]);
    assert_eq!(at_load["top"], from_file["top"]);
    assert_ne!(at_load["top"], logits(&["-m", out.to_str().unwrap()])["top"], "ggml's and refit's merges gave the same top-5 logits");
    let r = edgelora(&["logits", "-m", m, "--merge-quantizer", "ggml", "-a", seed, "-p", "Hi"]);
    assert_eq!(r.status.code(), Some(2), "--merge-quantizer without --merge");
    let r = edgelora(&["merge", "-m", m, "--out", out.to_str().unwrap()]);
    assert_eq!(r.status.code(), Some(1));
    let r = edgelora(&["merge", "-m", m, "--type", "q9_9", "--out", out.to_str().unwrap()]);
    assert!(String::from_utf8_lossy(&r.stderr).contains("--type"));
}

#[test]
fn merge_with_gptq_on_a_calibration_text() {
    let m = model_path();
    let m = m.to_str().unwrap();
    let seed = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/seed_r16_qv");
    let dir = tmpdir();
    let out = |n: &str| dir.path().join(n).to_str().unwrap().to_string();
    // The README's first 30 000 characters as calibration text (~8k tokens in ~60
    // paragraphs, enough rows for every q/v input, 576 wide; cut at a paragraph so the
    // test's cost does not grow with the README).
    let text = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
    let cut = text.as_bytes()[..30_000.min(text.len())].windows(2).rposition(|w| w == b"\n\n").expect("a paragraph break in the README's first 30 000 bytes");
    let calibration = dir.path().join("calibration.txt");
    std::fs::write(&calibration, &text[..cut]).unwrap();
    let readme = calibration.to_str().unwrap();
    let r = edgelora(&["merge", "-m", m, "-a", seed, "--quantizer", "gptq", "--calibration", readme, "--out", &out("g.gguf")]);
    let err = String::from_utf8_lossy(&r.stderr);
    assert!(r.status.success(), "{err}");
    assert!(err.contains("60 tensors merged") && !err.contains("written by refit"), "{err}");
    // Two short paragraphs: too few rows, so every tensor takes refit's path — and says so.
    let short = dir.path().join("short.txt");
    std::fs::write(&short, "<|im_start|>user\nHello there!<|im_end|>\n\nThe weather is mild today.").unwrap();
    let r = edgelora(&["merge", "-m", m, "-a", seed, "--quantizer", "gptq", "--calibration", short.to_str().unwrap(), "--out", &out("s.gguf")]);
    let err = String::from_utf8_lossy(&r.stderr);
    assert!(r.status.success(), "{err}");
    assert!(err.contains("gptq: 60 merged tensor(s) written by refit"), "{err}");
    let r = edgelora(&["merge", "-m", m, "-a", seed, "--quantizer", "refit", "--out", &out("r.gguf")]);
    assert!(r.status.success());
    // The offline merge's default (auto) is gptq on this Q4_1 model: with the short text it
    // takes gptq's path (every tensor by refit, as said) and writes the same tensors.
    let r = edgelora(&["merge", "-m", m, "-a", seed, "--calibration", short.to_str().unwrap(), "--out", &out("auto.gguf")]);
    let err = String::from_utf8_lossy(&r.stderr);
    assert!(r.status.success(), "{err}");
    assert!(err.contains("with the gptq quantizer:") && err.contains("gptq: 60 merged tensor(s) written by refit"), "{err}");
    assert_eq!(GgufFile::open(out("auto.gguf")).unwrap().tensor_bytes("blk.3.attn_q.weight").unwrap().1, GgufFile::open(out("s.gguf")).unwrap().tensor_bytes("blk.3.attn_q.weight").unwrap().1);
    // An F16 output is exact to round: auto picks refit there.
    let r = edgelora(&["merge", "-m", m, "-a", seed, "--type", "f16", "--out", &out("f16.gguf")]);
    let err = String::from_utf8_lossy(&r.stderr);
    assert!(r.status.success() && err.contains("with the refit quantizer"), "{err}");
    let (g, s, refit) = (GgufFile::open(out("g.gguf")).unwrap(), GgufFile::open(out("s.gguf")).unwrap(), GgufFile::open(out("r.gguf")).unwrap());
    let t = "blk.3.attn_q.weight";
    let data = |f: &GgufFile| f.tensor_bytes(t).unwrap().1.to_vec();
    assert_eq!(data(&s), data(&refit));
    assert_ne!(data(&g), data(&refit));
    // --calibration belongs to gptq; a missing text is named.
    let r = edgelora(&["merge", "-m", m, "-a", seed, "--quantizer", "refit", "--calibration", readme, "--out", &out("x.gguf")]);
    assert_eq!(r.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&r.stderr).contains("--quantizer gptq"));
    let r = edgelora(&["merge", "-m", m, "-a", seed, "--quantizer", "gptq", "--calibration", "/nonexistent.txt", "--out", &out("x.gguf")]);
    assert_eq!(r.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&r.stderr).contains("/nonexistent.txt"));
}

#[test]
fn lora_int8_from_the_cli() {
    // --lora-int8: decoding reads int8 copies of the factors; greedy text as with the exact
    // factors on a short continuation (their logits differ by ~1e-6 KL); refused where it
    // cannot apply.
    let m = model_path();
    let m = m.to_str().unwrap();
    let seed = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/seed_r16_qv");
    let run = |extra: &[&str]| -> String {
        let mut args = vec!["generate", "-m", m, "-t", "1", "--backend", "native", "-a", seed, "-p", "The capital of France is", "-n", "4"];
        args.extend_from_slice(extra);
        let o = edgelora(&args);
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        String::from_utf8_lossy(&o.stdout).into_owned()
    };
    assert_eq!(run(&["--lora-int8"]), run(&[]));
    for (extra, says) in [(&["--backend", "llama"][..], "--backend native"), (&["--backend", "native", "--device", "gpu"][..], "for the CPU")] {
        let mut args = vec!["generate", "-m", m, "-a", seed, "-p", "x", "--lora-int8"];
        args.extend_from_slice(extra);
        let o = edgelora(&args);
        assert_eq!(o.status.code(), Some(1), "{extra:?}");
        assert!(String::from_utf8_lossy(&o.stderr).contains(says), "{extra:?}: {}", String::from_utf8_lossy(&o.stderr));
    }
    let tiny = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/arch/qwen3/model.f32.gguf");
    let o = edgelora(&["bench", "batch", "-m", tiny, "-t", "1", "--batch", "1,2", "--steps", "2", "--rank", "8", "--lora-int8", "--json"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["lora_factors"], "int8");
    assert_eq!(v["rows"].as_array().unwrap().len(), 2);
    // The library refuses int8 copies on a device model (here through bench batch).
    let o = edgelora(&["bench", "batch", "-m", tiny, "--device", "gpu", "--batch", "1", "--steps", "1", "--rank", "8", "--lora-int8"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&o.stderr).contains("for the CPU"), "{}", String::from_utf8_lossy(&o.stderr));
}

#[test]
#[cfg(feature = "llama")]
fn native_backend_from_the_cli() {
    let m = model_path();
    let m = m.to_str().unwrap();
    let seed = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/seed_r16_qv");
    let top = |backend: &str| -> serde_json::Value {
        let o = edgelora(&["logits", "-m", m, "-t", "1", "--backend", backend, "-p", "The capital of France is", "-a", seed, "--top", "3", "--json"]);
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
        assert!(v["backend"].as_str().unwrap().starts_with(if backend == "native" { "native" } else { "llama" }));
        v["top"][0]["id"].clone()
    };
    assert_eq!(top("native"), top("llama"));
    let g = edgelora(&["generate", "-m", m, "-t", "1", "--backend", "native", "-p", "The capital of France is", "-n", "3"]);
    assert!(g.status.success(), "{}", String::from_utf8_lossy(&g.stderr));
    assert!(String::from_utf8_lossy(&g.stdout).contains("Paris"));
    let bad = edgelora(&["generate", "-m", m, "--device", "gpu", "-p", "x"]);
    assert_eq!(bad.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&bad.stderr).contains("--backend native"));
}

#[test]
fn chat_switches_adapters_mid_conversation() {
    use std::io::Write;
    use std::process::Stdio;
    let m = model_path();
    let seed = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/seed_r16_qv");
    let mut child = Command::new(env!("CARGO_BIN_EXE_edgelora"))
        .args(["chat", "-m", m.to_str().unwrap(), "-t", "1", "-n", "8", "--adapter", seed])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let script = "What is the capital of France?\n/adapter a0:2\nAnd of Italy?\n/adapter nope\n/adapter none\n/adapters\n/load /nonexistent/x.gguf\n/reset\n/quit\n";
    child.stdin.take().unwrap().write_all(script.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success());
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stdout.contains("Paris"), "{stdout}");
    assert!(stderr.contains("a0") && stderr.contains("active at 2"), "{stderr}");
    assert!(stderr.contains("no adapter named \"nope\""), "{stderr}");
    assert!(stderr.contains("/nonexistent/x.gguf"), "{stderr}");
}
