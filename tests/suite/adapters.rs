//! PEFT and GGUF-LoRA I/O, composition and validation, checked against the fixtures made
//! with transformers + PEFT (tests/fixtures, copied from the project's shared fixtures).

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use edgelora::adapter::{
    self, compose, read_gguf_lora, read_peft, write_gguf_lora, write_peft, ComposeMethod, GgufLoraDtype, LoraAdapter,
};
use edgelora::engine::{argmax, GenerateRequest, Prompt, Runtime};
use edgelora::gguf::GgufFile;
use edgelora::{AdapterError, Error};
use safetensors::SafeTensors;
use serde_json::Value;

use crate::common::{kl, f32_runtime, max_abs_diff, model_gguf, runtime, tmpdir};

fn fixtures() -> PathBuf {
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
    assert!(p.join("reference.json").exists(), "fixtures missing at {}", p.display());
    p
}

struct Reference {
    json: Value,
    logits: HashMap<String, Vec<f32>>,
}

fn reference() -> Reference {
    let json: Value = serde_json::from_str(&std::fs::read_to_string(fixtures().join("reference.json")).unwrap()).unwrap();
    let bytes = std::fs::read(fixtures().join("reference.safetensors")).unwrap();
    let st = SafeTensors::deserialize(&bytes).unwrap();
    let logits = st
        .tensors()
        .into_iter()
        .filter(|(k, _)| k.starts_with("logits."))
        .map(|(k, v)| (k, v.data().chunks_exact(4).map(|c| f32::from_le_bytes(c.try_into().unwrap())).collect()))
        .collect();
    Reference { json, logits }
}

impl Reference {
    fn prompts(&self) -> Vec<(String, Vec<i32>)> {
        self.json["prompts"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| (p["name"].as_str().unwrap().to_string(), p["input_ids"].as_array().unwrap().iter().map(|x| x.as_i64().unwrap() as i32).collect()))
            .collect()
    }
    fn greedy(&self, config: &str, prompt: &str) -> Vec<i32> {
        self.json["configs"][config]["results"][prompt]["greedy_ids"].as_array().unwrap().iter().map(|x| x.as_i64().unwrap() as i32).collect()
    }
}

const CONFIGS: [(&str, &[(&str, f32)]); 4] = [
    ("base", &[]),
    ("seed_r16_qv", &[("seed_r16_qv", 1.0)]),
    ("rslora_r8_all", &[("rslora_r8_all", 1.0)]),
    ("mix_half_half", &[("seed_r16_qv", 0.5), ("rslora_r8_all", 0.5)]),
];

fn load_fixture_adapters(rt: &Runtime) {
    for name in ["seed_r16_qv", "rslora_r8_all"] {
        rt.load_adapter(name, fixtures().join(name)).unwrap();
    }
}

fn set(items: &[(&str, f32)]) -> Vec<(String, f32)> {
    items.iter().map(|(n, s)| (n.to_string(), *s)).collect()
}

/// Per (config, prompt): (KL to the reference, same top-1, greedy tokens equal).
fn compare_with_reference(rt: &Runtime, check_greedy: bool) -> Vec<(String, f64, bool, bool)> {
    let r = reference();
    let mut rows = Vec::new();
    for (config, adapters) in CONFIGS {
        for (prompt, ids) in r.prompts() {
            let want = &r.logits[&format!("logits.{config}.{prompt}")];
            let got = rt.logits(&ids, &set(adapters)).unwrap();
            let greedy_ok = if check_greedy {
                let mut req = GenerateRequest::new(Prompt::Tokens(ids.clone()));
                req.adapters = set(adapters);
                req.max_tokens = 24;
                req.ignore_eog = true;
                rt.generate(&req, &mut |_| true).unwrap().tokens == r.greedy(config, &prompt)
            } else {
                true
            };
            rows.push((format!("{config}/{prompt}"), kl(want, &got), argmax(want) == argmax(&got), greedy_ok));
        }
    }
    rows
}

