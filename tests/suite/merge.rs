//! Merging adapters into the weights: exact on F32, close on Q4_1, atomic, recorded.

use std::path::Path;
use std::process::Command;

use edgelora::adapter::read_peft;
use edgelora::engine::{argmax, Runtime, RuntimeOptions};
use edgelora::gguf::{GgmlType, GgufFile, MetaValue};
use edgelora::merge::{merge, MergeInput, MergeOptions, Quantizer};

use crate::common::{kl, f32_model_path, f32_runtime, max_abs_diff, model_gguf, model_path, runtime, tmpdir};

fn fixture(name: &str) -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures").join(name)
}

fn prompts() -> Vec<Vec<i32>> {
    let v: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(fixture("reference.json")).unwrap()).unwrap();
    v["prompts"].as_array().unwrap().iter().map(|p| p["input_ids"].as_array().unwrap().iter().map(|x| x.as_i64().unwrap() as i32).collect()).collect()
}

/// KL of `merged`'s next-token distributions to the default model with `adapter` on the
/// fly, mean over every position of the fixture prompts (native engine, CPU).
fn every_position_kl(adapter: &edgelora::adapter::LoraAdapter, merged: &Path) -> f64 {
    use edgelora::model::{NativeModel, Session};
    let native = |path: &Path| NativeModel::new(GgufFile::open(path).unwrap(), Box::new(edgelora::compute::cpu::Cpu)).unwrap();
    let (on_the_fly, merged) = (native(&model_path()), native(merged));
    let (mut sum, mut n) = (0.0, 0);
    for ids in prompts() {
        let a = on_the_fly.forward(&mut Session::default(), &ids, &[(adapter, 1.0)], true).unwrap();
        let b = merged.forward(&mut Session::default(), &ids, &[], true).unwrap();
        sum += a.iter().zip(&b).map(|(a, b)| kl(a, b)).sum::<f64>();
        n += ids.len();
    }
    sum / n as f64
}

#[test]
fn merged_f32_model_equals_adapters_on_the_fly() {
    let base = GgufFile::open(f32_model_path()).unwrap();
    let s = read_peft(&fixture("seed_r16_qv"), &base).unwrap();
    let r = read_peft(&fixture("rslora_r8_all"), &base).unwrap();
    let dir = tmpdir();
    let out = dir.path().join("merged.gguf");
    let inputs = [MergeInput { adapter: &s, weight: 0.7, label: "seed".into() }, MergeInput { adapter: &r, weight: 0.3, label: "rs".into() }];
    let stats = merge(&base, &inputs, &out, &MergeOptions::default(), &mut |_, _, _| {}).unwrap();
    assert_eq!(stats.merged, 210);
    let merged = Runtime::load(&out, RuntimeOptions { threads: 1, n_ctx: 512, f32_kv_cache: true, flash_attention: Some(false), ..Default::default() }).unwrap();
    let fly = f32_runtime();
    fly.load_adapter("s", fixture("seed_r16_qv")).unwrap();
    fly.load_adapter("r", fixture("rslora_r8_all")).unwrap();
    for ids in prompts() {
        let a = merged.logits(&ids, &[]).unwrap();
        let b = fly.logits(&ids, &[("s".into(), 0.7), ("r".into(), 0.3)]).unwrap();
        assert!(max_abs_diff(&a, &b) < 1e-3, "merged vs on-the-fly: {}", max_abs_diff(&a, &b));
        assert_eq!(argmax(&a), argmax(&b));
    }
    // What was merged is recorded.
    let f = GgufFile::open(&out).unwrap();
    match f.get("edgelora.merge.fingerprints") {
        Some(MetaValue::Array(_, v)) => assert_eq!(v[0].as_str().unwrap(), s.fingerprint()),
        other => panic!("{other:?}"),
    }
    assert_eq!(f.get("edgelora.merge.weights").unwrap().summary(), "[f32; 2]");
}

