//! Faults from outside: a file system that fills up midway (merge, train checkpoint and
//! export, adapter convert/compose), kill -9 at several points of train / merge /
//! convert, and an adapter unloaded while a request on another thread generates with it.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use edgelora::adapter::{read_peft, write_gguf_lora, GgufLoraDtype};
use edgelora::compute::Device;
use edgelora::engine::{GenerateRequest, NativeRuntime, Prompt};
use edgelora::gguf::GgufFile;
use edgelora::merge::{merge_files, MergeOptions, Quantizer};
use edgelora::train::{parse_targets, TrainConfig, Trainer};
use rand::{Rng, SeedableRng};
use sha2::{Digest, Sha256};

use crate::common::{model_path, tiny_model, tmpdir};
#[cfg(feature = "llama")]
use crate::common::runtime;

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures").join(name)
}

fn edgelora(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_edgelora")).args(args).output().unwrap()
}

/// A tmpfs of `size` (mount's syntax: `64k`, `16m`) mounted on a fresh directory,
/// unmounted on drop. `None` (with the reason on stderr) where this process may not mount.
struct SmallFs {
    dir: tempfile::TempDir,
}

impl SmallFs {
    fn mount(size: &str) -> Option<SmallFs> {
        let dir = tmpdir();
        let out = Command::new("mount").args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"]).arg(dir.path()).output();
        match out {
            Ok(o) if o.status.success() => Some(SmallFs { dir }),
            Ok(o) => {
                eprintln!("SKIPPED disk-full checks: cannot mount a {size} tmpfs ({}); they need root", String::from_utf8_lossy(&o.stderr).trim());
                None
            }
            Err(e) => {
                eprintln!("SKIPPED disk-full checks: no mount command ({e})");
                None
            }
        }
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    /// Whatever is in the file system (the contract: nothing after a failed write).
    fn entries(&self) -> Vec<String> {
        std::fs::read_dir(self.path()).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect()
    }
}

impl Drop for SmallFs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(self.dir.path()).status();
    }
}

#[test]
fn a_full_disk_gives_an_error_naming_the_path_and_leaves_nothing() {
    // merge: a 98 MB model into 16 MB.
    let Some(fs) = SmallFs::mount("16m") else { return };
    let out = fs.path().join("merged.gguf");
    let opts = MergeOptions { quantizer: Quantizer::Refit, ..Default::default() };
    let e = merge_files(&model_path(), &[(fixture("seed_r16_qv"), 1.0)], &out, &opts, &mut |_, _, _| {}).unwrap_err();
    let msg = format!("{e}: {:?}", std::error::Error::source(&e));
    assert!(msg.contains(fs.path().to_str().unwrap()), "{msg}");
    assert_eq!(fs.entries(), Vec::<String>::new(), "merge left files behind");
    drop(fs);

    // adapter convert / compose (CLI): ≈ 2.4 MB of f16 factors into 512 KiB; exit 1.
    let fs = SmallFs::mount("512k").unwrap();
    let seed = fixture("seed_r16_qv");
    for (what, args) in [
        ("convert", vec!["adapter", "convert", seed.to_str().unwrap(), "x.gguf"]),
        ("convert --to peft", vec!["adapter", "convert", seed.to_str().unwrap(), "peft-out", "--to", "peft"]),
        ("compose", vec!["adapter", "compose", "--out", "c.gguf", seed.to_str().unwrap(), &format!("{}:0.5", fixture("rslora_r8_all").display())]),
    ] {
        let args: Vec<String> = args
            .iter()
            .map(|a| if ["x.gguf", "peft-out", "c.gguf"].contains(a) { fs.path().join(a).to_string_lossy().into_owned() } else { a.to_string() })
            .collect();
        let mut full = args.clone();
        full.extend(["-m".into(), model_path().to_string_lossy().into_owned()]);
        let o = edgelora(&full.iter().map(String::as_str).collect::<Vec<_>>());
        let err = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(1), "{what}: {err}");
        assert!(err.contains(fs.path().to_str().unwrap()) && err.contains("No space left"), "{what}: {err}");
        assert_eq!(fs.entries(), Vec::<String>::new(), "{what} left files behind");
    }
    drop(fs);

    // train: a checkpoint (the factors and AdamW moments) and the export, each into a
    // file system too small for it; the same trainer then saves elsewhere.
    let dir = tmpdir();
    let base = tiny_model(&dir.path().join("tiny.gguf"), "llama", 3);
    let cfg = TrainConfig { rank: 8, alpha: 16.0, targets: parse_targets("all-linear").unwrap(), steps: 2, batch: 2, lr: 1e-2, ..TrainConfig::default() };
    let examples = (0..4).map(|i| edgelora::train::data::Example { tokens: (0..8).map(|j| ((i * 5 + j) % 40) as i32).collect(), trained: vec![true; 8] }).collect();
    let mut t = Trainer::new(&base, cfg, examples, Vec::new(), "d".into()).unwrap();
    t.train_step().unwrap();
    let fs = SmallFs::mount("16k").unwrap();
    let ck = fs.path().join("ckpt");
    let e = t.save_checkpoint(&ck).unwrap_err().to_string();
    assert!(e.contains(fs.path().to_str().unwrap()) && e.contains("No space left"), "{e}");
    assert!(fs.entries().iter().all(|e| e == "ckpt") && std::fs::read_dir(&ck).unwrap().next().is_none(), "checkpoint left files: {:?}", fs.entries());
    let adapter = t.to_adapter(&base, serde_json::json!({})).unwrap();
    let out = fs.path().join("a.gguf");
    let e = write_gguf_lora(&adapter, &out, GgufLoraDtype::F32).unwrap_err().to_string();
    assert!(e.contains(fs.path().to_str().unwrap()), "{e}");
    assert!(!out.exists() && fs.entries() == ["ckpt"], "export left files: {:?}", fs.entries());
    // The process goes on: the same trainer checkpoints and exports where there is room.
    t.save_checkpoint(&dir.path().join("ck")).unwrap();
    t.train_step().unwrap();
    write_gguf_lora(&adapter, &dir.path().join("a.gguf"), GgufLoraDtype::F32).unwrap();
}

