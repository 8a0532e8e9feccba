//! The native engine against transformers (fp32 on the dequantized weights) and against
//! the llama.cpp backend.

use std::path::Path;

use edgelora::adapter::{read_peft, LoraAdapter};
use edgelora::compute::cpu::Cpu;
use edgelora::engine::argmax;
use edgelora::model::{NativeModel, Session};
use safetensors::SafeTensors;

use crate::common::{kl, model_gguf};
#[cfg(feature = "llama")]
use crate::common::runtime;

fn fixtures() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

#[test]
fn native_cpu_matches_transformers_on_the_q4_1_model() {
    let base = model_gguf();
    let model = NativeModel::new(edgelora::gguf::GgufFile::open(crate::common::model_path()).unwrap(), Box::new(Cpu)).unwrap();
    let seed = read_peft(&fixtures().join("seed_r16_qv"), base).unwrap();
    let rs = read_peft(&fixtures().join("rslora_r8_all"), base).unwrap();
    let json: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(fixtures().join("reference.json")).unwrap()).unwrap();
    let bytes = std::fs::read(fixtures().join("reference.safetensors")).unwrap();
    let st = SafeTensors::deserialize(&bytes).unwrap();
    let configs: [(&str, Vec<(&LoraAdapter, f32)>); 4] =
        [("base", vec![]), ("seed_r16_qv", vec![(&seed, 1.0)]), ("rslora_r8_all", vec![(&rs, 1.0)]), ("mix_half_half", vec![(&seed, 0.5), (&rs, 0.5)])];
    for (config, adapters) in &configs {
        for p in json["prompts"].as_array().unwrap() {
            let name = p["name"].as_str().unwrap();
            let ids: Vec<i32> = p["input_ids"].as_array().unwrap().iter().map(|x| x.as_i64().unwrap() as i32).collect();
            let want: Vec<f32> = st.tensor(&format!("logits.{config}.{name}")).unwrap().data().chunks_exact(4).map(|c| f32::from_le_bytes(c.try_into().unwrap())).collect();
            let mut s = Session::default();
            let got = model.forward(&mut s, &ids, adapters, false).unwrap().pop().unwrap();
            let k = kl(&want, &got);
            eprintln!("native {config}/{name}: KL {k:.2e}, top-1 {}", argmax(&want) == argmax(&got));
            assert_eq!(argmax(&want), argmax(&got), "{config}/{name}: top-1");
            assert!(k <= 1e-3, "{config}/{name}: KL {k}");
            // Greedy continuation, decoding token by token through the KV cache.
            let greedy: Vec<i32> = json["configs"][config]["results"][name]["greedy_ids"].as_array().unwrap().iter().map(|x| x.as_i64().unwrap() as i32).collect();
            let mut next = argmax(&got);
            let mut gen = vec![next];
            while gen.len() < greedy.len() {
                let l = model.forward(&mut s, &[next], adapters, false).unwrap().pop().unwrap();
                next = argmax(&l);
                gen.push(next);
            }
            assert_eq!(gen, greedy, "{config}/{name}: greedy continuation");
        }
    }
}