#[test]
fn peft_fixtures_match_transformers_on_the_f32_model() {
    let rt = f32_runtime();
    load_fixture_adapters(&rt); // PEFT folders, converted in memory
    for (what, kl, top1, greedy) in compare_with_reference(&rt, true) {
        eprintln!("F32 {what}: KL {kl:.2e}, top-1 {top1}, greedy {greedy}");
        assert!(top1, "{what}: top-1 differs from transformers");
        assert!(kl <= 1e-4, "{what}: KL {kl:.3e} > 1e-4");
        assert!(greedy, "{what}: greedy continuation differs from transformers");
    }
}

#[test]
fn fixture_figures_on_the_q4_1_model() {
    // llama.cpp rounds activations to Q8_1 here: report, and only bound loosely.
    let rt = runtime();
    load_fixture_adapters(&rt);
    for (what, kl, top1, _) in compare_with_reference(&rt, false) {
        eprintln!("Q4_1 {what}: KL {kl:.2e}, top-1 {top1}");
        assert!(kl < 0.05, "{what}: KL {kl} on Q4_1 is far above llama.cpp's activation-rounding noise");
    }
}

#[test]
fn converted_gguf_gives_the_same_logits_as_the_peft_folder() {
    let dir = tmpdir();
    let base = model_gguf();
    let rt = f32_runtime();
    let tokens = reference().prompts()[0].1.clone();
    for name in ["seed_r16_qv", "rslora_r8_all"] {
        let a = read_peft(&fixtures().join(name), base).unwrap();
        let out = dir.path().join(format!("{name}.gguf"));
        write_gguf_lora(&a, &out, GgufLoraDtype::F32).unwrap();
        rt.load_adapter(&format!("{name}-peft"), fixtures().join(name)).unwrap();
        rt.load_adapter(&format!("{name}-gguf"), &out).unwrap();
        let x = rt.logits(&tokens, &set(&[(&format!("{name}-peft"), 1.0)])).unwrap();
        let y = rt.logits(&tokens, &set(&[(&format!("{name}-gguf"), 1.0)])).unwrap();
        assert_eq!(x, y, "{name}: file and in-memory conversion differ");
    }
}

fn safetensors_map(path: &Path) -> HashMap<String, (String, Vec<usize>, Vec<u8>)> {
    let bytes = std::fs::read(path).unwrap();
    let st = SafeTensors::deserialize(&bytes).unwrap();
    st.tensors().into_iter().map(|(k, v)| (k, (format!("{:?}", v.dtype()), v.shape().to_vec(), v.data().to_vec()))).collect()
}

#[test]
fn peft_to_gguf_to_peft_round_trip() {
    let dir = tmpdir();
    let base = model_gguf();
    for name in ["seed_r16_qv", "rslora_r8_all"] {
        let src = fixtures().join(name);
        let a = read_peft(&src, base).unwrap();
        let gguf = dir.path().join(format!("{name}.gguf"));
        write_gguf_lora(&a, &gguf, GgufLoraDtype::F32).unwrap();
        let back = adapter::load(&gguf, base).unwrap();
        let out = dir.path().join(format!("{name}-peft"));
        write_peft(&back, &out, base, None).unwrap();

        // The config comes back as it was: r, alpha, rsLoRA, rank_pattern, targets.
        let cfg_in: Value = serde_json::from_str(&std::fs::read_to_string(src.join("adapter_config.json")).unwrap()).unwrap();
        let cfg_out: Value = serde_json::from_str(&std::fs::read_to_string(out.join("adapter_config.json")).unwrap()).unwrap();
        assert_eq!(cfg_in, cfg_out, "{name}: adapter_config.json changed");

        let t_in = safetensors_map(&src.join("adapter_model.safetensors"));
        let t_out = safetensors_map(&out.join("adapter_model.safetensors"));
        assert_eq!(t_in.len(), t_out.len());
        for (k, (dt, shape, data)) in &t_in {
            let (dt2, shape2, data2) = &t_out[k];
            assert_eq!((dt, shape), (dt2, shape2), "{k}");
            assert!(data == data2, "{name}: {k} changed");
        }
        // rsLoRA with rank_pattern: down_proj's scale differs, so its B was folded for
        // llama.cpp's single alpha, and still came back bit for bit.
        let folds = GgufFile::open(&gguf).unwrap().get("edgelora.lora.fold.tensors").map(|v| v.summary());
        eprintln!("{name}: {} tensors bit-exact; folded: {folds:?}", t_in.len());
        if name == "rslora_r8_all" {
            assert_eq!(folds.as_deref(), Some("[string; 30]"));
        }
    }
}