/// sha256 over every tensor's name, type, shape and bytes (the manifest's timestamps
/// differ from run to run; the tensors must not).
fn tensor_digest(path: &Path) -> String {
    let f = GgufFile::open(path).unwrap_or_else(|e| panic!("{} is under its final name but does not parse: {e}", path.display()));
    let mut h = Sha256::new();
    for t in f.tensors() {
        h.update(t.name.as_bytes());
        h.update(format!("{:?}{:?}", t.ggml_type, t.shape).as_bytes());
        h.update(f.tensor_data(t));
    }
    h.finalize().iter().map(|b| format!("{b:02x}")).collect()
}

/// Runs `args` once to the end (the reference), then `points` more times killed with
/// SIGKILL after a random share of the reference's time; after each kill every final
/// name in `finals` is absent, or present, readable and equal to the reference's.
fn kill_at_random_points(what: &str, args: &dyn Fn(&Path) -> Vec<String>, finals: &dyn Fn(&Path) -> Vec<PathBuf>, points: usize, seed: u64) {
    let dir = tmpdir();
    let run_dir = |k: usize| {
        let d = dir.path().join(format!("run{k}"));
        std::fs::create_dir_all(&d).unwrap();
        d
    };
    let reference = run_dir(0);
    let t0 = Instant::now();
    let o = Command::new(env!("CARGO_BIN_EXE_edgelora")).args(args(&reference)).output().unwrap();
    assert!(o.status.success(), "{what}: {}", String::from_utf8_lossy(&o.stderr));
    let took = t0.elapsed();
    let want: Vec<String> = finals(&reference).iter().map(|p| tensor_digest(p)).collect();
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    let (mut absent, mut complete) = (0, 0);
    for k in 1..=points {
        let d = run_dir(k);
        // Spread over the run (and a little past its end): point k in its k-th slice.
        let share = 1.1 * (k as f64 - 1.0 + rng.random::<f64>()) / points as f64;
        let mut child = Command::new(env!("CARGO_BIN_EXE_edgelora")).args(args(&d)).stdout(Stdio::null()).stderr(Stdio::null()).spawn().unwrap();
        std::thread::sleep(took.mul_f64(share));
        let _ = child.kill();
        let _ = child.wait();
        for (p, w) in finals(&d).iter().zip(&want) {
            if p.exists() {
                assert_eq!(&tensor_digest(p), w, "{what}: killed at {:.0}% of the run, {} differs from the uninterrupted run's", share * 100.0, p.display());
                complete += 1;
            } else {
                absent += 1;
            }
        }
    }
    eprintln!("{what}: {points} kills over {:.3} s: {absent} final names absent, {complete} complete", took.as_secs_f64());
}