#[test]
fn native_int8_lora_factors_decode_within_budget_of_transformers() {
    // `DecodeFactors::Int8`: decoding (calls of ≤ FEW_ROWS tokens) reads int8 copies of
    // the factors. Each prompt goes through in chunks of FEW_ROWS tokens, so every chunk
    // takes those copies; the last row is held to transformers' logits with the budget of
    // the exact path (top-1 and KL ≤ 1e-3), and measured against the exact factors fed
    // the same way (it must differ — the copies are read — and stay within 0.1 |Δlogit|,
    // KL 1e-4: measured on an AVX2 host up to 0.041 and 9.3e-6).
    let base = model_gguf();
    let open = || NativeModel::new(edgelora::gguf::GgufFile::open(crate::common::model_path()).unwrap(), Box::new(Cpu)).unwrap();
    let exact = open();
    let mut int8 = open();
    int8.set_decode_factors(edgelora::model::DecodeFactors::Int8).unwrap();
    assert_eq!(int8.decode_factors(), edgelora::model::DecodeFactors::Int8);
    let seed = read_peft(&fixtures().join("seed_r16_qv"), base).unwrap();
    let rs = read_peft(&fixtures().join("rslora_r8_all"), base).unwrap();
    let json: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(fixtures().join("reference.json")).unwrap()).unwrap();
    let bytes = std::fs::read(fixtures().join("reference.safetensors")).unwrap();
    let st = SafeTensors::deserialize(&bytes).unwrap();
    let configs: [(&str, Vec<(&LoraAdapter, f32)>); 3] = [("seed_r16_qv", vec![(&seed, 1.0)]), ("rslora_r8_all", vec![(&rs, 1.0)]), ("mix_half_half", vec![(&seed, 0.5), (&rs, 0.5)])];
    let chunked = |m: &NativeModel, ids: &[i32], adapters: &[(&LoraAdapter, f32)]| -> Vec<f32> {
        let mut s = Session::default();
        let mut last = Vec::new();
        for c in ids.chunks(edgelora::compute::cpu::FEW_ROWS) {
            last = m.forward(&mut s, c, adapters, false).unwrap().pop().unwrap();
        }
        last
    };
    let mut worst = 0f32;
    for (config, adapters) in &configs {
        for p in json["prompts"].as_array().unwrap() {
            let name = p["name"].as_str().unwrap();
            let ids: Vec<i32> = p["input_ids"].as_array().unwrap().iter().map(|x| x.as_i64().unwrap() as i32).collect();
            let want: Vec<f32> = st.tensor(&format!("logits.{config}.{name}")).unwrap().data().chunks_exact(4).map(|c| f32::from_le_bytes(c.try_into().unwrap())).collect();
            let e = chunked(&exact, &ids, adapters);
            let q = chunked(&int8, &ids, adapters);
            let d = max_diff(&e, &q);
            worst = worst.max(d);
            eprintln!("int8 factors {config}/{name}: KL vs transformers {:.2e} (exact factors {:.2e}), max |Δlogit| vs exact {d:.2e}, KL vs exact {:.2e}", kl(&want, &q), kl(&want, &e), kl(&e, &q));
            assert_eq!(argmax(&want), argmax(&q), "{config}/{name}: top-1");
            assert!(kl(&want, &q) <= 1e-3, "{config}/{name}: KL {}", kl(&want, &q));
            assert!(d < 0.1 && kl(&e, &q) < 1e-4, "{config}/{name}: int8 vs exact factors {d}, KL {}", kl(&e, &q));
        }
    }
    assert!(worst > 0.0, "the int8 copies were not read");
}

#[test]
#[cfg(feature = "llama")]
fn native_and_llama_cpp_agree_teacher_forced() {
    // Teacher forcing: the same token sequence through both backends, the argmax at every
    // position compared (llama.cpp rounds activations to Q8_1 on this model, so near-ties
    // may flip; the target is ≥ 95% agreement).
    let base = model_gguf();
    let model = NativeModel::new(edgelora::gguf::GgufFile::open(crate::common::model_path()).unwrap(), Box::new(Cpu)).unwrap();
    let rt = runtime();
    let rs = read_peft(&fixtures().join("rslora_r8_all"), base).unwrap();
    rt.load_adapter("rs", fixtures().join("rslora_r8_all")).unwrap();
    let texts = [
        "The history of the Roman Empire spans many centuries, and historians still debate",
        "<|im_start|>user\nExplain how a bank decides whether to approve a loan.<|im_end|>\n<|im_start|>assistant\n",
        "def fibonacci(n):\n    if n < 2:\n        return n\n    return",
        "Photosynthesis converts light energy into chemical energy. In plants, it happens in",
    ];
    for (with_adapter, label) in [(false, "base"), (true, "rslora_r8_all")] {
        let (mut same, mut total) = (0, 0);
        for text in texts {
            // 64 tokens: the prompt, then llama.cpp's own greedy continuation.
            let set = if with_adapter { vec![("rs".to_string(), 1.0f32)] } else { vec![] };
            let mut ids = rt.tokenize(&edgelora::engine::Prompt::Text(text.into())).unwrap();
            let mut req = edgelora::engine::GenerateRequest::new(edgelora::engine::Prompt::Tokens(ids.clone()));
            req.max_tokens = 64 - ids.len();
            req.ignore_eog = true;
            req.adapters = set.clone();
            ids.extend(rt.generate(&req, &mut |_| true).unwrap().tokens);
            assert_eq!(ids.len(), 64);
            let theirs = rt.logits_all(&ids, &set).unwrap();
            let adapters: Vec<(&LoraAdapter, f32)> = if with_adapter { vec![(&rs, 1.0)] } else { vec![] };
            let ours = model.forward(&mut Session::default(), &ids, &adapters, true).unwrap();
            for (a, b) in ours.iter().zip(&theirs) {
                same += usize::from(argmax(a) == argmax(b));
                total += 1;
            }
        }
        let agree = same as f64 / total as f64;
        eprintln!("teacher-forced argmax agreement, {label}: {same}/{total} = {agree:.3}");
        assert!(agree >= 0.95, "{label}: {agree}");
    }
}