#[test]
fn merged_q4_1_stays_close_and_beats_plain_requantization() {
    // Both fixture adapters merged into the Q4_1 model (types kept): refit closer to the
    // adapter on the fly than ggml's quantizer. (Top-1 agreement is printed, not asserted:
    // at Q4_1 the merge loses part of these random adapters' effect and flips the top-1 on
    // some prompts — as llama.cpp's own route does; benches/merge_kl.sh reports both.)
    let base = model_gguf();
    let dir = tmpdir();
    let fly = runtime();
    for name in ["seed_r16_qv", "rslora_r8_all"] {
        let r = read_peft(&fixture(name), base).unwrap();
        fly.load_adapter(name, fixture(name)).unwrap();
        let mut mean = Vec::new();
        for q in [Quantizer::Refit, Quantizer::Ggml] {
            let out = dir.path().join(format!("{name}-{q:?}.gguf"));
            merge(base, &[MergeInput { adapter: &r, weight: 1.0, label: name.into() }], &out, &MergeOptions { quantizer: q, ..Default::default() }, &mut |_, _, _| {}).unwrap();
            // Same types, same tensor bytes: only the metadata grew by the merge record.
            let g = GgufFile::open(&out).unwrap();
            assert_eq!(g.tensor_bytes_total(), base.tensor_bytes_total());
            assert!(g.tensors().iter().zip(base.tensors()).all(|(a, b)| a.ggml_type == b.ggml_type));
            let m = Runtime::load(&out, RuntimeOptions { threads: 1, n_ctx: 512, ..Default::default() }).unwrap();
            let mut kls = Vec::new();
            for ids in prompts() {
                let (a, b) = (fly.logits(&ids, &[(name.into(), 1.0)]).unwrap(), m.logits(&ids, &[]).unwrap());
                eprintln!("{name} {q:?}: top-1 on the fly {} / merged {}, KL {:.4}", argmax(&a), argmax(&b), kl(&a, &b));
                kls.push(kl(&a, &b));
            }
            eprintln!("{name} {q:?}: KL to on-the-fly {kls:.4?}");
            mean.push(kls.iter().sum::<f64>() / kls.len() as f64);
        }
        assert!(mean[0] < 0.1, "{name}: refit KL {}", mean[0]);
        assert!(mean[0] < mean[1], "{name}: refit ({}) is not closer than ggml's requantization ({})", mean[0], mean[1]);
    }
}