#[test]
fn kill_9_leaves_each_final_name_absent_or_complete() {
    let model = model_path().to_string_lossy().into_owned();
    let seed = fixture("seed_r16_qv").to_string_lossy().into_owned();
    let s = |v: &[&str]| v.iter().map(|x| x.to_string()).collect::<Vec<String>>();
    let p = |d: &Path, n: &str| d.join(n).to_string_lossy().into_owned();
    kill_at_random_points(
        "convert",
        &|d| s(&["adapter", "convert", &seed, &p(d, "a.gguf"), "-m", &model]),
        &|d| vec![d.join("a.gguf")],
        5,
        1,
    );
    kill_at_random_points(
        "merge",
        &|d| s(&["merge", "-m", &model, "-a", &seed, "--quantizer", "refit", "--out", &p(d, "m.gguf")]),
        &|d| vec![d.join("m.gguf")],
        5,
        2,
    );
    // train: the adapter, and the checkpoint written every step (its last state must load).
    let data_dir = tmpdir();
    let data = data_dir.path().join("d.jsonl");
    let lines: Vec<String> = (0..12).map(|i| serde_json::json!({"instruction": format!("Is {i} even?"), "output": if i % 2 == 0 { "even" } else { "odd" }}).to_string()).collect();
    std::fs::write(&data, lines.join("\n")).unwrap();
    let data = data.to_string_lossy().into_owned();
    kill_at_random_points(
        "train",
        &|d| s(&["train", "-m", &model, "--data", &data, "--out", &p(d, "t.gguf"), "--steps", "4", "--batch", "2", "--rank", "4", "--max-len", "64", "-t", "1", "--checkpoint-dir", &p(d, "ck"), "--save-every", "1"]),
        &|d| {
            // Whatever checkpoint a kill left must load.
            let ck = d.join("ck");
            if edgelora::train::checkpoint::file_in(&ck).exists() {
                edgelora::train::checkpoint::load(&ck).unwrap_or_else(|e| panic!("a killed run's checkpoint does not load: {e}"));
            }
            vec![d.join("t.gguf")]
        },
        5,
        3,
    );
}

#[test]
#[cfg(feature = "llama")]
fn an_adapter_unloaded_mid_request_serves_that_request_to_its_end() {
    let seed = read_peft(&fixture("seed_r16_qv"), crate::common::model_gguf()).unwrap();
    let dir = tmpdir();
    let path = dir.path().join("seed.gguf");
    write_gguf_lora(&seed, &path, GgufLoraDtype::F16).unwrap();
    let mut req = GenerateRequest::new(Prompt::Text("The history of the city".into()));
    req.adapters = vec![("a".into(), 2.0)];
    req.max_tokens = 40;
    req.ignore_eog = true;

    // llama.cpp backend: the unload waits for the request (requests and adapter changes
    // are serialized), which finishes with the adapter it started with.
    let rt = runtime();
    rt.load_adapter("a", &path).unwrap();
    let want = rt.generate(&req, &mut |_| true).unwrap().text;
    rt.clear_cache();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::scope(|s| {
        let h = s.spawn(|| {
            let mut sent = false;
            rt.generate(&req, &mut |_| {
                if !sent {
                    tx.send(()).unwrap();
                    sent = true;
                }
                true
            })
        });
        rx.recv_timeout(Duration::from_secs(120)).expect("the request started");
        rt.unload_adapter("a").unwrap();
        assert_eq!(h.join().unwrap().unwrap().text, want);
    });
    assert!(rt.generate(&req, &mut |_| true).unwrap_err().to_string().contains("\"a\" is not loaded"));
    drop(rt);

    // Native engine: the unload returns at once; the request keeps the adapter it
    // resolved when it started and finishes with it. A new adapter under the same name
    // is a different adapter (no cached keys/values of the old one are reused).
    let nrt = NativeRuntime::load(model_path(), Device::Cpu, 1).unwrap();
    nrt.load_adapter("a", &path).unwrap();
    let want = nrt.generate(&req, &mut |_| true).unwrap().text;
    nrt.clear_cache();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::scope(|s| {
        let h = s.spawn(|| {
            let mut n = 0;
            nrt.generate(&req, &mut |_| {
                n += 1;
                if n == 2 {
                    tx.send(()).unwrap();
                }
                true
            })
        });
        rx.recv_timeout(Duration::from_secs(120)).expect("the request started");
        nrt.unload_adapter("a").unwrap();
        let scaled = dir.path().join("scaled.gguf");
        let mut other = seed.clone();
        other.tensors.values_mut().for_each(|t| t.scale *= -1.0);
        write_gguf_lora(&other, &scaled, GgufLoraDtype::F16).unwrap();
        nrt.load_adapter("a", &scaled).unwrap();
        assert_eq!(h.join().unwrap().unwrap().text, want);
    });
    let reloaded = nrt.generate(&req, &mut |_| true).unwrap().text;
    assert_ne!(reloaded, want, "the reloaded adapter (negated) gave the old adapter's text: a stale cache?");
}