/// Largest |Δ| between two logit rows.
fn max_diff(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0f32, f32::max)
}

/// GPU vs CPU budget: the device sums each dot product in another order (f32) and
/// computes exp/sqrt with its own rounding; nothing else differs for prompts (the CPU
/// multiplies dequantized blocks in f32).
const GPU_LOGIT_BUDGET: f32 = 1e-3;
/// The same for calls of ≤ 8 tokens (`FEW_ROWS`: decoding): where the CPU has AVX512-VNNI, its
/// Q4_1/Q8_0 dot products take the input rounded to 16 bits per 32-value block.
const GPU_DECODE_BUDGET: f32 = 1e-2;

#[test]
fn native_gpu_whole_forward_equals_cpu_forward() {
    // The whole forward on wgpu (lavapipe where there is no GPU): embedding, every layer,
    // the head; KV cache and adapters on the device. Bindings capped at 1 MiB so that the
    // embedding table (30 MB) is split in row chunks and the output head in row batches.
    let base = model_gguf();
    let gpu = edgelora::compute::gpu::Gpu::with_binding_limit(1 << 20).unwrap_or_else(|e| panic!("{e}: install mesa-vulkan-drivers for lavapipe"));
    let on_gpu = NativeModel::on_gpu(edgelora::gguf::GgufFile::open(crate::common::model_path()).unwrap(), gpu).unwrap();
    let on_cpu = NativeModel::new(edgelora::gguf::GgufFile::open(crate::common::model_path()).unwrap(), Box::new(Cpu)).unwrap();
    eprintln!("backend: {}", on_gpu.backend_name());
    let seed = read_peft(&fixtures().join("seed_r16_qv"), base).unwrap();
    let rs = read_peft(&fixtures().join("rslora_r8_all"), base).unwrap();
    let mix: Vec<(&LoraAdapter, f32)> = vec![(&seed, 0.5), (&rs, 0.7)];
    // More than FEW_ROWS tokens: the CPU prompt path is f32 throughout.
    let ids = [1, 9690, 198, 2683, 359, 253, 3458, 314, 2115, 28];
    assert!(ids.len() > edgelora::compute::cpu::FEW_ROWS);
    // With the weighted pair (the base alone on the device is held to the CPU on the
    // architecture fixtures, tests/suite/arch.rs: each forward here takes ~10 s on lavapipe).
    for (label, adapters) in [("mix", mix.clone())] {
        // Prompt: every row's logits.
        let (mut sg, mut sc) = (Session::default(), Session::default());
        let a = on_gpu.forward(&mut sg, &ids, &adapters, true).unwrap();
        let b = on_cpu.forward(&mut sc, &ids, &adapters, true).unwrap();
        assert_eq!(a.len(), ids.len());
        for (r, (x, y)) in a.iter().zip(&b).enumerate() {
            let d = max_diff(x, y);
            eprintln!("{label} prompt row {r}: max |Δlogit| {d:.2e}, KL {:.2e}", kl(y, x));
            assert!(d < GPU_LOGIT_BUDGET, "{label} row {r}: {d}");
            assert_eq!(argmax(x), argmax(y), "{label} row {r}");
        }
        // Decode through the device KV cache, then rewind it and take another branch.
        let mut next = argmax(&a[ids.len() - 1]);
        for step in 0..2 {
            let x = on_gpu.forward(&mut sg, &[next], &adapters, false).unwrap().pop().unwrap();
            let y = on_cpu.forward(&mut sc, &[next], &adapters, false).unwrap().pop().unwrap();
            let d = max_diff(&x, &y);
            eprintln!("{label} decode step {step}: max |Δlogit| {d:.2e}");
            assert!(d < GPU_DECODE_BUDGET, "{label} step {step}: {d}");
            assert_eq!(argmax(&x), argmax(&y));
            next = argmax(&x);
        }
        sg.truncate(4);
        sc.truncate(4);
        let x = on_gpu.forward(&mut sg, &[2683, 198], &adapters, false).unwrap().pop().unwrap();
        let y = on_cpu.forward(&mut sc, &[2683, 198], &adapters, false).unwrap().pop().unwrap();
        assert!(max_diff(&x, &y) < GPU_DECODE_BUDGET, "{label} after truncate");
        assert_eq!(sg.n_past(), 6);
    }
    // Switching adapter sets per request on one model: the device copies do not leak
    // between sets (the seed alone now, after the mix).
    // Every row's logits, so the CPU's output head runs the f32 prompt path on every host
    // (the last row alone goes through the one-row kernel: the decode budget).
    let x = on_gpu.forward(&mut Session::default(), &ids, &[(&seed, 1.0)], true).unwrap().pop().unwrap();
    let y = on_cpu.forward(&mut Session::default(), &ids, &[(&seed, 1.0)], true).unwrap().pop().unwrap();
    assert!(max_diff(&x, &y) < GPU_LOGIT_BUDGET, "seed after mix: {}", max_diff(&x, &y));
    // Bad input is refused before the device is touched.
    assert!(on_gpu.forward(&mut Session::default(), &[], &[], false).is_err());
    assert!(on_gpu.forward(&mut Session::default(), &[49_152], &[], false).is_err());
}