#[test]
fn f16_gguf_round_trip_is_exact() {
    let dir = tmpdir();
    let base = model_gguf();
    let a = read_peft(&fixtures().join("seed_r16_qv"), base).unwrap();
    let p1 = dir.path().join("a.gguf");
    write_gguf_lora(&a, &p1, GgufLoraDtype::F16).unwrap();
    let b = read_gguf_lora(&GgufFile::open(&p1).unwrap()).unwrap();
    let p2 = dir.path().join("b.gguf");
    write_gguf_lora(&b, &p2, GgufLoraDtype::F16).unwrap();
    let c = read_gguf_lora(&GgufFile::open(&p2).unwrap()).unwrap();
    assert_eq!(b.tensors, c.tensors);
    assert_eq!(b.manifest, c.manifest, "the manifest survives");
    assert_eq!(c.manifest.name.as_deref(), Some("seed_r16_qv"));
}

#[test]
fn composition_matches_loading_the_adapters_together() {
    let base = model_gguf();
    let s = read_peft(&fixtures().join("seed_r16_qv"), base).unwrap();
    let r = read_peft(&fixtures().join("rslora_r8_all"), base).unwrap();
    let (cat, rep) = compose(&[(&s, 0.7), (&r, 0.3)], ComposeMethod::Cat).unwrap();
    assert_eq!(rep.min_energy(), 1.0);
    let full = cat.ranks().into_keys().max().unwrap();
    let (svd, rep) = compose(&[(&s, 0.7), (&r, 0.3)], ComposeMethod::Svd(full)).unwrap();
    assert!(rep.min_energy() > 1.0 - 1e-9, "full-rank svd keeps everything ({})", rep.min_energy());
    let (low, rep) = compose(&[(&s, 0.7), (&r, 0.3)], ComposeMethod::Svd(4)).unwrap();
    assert!(rep.min_energy() < 0.99, "rank 4 of a rank-24 sum keeps {}", rep.min_energy());
    assert!(low.tensors.values().all(|t| t.rank == 4));

    let rt = f32_runtime();
    load_fixture_adapters(&rt);
    rt.load_adapter_in_memory("cat", &cat).unwrap();
    rt.load_adapter_in_memory("svd", &svd).unwrap();
    for (_, ids) in reference().prompts() {
        let both = rt.logits(&ids, &set(&[("seed_r16_qv", 0.7), ("rslora_r8_all", 0.3)])).unwrap();
        let c = rt.logits(&ids, &set(&[("cat", 1.0)])).unwrap();
        let v = rt.logits(&ids, &set(&[("svd", 1.0)])).unwrap();
        assert!(max_abs_diff(&both, &c) < 1e-3, "cat: {}", max_abs_diff(&both, &c));
        assert!(max_abs_diff(&both, &v) < 1e-3, "svd at full rank: {}", max_abs_diff(&both, &v));
    }
}