#[test]
fn gptq_merge_keeps_the_types_and_tracks_the_adapter_closer_than_refit() {
    // GPTQ with its default, data-free calibration (sequences sampled from the adapted
    // model; none of the fixture prompts): every merged tensor keeps its type and size,
    // with new codes and refit grids (and so do the attn_output/ffn_down tensors the
    // adapter does not target, re-coded to compensate, listed in the stats and metadata), and the merged model is closer to the adapter on the
    // fly than refit's — on seed_r16_qv within the
    // issue's KL target at the last position of the fixture prompts (llama.cpp both sides,
    // as above); on rslora_r8_all (every layer, where the target is not met) over every
    // position of the fixture prompts (native engine: 101 positions, steadier than 3).
    let base = model_gguf();
    let dir = tmpdir();
    let fly = runtime();
    for name in ["seed_r16_qv", "rslora_r8_all"] {
        let r = read_peft(&fixture(name), base).unwrap();
        let input = [MergeInput { adapter: &r, weight: 1.0, label: name.into() }];
        let mut every_position = Vec::new();
        for q in [Quantizer::Gptq, Quantizer::Refit] {
            let out = dir.path().join(format!("{name}-{q:?}.gguf"));
            let t0 = std::time::Instant::now();
            let stats = merge(base, &input, &out, &MergeOptions { quantizer: q, ..Default::default() }, &mut |_, _, _| {}).unwrap();
            eprintln!("{name} {q:?}: merged in {:.1} s", t0.elapsed().as_secs_f64());
            // Nothing besides the outputs (GPTQ's temporary file is anonymous, the writer's renamed).
            for e in std::fs::read_dir(dir.path()).unwrap() {
                let n = e.unwrap().file_name().into_string().unwrap();
                assert!(n.ends_with(".gguf") && !n.starts_with('.'), "{n} left in the output directory");
            }
            assert!(stats.gptq_refit.is_empty(), "{:?}", stats.gptq_refit);
            let g = GgufFile::open(&out).unwrap();
            assert_eq!(g.tensor_bytes_total(), base.tensor_bytes_total());
            if q == Quantizer::Gptq {
                assert_eq!(g.get("edgelora.merge.quantizer").and_then(|v| v.as_str()), Some("gptq"));
                // Every attn_output and ffn_down is re-coded too (their drift target), targeted or not.
                let compensating = |n: &str| !r.tensors.contains_key(n) && (n.ends_with(".attn_output.weight") || n.ends_with(".ffn_down.weight"));
                let (mut recoded, mut compensated) = (0, Vec::new());
                for (t, b) in g.tensors().iter().zip(base.tensors()) {
                    assert_eq!(t.ggml_type, b.ggml_type);
                    let (new, old) = (g.tensor_data(t), base.tensor_data(b));
                    if r.tensors.contains_key(&t.name) && t.ggml_type == GgmlType::Q4_1 {
                        assert!(new.chunks(20).zip(old.chunks(20)).any(|(n, o)| n[4..] != o[4..]), "{}: no code changed", t.name);
                        assert!(new.chunks(20).zip(old.chunks(20)).any(|(n, o)| n[..4] != o[..4]), "{}: no grid refit", t.name);
                        recoded += 1;
                    } else if compensating(&t.name) && t.ggml_type == GgmlType::Q4_1 {
                        // A small drift may move only grids (layer 0's ffn_down here).
                        assert!(new != old, "{}: not re-coded", t.name);
                        recoded += 1;
                        compensated.push(t.name.clone());
                    } else {
                        assert!(new == old, "{}: untouched tensor changed", t.name);
                    }
                }
                assert_eq!(recoded - compensated.len(), r.tensors.len());
                assert_eq!(compensated.len(), if name == "seed_r16_qv" { 60 } else { 0 });
                assert_eq!(stats.gptq_compensated, compensated);
                assert_eq!(stats.merged + stats.copied + compensated.len(), base.tensors().len());
                let recorded = match g.get("edgelora.merge.gptq_compensated") {
                    Some(MetaValue::Array(_, v)) => v.iter().filter_map(|v| v.as_str().map(str::to_string)).collect::<Vec<_>>(),
                    other => panic!("edgelora.merge.gptq_compensated: {other:?}"),
                };
                assert_eq!(recorded, compensated);
                if name == "seed_r16_qv" {
                    let m = Runtime::load(&out, RuntimeOptions { threads: 1, n_ctx: 512, ..Default::default() }).unwrap();
                    fly.load_adapter(name, fixture(name)).unwrap();
                    let mut kls = Vec::new();
                    for ids in prompts() {
                        let (a, b) = (fly.logits(&ids, &[(name.into(), 1.0)]).unwrap(), m.logits(&ids, &[]).unwrap());
                        // Top-1 agreement is reported, not asserted: on the fly, the three
                        // prompts' top two logits are only 0.10–0.37 apart (chat_symptoms:
                        // "A" 29.43 vs "The" 29.34), so a calibration draw decides it.
                        let mut sorted = a.clone();
                        sorted.sort_by(|x, y| y.total_cmp(x));
                        eprintln!("{name} gptq: top-1 margin on the fly {:.3}, same top-1 {}, KL {:.4}", sorted[0] - sorted[1], argmax(&a) == argmax(&b), kl(&a, &b));
                        kls.push(kl(&a, &b));
                    }
                    let mean = kls.iter().sum::<f64>() / kls.len() as f64;
                    eprintln!("{name} gptq: last-position KL to on-the-fly {kls:.4?}, mean {mean:.4}");
                    assert!(mean <= 0.02, "{name}: gptq KL {mean}");
                }
            }
            every_position.push(every_position_kl(&r, &out));
        }
        eprintln!("{name}: KL to on-the-fly over every fixture position: gptq {:.4}, refit {:.4}", every_position[0], every_position[1]);
        assert!(every_position[0] < 0.5 * every_position[1], "{name}: gptq {every_position:?}");
    }
}