#[test]
fn native_gpu_forward_runs_qwen2_and_float_weights() {
    // Tiny random models with F32 weights 16 wide: qwen2 (q/k/v biases, NeoX RoPE) and
    // llama, with an adapter on every linear layer, GPU whole forward against the CPU.
    let dir = tempfile::tempdir().unwrap();
    for arch in ["qwen2", "llama"] {
        let path = dir.path().join(format!("{arch}.gguf"));
        let base = crate::common::tiny_model(&path, arch, 3);
        let lora = edgelora::adapter::random_lora(&base, &edgelora::adapter::ALL_LINEAR, 4, 8.0, 0.3, 11);
        let gpu = edgelora::compute::gpu::Gpu::new().unwrap_or_else(|e| panic!("{e}: install mesa-vulkan-drivers for lavapipe"));
        let on_gpu = NativeModel::on_gpu(edgelora::gguf::GgufFile::open(&path).unwrap(), gpu).unwrap();
        let on_cpu = NativeModel::new(edgelora::gguf::GgufFile::open(&path).unwrap(), Box::new(Cpu)).unwrap();
        let ids = [3, 17, 5, 39, 0, 22, 8, 8, 1];
        let (mut sg, mut sc) = (Session::default(), Session::default());
        let mut rows = on_gpu.forward(&mut sg, &ids[..6], &[(&lora, 1.0)], true).unwrap();
        let mut want = on_cpu.forward(&mut sc, &ids[..6], &[(&lora, 1.0)], true).unwrap();
        rows.extend(on_gpu.forward(&mut sg, &ids[6..], &[(&lora, 1.0)], true).unwrap());
        want.extend(on_cpu.forward(&mut sc, &ids[6..], &[(&lora, 1.0)], true).unwrap());
        for (r, (x, y)) in rows.iter().zip(&want).enumerate() {
            let d = max_diff(x, y);
            assert!(d < 1e-4, "{arch} row {r}: max |Δlogit| {d}");
        }
        // The adapter matters here (so the comparison covers it).
        let plain = on_gpu.forward(&mut Session::default(), &ids[..6], &[], false).unwrap().pop().unwrap();
        assert!(max_diff(&plain, &rows[5]) > 1e-2, "{arch}: adapter had no effect");
    }
}