#[test]
fn composition_algebra() {
    let base = model_gguf();
    let mods = ["attn_v"];
    let a = edgelora::adapter::random_lora(base, &mods, 4, 8.0, 0.05, 1);
    let b = edgelora::adapter::random_lora(base, &mods, 4, 2.0, 0.05, 2);
    let name = "blk.0.attn_v.weight";
    let (ta, tb) = (&a.tensors[name], &b.tensors[name]);
    let want: Vec<f64> = ta.delta_f64().iter().zip(tb.delta_f64()).map(|(x, y)| 0.7 * x + 0.3 * y).collect();
    let (cat, _) = compose(&[(&a, 0.7), (&b, 0.3)], ComposeMethod::Cat).unwrap();
    let got = cat.tensors[name].delta_f64();
    let err = want.iter().zip(&got).map(|(x, y)| (x - y).abs()).fold(0.0, f64::max);
    assert!(err < 1e-6, "cat delta error {err}");
    let (svd, _) = compose(&[(&a, 0.7), (&b, 0.3)], ComposeMethod::Svd(8)).unwrap();
    let err = want.iter().zip(svd.tensors[name].delta_f64()).map(|(x, y)| (x - y).abs()).fold(0.0, f64::max);
    assert!(err < 1e-5, "svd delta error {err}");
    // linear: PEFT's formula, A = Σ√w·s·A, B = Σ√w·B.
    let (lin, _) = compose(&[(&a, 0.7), (&b, 0.3)], ComposeMethod::Linear).unwrap();
    let t = &lin.tensors[name];
    let want_a0 = 0.7f32.sqrt() * ta.scale * ta.a[0] + 0.3f32.sqrt() * tb.scale * tb.a[0];
    assert!((t.a[0] - want_a0).abs() < 1e-6 && t.scale == 1.0 && t.rank == 4);
    // linear refuses unequal ranks.
    let c = edgelora::adapter::random_lora(base, &mods, 2, 2.0, 0.05, 3);
    let e = compose(&[(&a, 0.5), (&c, 0.5)], ComposeMethod::Linear).unwrap_err().to_string();
    assert!(e.contains("equal ranks"), "{e}");
}

/// A copy of the seed_r16_qv fixture with its config and tensors edited.
fn broken_peft(dir: &Path, name: &str, edit_cfg: impl Fn(&mut Value), edit_tensors: impl Fn(&mut Vec<(String, safetensors::Dtype, Vec<usize>, Vec<u8>)>)) -> PathBuf {
    let src = fixtures().join("seed_r16_qv");
    let out = dir.join(name);
    std::fs::create_dir_all(&out).unwrap();
    let mut cfg: Value = serde_json::from_str(&std::fs::read_to_string(src.join("adapter_config.json")).unwrap()).unwrap();
    edit_cfg(&mut cfg);
    std::fs::write(out.join("adapter_config.json"), serde_json::to_string(&cfg).unwrap()).unwrap();
    let bytes = std::fs::read(src.join("adapter_model.safetensors")).unwrap();
    let st = SafeTensors::deserialize(&bytes).unwrap();
    let mut t: Vec<_> = st.tensors().into_iter().map(|(k, v)| (k, v.dtype(), v.shape().to_vec(), v.data().to_vec())).collect();
    edit_tensors(&mut t);
    let views: Vec<_> = t.iter().map(|(k, d, s, b)| (k.clone(), safetensors::tensor::TensorView::new(*d, s.clone(), b).unwrap())).collect();
    std::fs::write(out.join("adapter_model.safetensors"), safetensors::serialize(views, None).unwrap()).unwrap();
    out
}

fn expect_err(path: &Path, needle: &str) {
    let e = match adapter::load(path, model_gguf()) {
        Ok(_) => panic!("{} loaded", path.display()),
        Err(e) => e,
    };
    assert!(matches!(e, Error::Adapter(_) | Error::Gguf(_)), "{e}");
    assert!(e.to_string().contains(needle), "{}: expected {needle:?} in: {e}", path.display());
}