#[test]
fn gptq_drift_target_tracks_the_adapter_as_close_as_plain_targets() {
    // GPTQ's layer-by-layer pass on rslora_r8_all (every layer) with a small sampled
    // calibration (64 × 64 tokens, none of the fixture prompts): re-codes exactly the
    // adapter's tensors, in their type and size; with the drift target on attn_output and
    // ffn_down the merged model is about as close to the adapter on the fly over every
    // position of the fixture prompts as with W + ΔW as every projection's target (closer
    // on some hosts' calibration draws, see the assertion).
    use edgelora::gguf::{GgufWriter, TensorSpec};
    use edgelora::merge::{calibration, sequential};
    let base = model_gguf();
    let dir = tmpdir();
    let r = read_peft(&fixture("rslora_r8_all"), base).unwrap();
    let input = [MergeInput { adapter: &r, weight: 1.0, label: "rslora_r8_all".into() }];
    let sequences = calibration::sequences(base, &input, &calibration::Calibration::Sampled { sequences: 64, len: 64, seed: 0 }).unwrap();
    assert_eq!(sequences.len(), 64);
    assert!(sequences.iter().all(|s| s.len() == 64));
    let every = |_: &str| true;
    let all = sequential::Recoder { wanted: &every, damp: 0.01, rounds: 3, min_rows_per_input: 2, drift_ridge: None };
    let mut ignore = |_: &str, _: Vec<u8>| Ok(());
    let err = sequential::recode_layers(base, &input, &[vec![1, 49152]], &all, &mut ignore, &mut |_, _| {}).unwrap_err().to_string();
    assert!(err.contains("49152"), "{err}");
    assert!(sequential::recode_layers(base, &input, &[vec![]], &all, &mut ignore, &mut |_, _| {}).is_err());
    let mut kls = Vec::new();
    for ridge in [Some(sequential::DRIFT_RIDGE), None] {
        let wanted = |name: &str| r.tensors.contains_key(name);
        let recoder = sequential::Recoder { wanted: &wanted, damp: 0.01, rounds: 3, min_rows_per_input: 2, drift_ridge: ridge };
        let mut layers = Vec::new();
        let mut bytes = std::collections::HashMap::new();
        let mut store = |name: &str, b: Vec<u8>| {
            assert!(bytes.insert(name.to_string(), b).is_none(), "{name} stored twice");
            Ok(())
        };
        sequential::recode_layers(base, &input, &sequences, &recoder, &mut store, &mut |l, n| layers.push((l, n))).unwrap();
        assert_eq!(layers, (1..=30).map(|l| (l, 30)).collect::<Vec<_>>());
        assert_eq!(bytes.len(), r.tensors.len());
        let out = dir.path().join(format!("{ridge:?}.gguf"));
        let specs: Vec<TensorSpec> = base.tensors().iter().map(|t| TensorSpec::new(t.name.clone(), &t.shape, t.ggml_type)).collect();
        let mut w = GgufWriter::create(&out, base.metadata(), &specs).unwrap();
        for t in base.tensors() {
            let data = match bytes.get(&t.name) {
                Some(b) => {
                    assert_eq!(b.len(), base.tensor_data(t).len(), "{}", t.name);
                    assert_ne!(b.as_slice(), base.tensor_data(t), "{}: unchanged", t.name);
                    b.as_slice()
                }
                None => base.tensor_data(t),
            };
            w.write_tensor(&t.name, data).unwrap();
        }
        w.finish().unwrap();
        kls.push(every_position_kl(&r, &out));
    }
    eprintln!("rslora_r8_all, 64 × 64 calibration: every-position KL to on-the-fly: drift target {:.4}, plain targets {:.4}", kls[0], kls[1]);
    // The sampled calibration depends on the host's kernels (its tokens are drawn from the
    // adapted model): on the AVX-512 host the drift target was ≥ 5% closer; on an AVX2-only
    // host's draw it was 2% further (0.0536 vs 0.0525). What holds on both: it is not
    // worse beyond that draw-to-draw noise.
    assert!(kls[0] < 1.05 * kls[1], "{kls:?}");
}

#[test]
fn f32_re_encode_without_adapters_is_the_dequantized_model() {
    let dir = tmpdir();
    let out = dir.path().join("f32.gguf");
    let stats = merge(model_gguf(), &[], &out, &MergeOptions { out_type: Some(GgmlType::F32), ..Default::default() }, &mut |_, _, _| {}).unwrap();
    assert_eq!(stats.merged, 0);
    let a = GgufFile::open(&out).unwrap();
    let b = GgufFile::open(f32_model_path()).unwrap();
    assert_eq!(a.require_u64("general.file_type").unwrap(), 0);
    for t in b.tensors() {
        let (ta, da) = a.tensor_bytes(&t.name).unwrap();
        assert_eq!(ta.ggml_type, GgmlType::F32, "{}", t.name);
        assert!(da == b.tensor_data(t), "{} differs from the dequantized model", t.name);
    }
}