#[test]
fn rope_frequency_factors_scale_the_angles() {
    // rope_freqs.weight divides each pair's angle (as ggml does): all factors 2 must equal
    // linear scaling by 2; uneven factors must change the result, and the GPU forward must
    // apply them like the CPU one.
    let dir = tempfile::tempdir().unwrap();
    let open = |name: &str, freqs, linear| {
        let p = dir.path().join(name);
        crate::common::tiny_model_with_rope(&p, "llama", 5, freqs, linear);
        p
    };
    let uniform = open("uniform.gguf", Some([2.0, 2.0]), None);
    let linear = open("linear.gguf", None, Some(2.0));
    let uneven = open("uneven.gguf", Some([1.0, 8.0]), None);
    let plain = open("plain.gguf", None, None);
    let cpu = |p: &std::path::Path| NativeModel::new(edgelora::gguf::GgufFile::open(p).unwrap(), Box::new(Cpu)).unwrap();
    let ids = [3, 17, 5, 39, 0, 22, 8, 8, 1, 30, 11, 2];
    let run = |m: &NativeModel| m.forward(&mut Session::default(), &ids, &[], true).unwrap().concat();
    assert!(max_diff(&run(&cpu(&uniform)), &run(&cpu(&linear))) < 1e-5, "factors of 2 differ from linear scaling by 2");
    let (a, b) = (run(&cpu(&uneven)), run(&cpu(&plain)));
    assert!(max_diff(&a, &b) > 1e-3, "the factors had no effect");
    let gpu = edgelora::compute::gpu::Gpu::new().unwrap_or_else(|e| panic!("{e}: install mesa-vulkan-drivers for lavapipe"));
    let on_gpu = NativeModel::on_gpu(edgelora::gguf::GgufFile::open(&uneven).unwrap(), gpu).unwrap();
    assert!(max_diff(&run(&on_gpu), &a) < 1e-4, "GPU forward ignores rope_freqs");
    // A factor that is not a positive number is refused, naming the tensor.
    let bad = open("bad.gguf", Some([1.0, 0.0]), None);
    let e = NativeModel::new(edgelora::gguf::GgufFile::open(&bad).unwrap(), Box::new(Cpu)).err().expect("zero factor accepted").to_string();
    assert!(e.contains("rope_freqs.weight"), "{e}");
}

#[test]
fn lockstep_forward_equals_each_sequence_on_its_own() {
    // Three sequences stepped together (one product per weight for their rows, each
    // attending over its own cache) against each run alone, with an adapter on the fly.
    let model = NativeModel::new(edgelora::gguf::GgufFile::open(crate::common::model_path()).unwrap(), Box::new(Cpu)).unwrap();
    let a = read_peft(&fixtures().join("rslora_r8_all"), model_gguf()).unwrap();
    let seqs = [[1, 9690, 198, 2683, 359], [504, 3947, 9656, 327, 13759], [1, 4093, 198, 19556, 905]];
    let mut together: Vec<Session> = (0..3).map(|_| Session::default()).collect();
    let mut alone: Vec<Session> = (0..3).map(|_| Session::default()).collect();
    for step in 0..seqs[0].len() {
        let tokens: Vec<i32> = seqs.iter().map(|s| s[step]).collect();
        let got = model.forward_lockstep(&mut together, &tokens, &[(&a, 1.0)]).unwrap();
        for (i, s) in alone.iter_mut().enumerate() {
            let want = model.forward(s, &tokens[i..i + 1], &[(&a, 1.0)], false).unwrap();
            // Alone, a one-row step rounds its input to 16 bits per block (≤ 8 rows);
            // together the rows take the f32 kernels.
            assert!(max_diff(&got[i], &want[0]) < 2e-2, "sequence {i} step {step}: {}", max_diff(&got[i], &want[0]));
            assert_eq!(argmax(&got[i]), argmax(&want[0]));
        }
        assert!(together.iter().all(|s| s.n_past() == step + 1));
    }
    assert!(model.forward_lockstep(&mut together, &[1, 2], &[]).is_err(), "two tokens for three sequences");
}