#[test]
fn broken_adapters_each_give_their_error() {
    let dir = tmpdir();
    let d = dir.path();
    let q0a = "base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight";
    let q0b = "base_model.model.model.layers.0.self_attn.q_proj.lora_B.weight";
    let keep = |_: &mut Value| {};
    let same = |_: &mut Vec<(String, safetensors::Dtype, Vec<usize>, Vec<u8>)>| {};

    expect_err(&broken_peft(d, "half", keep, |t| t.retain(|x| x.0 != q0b)), q0b);
    expect_err(
        &broken_peft(d, "shape", keep, |t| {
            let x = t.iter_mut().find(|x| x.0 == q0a).unwrap();
            x.2 = vec![16, 512];
            x.3.truncate(16 * 512 * 4);
        }),
        "blk.0.attn_q.weight",
    );
    expect_err(&broken_peft(d, "dora", |c| c["use_dora"] = Value::Bool(true), same), "use_dora");
    expect_err(&broken_peft(d, "save", |c| c["modules_to_save"] = serde_json::json!(["lm_head"]), same), "modules_to_save");
    expect_err(&broken_peft(d, "bias", |c| c["bias"] = Value::String("all".into()), same), "bias");
    expect_err(&broken_peft(d, "rank", |c| c["r"] = serde_json::json!(8), same), "rank 16, but the config");
    expect_err(
        &broken_peft(d, "nan", keep, |t| {
            let x = t.iter_mut().find(|x| x.0 == q0b).unwrap();
            x.3[..4].copy_from_slice(&f32::NAN.to_le_bytes());
        }),
        "finite",
    );
    expect_err(
        &broken_peft(d, "embed", keep, |t| {
            t.push(("base_model.model.model.embed_tokens.lora_embedding_A".into(), safetensors::Dtype::F32, vec![16, 4], vec![0; 256]));
        }),
        "embedding LoRA",
    );
    expect_err(
        &broken_peft(d, "foreign", keep, |t| {
            for x in t.iter_mut() {
                x.0 = x.0.replace("model.layers", "transformer.h");
            }
        }),
        "not inside a decoder layer",
    );
    // Malformed JSON and a truncated safetensors file.
    let mj = broken_peft(d, "json", keep, same);
    std::fs::write(mj.join("adapter_config.json"), "{\"r\": 16, ").unwrap();
    expect_err(&mj, "malformed JSON");
    let tr = broken_peft(d, "trunc", keep, same);
    let bytes = std::fs::read(tr.join("adapter_model.safetensors")).unwrap();
    std::fs::write(tr.join("adapter_model.safetensors"), &bytes[..bytes.len() / 2]).unwrap();
    expect_err(&tr, "not a valid safetensors file");
    // A GGUF-LoRA for another architecture.
    let mut q: LoraAdapter = read_peft(&fixtures().join("seed_r16_qv"), model_gguf()).unwrap();
    q.architecture = "qwen2".into();
    let p = d.join("qwen.gguf");
    write_gguf_lora(&q, &p, GgufLoraDtype::F16).unwrap();
    let e = adapter::load(&p, model_gguf()).unwrap_err();
    assert!(matches!(e, Error::Adapter(AdapterError::WrongArchitecture { .. })), "{e}");
    // A folder that is not a PEFT adapter.
    expect_err(d, "not a PEFT adapter");
}

#[test]
fn the_llama_qk_permutation_matters() {
    // Skipping the permutation on q/k must change the result: read the fixture, undo the
    // permutation by hand, and compare logits on the F32 model.
    let base = model_gguf();
    let a = read_peft(&fixtures().join("seed_r16_qv"), base).unwrap();
    let mut unpermuted = a.clone();
    for (name, t) in unpermuted.tensors.iter_mut() {
        if name.contains("attn_q") {
            t.b = edgelora::adapter::permute_qk_rows(&t.b, t.n_out, t.rank, 9, true).unwrap();
        }
    }
    let rt = f32_runtime();
    rt.load_adapter_in_memory("right", &a).unwrap();
    rt.load_adapter_in_memory("wrong", &unpermuted).unwrap();
    let r = reference();
    let (prompt, ids) = &r.prompts()[1];
    let want = &r.logits[&format!("logits.seed_r16_qv.{prompt}")];
    let right = rt.logits(ids, &set(&[("right", 1.0)])).unwrap();
    let wrong = rt.logits(ids, &set(&[("wrong", 1.0)])).unwrap();
    assert!(kl(want, &right) < 1e-4);
    assert!(kl(want, &wrong) > 10.0 * kl(want, &right), "unpermuted KL {} vs permuted {}", kl(want, &wrong), kl(want, &right));
}