#[test]
fn a_killed_merge_leaves_no_file_under_the_output_name() {
    let dir = tmpdir();
    let out = dir.path().join("merged.gguf");
    let mut child = Command::new(env!("CARGO_BIN_EXE_edgelora"))
        .args(["merge", "-m", model_path().to_str().unwrap(), "-a", fixture("rslora_r8_all").to_str().unwrap(), "--out", out.to_str().unwrap()])
        .spawn()
        .unwrap();
    // Kill it once its temporary file exists (the merge is under way), or after 5 s.
    for _ in 0..500 {
        if std::fs::read_dir(dir.path()).unwrap().count() > 0 {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    child.kill().unwrap();
    let status = child.wait().unwrap();
    assert!(!status.success(), "the merge finished before it was killed; make it slower or kill sooner");
    assert!(!out.exists(), "a killed merge left {}", out.display());
}

#[test]
fn merge_rejects_bad_requests() {
    let dir = tmpdir();
    let out = dir.path().join("x.gguf");
    let mut q = read_peft(&fixture("seed_r16_qv"), model_gguf()).unwrap();
    q.architecture = "qwen2".into();
    let e = merge(model_gguf(), &[MergeInput { adapter: &q, weight: 1.0, label: "q".into() }], &out, &MergeOptions::default(), &mut |_, _, _| {}).unwrap_err();
    assert!(e.to_string().contains("qwen2"), "{e}");
    let s = read_peft(&fixture("seed_r16_qv"), model_gguf()).unwrap();
    let e = merge(model_gguf(), &[MergeInput { adapter: &s, weight: f32::NAN, label: "s".into() }], &out, &MergeOptions::default(), &mut |_, _, _| {}).unwrap_err();
    assert!(e.to_string().contains("not a finite"), "{e}");
    assert!(!out.exists());
    // GPTQ keeps its re-coded tensors in a temporary file beside the output until the
    // writer reaches them: a missing directory is an error naming it, before calibration.
    let missing = dir.path().join("missing");
    let opts = MergeOptions { quantizer: Quantizer::Gptq, ..Default::default() };
    let e = merge(model_gguf(), &[MergeInput { adapter: &s, weight: 1.0, label: "s".into() }], &missing.join("x.gguf"), &opts, &mut |_, _, _| {}).unwrap_err();
    assert!(e.to_string().contains(&*missing.to_string_lossy()) && e.to_string().contains("temporary file"), "{e}");
}

#[test]
fn gpu_merge_equals_cpu_merge() {
    // F32 output so the comparison sees the merged floats, not a requantization.
    let base = model_gguf();
    let s = read_peft(&fixture("seed_r16_qv"), base).unwrap();
    let dir = tmpdir();
    let mut values = Vec::new();
    for device in [edgelora::compute::Device::Cpu, edgelora::compute::Device::Gpu] {
        let out = dir.path().join(format!("{device:?}.gguf"));
        let opts = MergeOptions { out_type: Some(GgmlType::F32), device, ..Default::default() };
        merge(base, &[MergeInput { adapter: &s, weight: 0.8, label: "seed".into() }], &out, &opts, &mut |_, _, _| {})
            .unwrap_or_else(|e| panic!("{device:?}: {e} (the GPU path needs a GPU or lavapipe: apt-get install mesa-vulkan-drivers)"));
        let f = GgufFile::open(&out).unwrap();
        let (_, q) = f.tensor_bytes("blk.3.attn_q.weight").unwrap();
        let (_, v) = f.tensor_bytes("blk.17.attn_v.weight").unwrap();
        values.push([q.to_vec(), v.to_vec()]);
    }
    for (k, (cpu, gpu)) in values[0].iter().zip(&values[1]).enumerate() {
        let a: &[f32] = bytemuck::cast_slice(cpu);
        let b: &[f32] = bytemuck::cast_slice(gpu);
        let scale = a.iter().fold(0f32, |m, x| m.max(x.abs()));
        let worst = a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0f32, f32::max);
        // The GPU reads A/B as f16 (these fixtures are f32): relative error ~1e-3 of the delta.
        assert!(worst < 1e-3 * scale, "tensor {k}: max |gpu − cpu| {worst} (scale {scale})");
    }
}