#[test]
fn alpha_rank_and_target_modules_are_held_to_the_base() {
    use edgelora::adapter::{read_peft_with, ReadOptions};
    use edgelora::gguf::{GgufWriter, MetaValue, TensorSpec};
    let dir = tmpdir();
    let d = dir.path();
    let same = |_: &mut Vec<(String, safetensors::Dtype, Vec<usize>, Vec<u8>)>| {};
    // PEFT: lora_alpha and alpha_pattern must be finite and > 0.
    expect_err(&broken_peft(d, "neg_alpha", |c| c["lora_alpha"] = serde_json::json!(-32), same), "lora_alpha");
    expect_err(&broken_peft(d, "zero_alpha", |c| c["lora_alpha"] = serde_json::json!(0), same), "lora_alpha");
    expect_err(&broken_peft(d, "neg_pattern", |c| c["alpha_pattern"] = serde_json::json!({"q_proj": -1.0}), same), "alpha_pattern");
    expect_err(&broken_peft(d, "zero_r", |c| c["r"] = serde_json::json!(0), same), "r: expected an integer ≥ 1");
    // target_modules naming a module llama does not have (beside ones it has): an error
    // naming it and listing the modules; lenient, a warning and the same adapter.
    let wq = broken_peft(d, "wq", |c| c["target_modules"] = serde_json::json!(["q_proj", "v_proj", "wq"]), same);
    expect_err(&wq, "\"wq\" is not a linear module");
    let e = adapter::load(&wq, model_gguf()).unwrap_err().to_string();
    assert!(e.contains("q_proj, k_proj, v_proj, o_proj, gate_proj, up_proj, down_proj, lm_head") && e.contains("adapter_config.json"), "{e}");
    let (lenient, warnings) = read_peft_with(&wq, model_gguf(), ReadOptions { lenient: true }).unwrap();
    assert_eq!(warnings.len(), 1, "{warnings:?}");
    assert!(warnings[0].starts_with("warning: ") && warnings[0].contains("\"wq\""), "{warnings:?}");
    assert_eq!(lenient.tensors, read_peft(&fixtures().join("seed_r16_qv"), model_gguf()).unwrap().tensors);
    // A module of another architecture (phi3's fused qkv_proj), a layer past the last, a
    // regex that matches nothing, layers_to_transform past the last layer.
    expect_err(&broken_peft(d, "qkv", |c| c["target_modules"] = serde_json::json!(["q_proj", "v_proj", "qkv_proj"]), same), "\"qkv_proj\"");
    expect_err(&broken_peft(d, "l30", |c| c["target_modules"] = serde_json::json!(["q_proj", "v_proj", "model.layers.30.mlp.up_proj"]), same), "model.layers.30.mlp.up_proj");
    expect_err(&broken_peft(d, "regex", |c| c["target_modules"] = serde_json::json!(".*\\.attention\\.wq"), same), "matches no module");
    expect_err(&broken_peft(d, "layers", |c| c["layers_to_transform"] = serde_json::json!([0, 31]), same), "layer 31 does not exist");
    // Full names and dotted suffixes that do exist are fine; so is a regex that matches.
    let full = broken_peft(d, "full", |c| c["target_modules"] = serde_json::json!(["self_attn.q_proj", "model.layers.3.self_attn.v_proj", "v_proj"]), same);
    adapter::load(&full, model_gguf()).unwrap();
    let re = broken_peft(d, "re", |c| c["target_modules"] = serde_json::json!(".*\\.(q_proj|v_proj)"), same);
    adapter::load(&re, model_gguf()).unwrap();

    // GGUF-LoRA: adapter.lora.alpha must be one finite f32 > 0 (llama.cpp aborts on any
    // other type); the tensors stay the fixture's.
    let src = d.join("src.gguf");
    write_gguf_lora(&read_peft(&fixtures().join("seed_r16_qv"), model_gguf()).unwrap(), &src, GgufLoraDtype::F16).unwrap();
    let f = GgufFile::open(&src).unwrap();
    let with_alpha = |name: &str, alpha: Option<MetaValue>| -> PathBuf {
        let mut meta: Vec<(String, MetaValue)> = f.metadata().iter().filter(|(k, _)| k != "adapter.lora.alpha").cloned().collect();
        if let Some(a) = alpha {
            meta.push(("adapter.lora.alpha".into(), a));
        }
        let specs: Vec<TensorSpec> = f.tensors().iter().map(|t| TensorSpec::new(t.name.clone(), &t.shape, t.ggml_type)).collect();
        let p = d.join(name);
        let mut w = GgufWriter::create(&p, &meta, &specs).unwrap();
        for t in f.tensors() {
            w.write_tensor(&t.name, f.tensor_data(t)).unwrap();
        }
        w.finish().unwrap();
        p
    };
    for (name, alpha) in [
        ("neg.gguf", MetaValue::F32(-32.0)),
        ("zero.gguf", MetaValue::F32(0.0)),
        ("nan.gguf", MetaValue::F32(f32::NAN)),
        ("u32.gguf", MetaValue::U32(32)),
        ("f64.gguf", MetaValue::F64(32.0)),
        ("str.gguf", MetaValue::String("32".into())),
    ] {
        expect_err(&with_alpha(name, Some(alpha)), "adapter.lora.alpha");
    }
    // No alpha at all: llama.cpp's scale 1, accepted.
    let none = adapter::load(&with_alpha("none.gguf", None), model_gguf()).unwrap();
    assert!(none.tensors.values().all(|t| t.scale == 1.0));
    // The CLI: verify refuses the negative alpha (exit 1, naming the field) and the
    // unknown module, and --lenient loads the latter with the warning on stderr.
    let cli = |args: &[&str]| std::process::Command::new(env!("CARGO_BIN_EXE_edgelora")).args(args).output().unwrap();
    let m = crate::common::model_path();
    let m = m.to_str().unwrap();
    let o = cli(&["adapter", "verify", "-m", m, d.join("neg.gguf").to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&o.stderr).contains("adapter.lora.alpha"), "{}", String::from_utf8_lossy(&o.stderr));
    let o = cli(&["adapter", "verify", "-m", m, wq.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&o.stderr).contains("--lenient"), "{}", String::from_utf8_lossy(&o.stderr));
    let o = cli(&["adapter", "verify", "--lenient", "-m", m, wq.to_str().unwrap()]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(String::from_utf8_lossy(&o.stderr).contains("warning: ") && String::from_utf8_lossy(&o.stderr).contains("\"wq\""));
    // And through a runtime: refused by default, loaded with its warning when lenient.
    let rt = runtime();
    assert!(rt.load_adapter("wq", &wq).is_err());
    let info = rt.load_adapter_with("wq", &wq, ReadOptions { lenient: true }).unwrap();
    assert_eq!(info.warnings, warnings);
    // A LoRA on the token embedding: llama.cpp misapplies it (and on this tied model it
    // would run it as the output head's LoRA and abort).
    let mut embd = LoraAdapter::new("llama");
    embd.tensors.insert("token_embd.weight".into(), edgelora::adapter::LoraTensor { rank: 2, n_in: 576, n_out: 49152, a: vec![0.01; 2 * 576], b: vec![0.01; 49152 * 2], scale: 1.0, dtype: edgelora::adapter::FactorDtype::F32 });
    let e = adapter::validate(&embd, model_gguf(), Path::new("embd.gguf")).unwrap_err().to_string();
    assert!(e.contains("token_embd.weight") && e.contains("token embedding"), "{e}");
    // A user scale must be finite; a negative one (subtracting an adapter) is fine.
    assert!(edgelora::engine::parse_adapter_arg("a.gguf:inf").is_err());
    assert!(edgelora::engine::parse_adapter_arg("a.gguf:NaN").is_err());
    assert_eq!(edgelora::engine::parse_adapter_arg("a.gguf:-0.5").unwrap().1, -0.5);
}
