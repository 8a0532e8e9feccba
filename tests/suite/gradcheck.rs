//! Finite-difference checks (f64, tiny shapes) of every op's backward, and of dA/dB
//! through a whole tiny model.

use edgelora::compute::dense::Real;
use edgelora::model::config::{ModelConfig, RopeStyle};
use edgelora::model::grad::{Batch, GradOptions, LoraParam, LoraParams, TrainModel};
use edgelora::model::ops::attention::{attention_backward, attention_forward, Heads};
use edgelora::model::ops::cross_entropy::{cross_entropy_backward, cross_entropy_forward};
use edgelora::model::ops::embedding::embedding_backward;
use edgelora::model::ops::linear::{lora_linear_backward, lora_linear_forward, LoraRef};
use edgelora::model::ops::rmsnorm::{rmsnorm_backward, rmsnorm_forward};
use edgelora::model::ops::rope::{rope_backward, rope_forward, Rope};
use edgelora::model::ops::geglu::{geglu_backward, geglu_forward};
use edgelora::model::ops::swiglu::{swiglu_backward, swiglu_forward};
use edgelora::model::precision::{BaseMatrix, Precision};
use rand::{Rng, SeedableRng};

use crate::common::tiny_model;

const EPS: f64 = 1e-6;

fn rnd(n: usize, seed: u64) -> Vec<f64> {
    let mut r = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    (0..n).map(|_| r.random_range(-1.0..1.0)).collect()
}

/// Central difference of f at x along each coordinate.
fn numeric(x: &[f64], f: &dyn Fn(&[f64]) -> f64) -> Vec<f64> {
    let mut x = x.to_vec();
    (0..x.len())
        .map(|i| {
            let v = x[i];
            x[i] = v + EPS;
            let hi = f(&x);
            x[i] = v - EPS;
            let lo = f(&x);
            x[i] = v;
            (hi - lo) / (2.0 * EPS)
        })
        .collect()
}

fn assert_close(what: &str, analytic: &[f64], numeric: &[f64]) {
    assert_eq!(analytic.len(), numeric.len(), "{what}: lengths");
    let scale = numeric.iter().fold(1e-3f64, |m, v| m.max(v.abs()));
    for (i, (a, n)) in analytic.iter().zip(numeric).enumerate() {
        assert!((a - n).abs() <= 1e-6 * scale, "{what}[{i}]: analytic {a} vs numeric {n} (scale {scale})");
    }
    assert!(numeric.iter().any(|v| v.abs() > 1e-4), "{what}: the check saw no gradient at all");
}

fn dotp(a: &[f64], b: &[f64]) -> f64 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

#[test]
fn rmsnorm_backward_matches_finite_differences() {
    let (n, d) = (3, 8);
    let (x, w, r) = (rnd(n * d, 1), rnd(d, 2), rnd(n * d, 3));
    let f = |x: &[f64]| dotp(&rmsnorm_forward(x, &w, 1e-5), &r);
    let mut dx = vec![0.0; n * d];
    rmsnorm_backward(&mut dx, &r, &x, &w, 1e-5);
    assert_close("rmsnorm dx", &dx, &numeric(&x, &f));
}

#[test]
fn rope_backward_matches_finite_differences() {
    for style in [RopeStyle::Adjacent, RopeStyle::NeoX] {
        let factors = [1.0, 2.5, 8.0];
        let rope = Rope { n_heads: 2, head_dim: 8, rope_dim: 6, base: 100.0, factor: 2.0, style, freq_factors: Some(&factors) };
        let pos = [0, 3, 7];
        let (x, r) = (rnd(3 * 16, 4), rnd(3 * 16, 5));
        let f = |x: &[f64]| {
            let mut y = x.to_vec();
            rope_forward(&mut y, &rope, &pos);
            dotp(&y, &r)
        };
        let mut dx = r.clone();
        rope_backward(&mut dx, &rope, &pos);
        assert_close(&format!("rope {style:?}"), &dx, &numeric(&x, &f));
    }
}

#[test]
fn swiglu_backward_matches_finite_differences() {
    let (g, u, r) = (rnd(12, 6).iter().map(|v| v * 4.0).collect::<Vec<_>>(), rnd(12, 7), rnd(12, 8));
    let (dg, du) = swiglu_backward(&r, &g, &u);
    assert_close("swiglu dgate", &dg, &numeric(&g, &|g| dotp(&swiglu_forward(g, &u), &r)));
    assert_close("swiglu dup", &du, &numeric(&u, &|u| dotp(&swiglu_forward(&g, u), &r)));
}

#[test]
fn embedding_backward_matches_finite_differences() {
    let (n_vocab, d) = (5, 4);
    let tokens = [3, 1, 3, 0];
    let (table, r) = (rnd(n_vocab * d, 9), rnd(tokens.len() * d, 10));
    let f = |t: &[f64]| dotp(&tokens.iter().flat_map(|&i| t[i as usize * d..(i as usize + 1) * d].to_vec()).collect::<Vec<_>>(), &r);
    let mut dt = vec![0.0; n_vocab * d];
    embedding_backward(&mut dt, &r, &tokens, d);
    assert_close("embedding dtable", &dt, &numeric(&table, &f));
}

#[test]
fn geglu_backward_matches_finite_differences() {
    let (g, u, r) = (rnd(24, 41), rnd(24, 42), rnd(24, 43));
    let g: Vec<f64> = g.iter().map(|v| 3.0 * v).collect(); // the tanh's curved range too
    let (dg, du) = geglu_backward(&r, &g, &u);
    assert_close("geglu dgate", &dg, &numeric(&g, &|g| dotp(&geglu_forward(g, &u), &r)));
    assert_close("geglu dup", &du, &numeric(&u, &|u| dotp(&geglu_forward(&g, u), &r)));
}

#[test]
fn attention_backward_matches_finite_differences() {
    // Full causal attention, and a 2-token sliding window (gemma3's local layers).
    for window in [None, Some(2)] {
        attention_check(Heads { n_head: 4, n_head_kv: 2, head_dim: 3, window, scale: 1.0 / 3f64.sqrt() });
        attention_check(Heads { n_head: 4, n_head_kv: 2, head_dim: 3, window, scale: 0.3 });
    }
}

fn attention_check(hs: Heads) {
    let n = 5;
    let (q, k, v) = (rnd(n * 12, 11), rnd(n * 6, 12), rnd(n * 6, 13));
    let r = rnd(n * 12, 14);
    let mut probs = Vec::new();
    attention_forward(&q, &k, &v, 0, hs, Some(&mut probs));
    let (dq, dk, dv) = attention_backward(&r, &q, &k, &v, &probs, hs);
    assert_close("attention dq", &dq, &numeric(&q, &|q| dotp(&attention_forward(q, &k, &v, 0, hs, None), &r)));
    assert_close("attention dk", &dk, &numeric(&k, &|k| dotp(&attention_forward(&q, k, &v, 0, hs, None), &r)));
    assert_close("attention dv", &dv, &numeric(&v, &|v| dotp(&attention_forward(&q, &k, v, 0, hs, None), &r)));
}

#[test]
fn lora_linear_backward_matches_finite_differences() {
    let (n, n_in, n_out, rank) = (4, 6, 5, 2);
    let (x, w, a, b, r) = (rnd(n * n_in, 15), BaseMatrix::Dense(rnd(n_out * n_in, 16)), rnd(rank * n_in, 17), rnd(n_out * rank, 18), rnd(n * n_out, 19));
    let bias = rnd(n_out, 20);
    let s = 1.7;
    let fwd = |x: &[f64], a: &[f64], b: &[f64]| dotp(&lora_linear_forward(x, &w, n_in, n_out, Some(&bias), Some(LoraRef { a, b, rank, scale: s })).0, &r);
    let (_, ax) = lora_linear_forward(&x, &w, n_in, n_out, Some(&bias), Some(LoraRef { a: &a, b: &b, rank, scale: s }));
    let (mut dx, mut da, mut db) = (vec![0.0; x.len()], vec![0.0; a.len()], vec![0.0; b.len()]);
    lora_linear_backward(Some(&mut dx), &r, &x, &w, n_in, n_out, Some((LoraRef { a: &a, b: &b, rank, scale: s }, &ax, &mut da, &mut db)));
    assert_close("linear dx", &dx, &numeric(&x, &|x| fwd(x, &a, &b)));
    assert_close("linear dA", &da, &numeric(&a, &|a| fwd(&x, a, &b)));
    assert_close("linear dB", &db, &numeric(&b, &|b| fwd(&x, &a, b)));
}

#[test]
fn cross_entropy_backward_matches_finite_differences() {
    let (n, d, n_vocab) = (5, 4, 7);
    let (h, w) = (rnd(n * d, 21), rnd(n_vocab * d, 22));
    let targets = [3, 0, 6, 6, 1];
    let weights = rnd(n, 23);
    for chunk in [1, 2, 5] {
        let f = |h: &[f64]| dotp(&cross_entropy_forward(h, &w, &targets, d, chunk), &weights);
        let dh = cross_entropy_backward(&h, &w, &targets, &weights, d, chunk);
        assert_close(&format!("cross-entropy dh (chunk {chunk})"), &dh, &numeric(&h, &f));
    }
}

fn tiny_params<T: Real>(model: &TrainModel<T>, seed: u64) -> LoraParams<T> {
    let mut r = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    let mut out = LoraParams::new();
    // layer 0 q and down, layer 1 v: exercises the stop layer and both blocks.
    for name in ["blk.0.attn_q.weight", "blk.0.ffn_down.weight", "blk.1.attn_v.weight", "blk.1.attn_output.weight"] {
        let (n_in, n_out) = model.matrix_shape(name).unwrap();
        let rank = 3;
        let mut v = |n: usize| (0..n).map(|_| T::of(r.random_range(-0.4..0.4))).collect::<Vec<T>>();
        out.insert(name.to_string(), LoraParam { rank, n_in, n_out, scale: T::of(1.5), a: v(rank * n_in), b: v(n_out * rank) });
    }
    out
}

fn tiny_batch() -> Batch {
    // two sequences packed: lengths 5 and 4; targets masked on some positions.
    Batch { tokens: vec![1, 7, 3, 9, 22, 5, 5, 31, 2], seq_lens: vec![5, 4], targets: vec![-1, 3, 9, 22, 4, -1, 31, 2, 17], prefix: 0 }
}

#[test]
fn whole_model_lora_gradients_match_finite_differences() {
    let dir = tempfile::tempdir().unwrap();
    for arch in ["llama", "qwen2"] {
        let f = tiny_model(&dir.path().join(format!("{arch}.gguf")), arch, 42);
        let config = ModelConfig::from_gguf(&f).unwrap();
        let model = TrainModel::<f64>::new(&f, &config).unwrap();
        let params = tiny_params(&model, 7);
        let batch = tiny_batch();
        for checkpoint in [false, true] {
            let g = model.loss_and_grad(&params, &batch, GradOptions { checkpoint, ce_chunk: 2, grad_scale: 0.5 }).unwrap();
            assert_eq!(g.n_targets, 7);
            let loss = |p: &LoraParams<f64>| 0.5 * model.losses(p, &batch, 3).unwrap().iter().sum::<f64>();
            assert!((loss(&params) - 0.5 * g.loss_sum).abs() < 1e-12);
            for (name, p) in &params {
                for which in ["a", "b"] {
                    let x = if which == "a" { &p.a } else { &p.b };
                    let f = |v: &[f64]| {
                        let mut q = params.clone();
                        let t = q.get_mut(name).unwrap();
                        if which == "a" { t.a = v.to_vec() } else { t.b = v.to_vec() }
                        loss(&q)
                    };
                    let analytic = if which == "a" { &g.grads[name].a } else { &g.grads[name].b };
                    assert_close(&format!("{arch} checkpoint={checkpoint} d{which} {name}"), analytic, &numeric(x, &f));
                }
            }
        }
    }
}

#[test]
fn a_shared_prefix_gives_the_loss_and_gradients_of_its_copies() {
    use edgelora::train::data::{pack, pack_shared, Example};
    // Three examples opening with the same 4 untrained tokens, then their own rows; the
    // answers are trained.
    let ex = |tail: &[i32], trained_from: usize| {
        let tokens: Vec<i32> = [1, 7, 3, 9].iter().chain(tail).copied().collect();
        let trained = (0..tokens.len()).map(|j| j >= trained_from).collect();
        Example { tokens, trained }
    };
    let exs = [ex(&[22, 5, 31], 5), ex(&[4, 12], 5), ex(&[22, 8, 2, 17, 3], 6)];
    let refs: Vec<&Example> = exs.iter().collect();
    let (plain, shared) = (pack(&refs), pack_shared(&refs));
    // Rows 0..4 are shared (input tokens 1 7 3 9; the first trained target is token 5).
    assert_eq!(shared.prefix, 4);
    assert_eq!(shared.tokens.len(), plain.tokens.len() - 2 * 4);
    assert_eq!(shared.targets.iter().filter(|&&t| t >= 0).count(), plain.targets.iter().filter(|&&t| t >= 0).count());
    // A trained token inside the opening ends the shared part before it; one example or
    // a first token that differs shares nothing.
    let early = [ex(&[22, 5, 31], 5), ex(&[4, 12], 3)];
    assert_eq!(pack_shared(&early.iter().collect::<Vec<_>>()).prefix, 2);
    assert_eq!(pack_shared(&refs[..1]), pack(&refs[..1]));
    let other = Example { tokens: vec![2, 7, 3, 9, 4], trained: vec![false, false, false, false, true] };
    assert_eq!(pack_shared(&[refs[0], &other]).prefix, 0);

    let dir = tempfile::tempdir().unwrap();
    for arch in ["llama", "qwen2"] {
        let f = tiny_model(&dir.path().join(format!("{arch}.gguf")), arch, 11);
        let config = ModelConfig::from_gguf(&f).unwrap();
        let model = TrainModel::<f64>::new(&f, &config).unwrap();
        let params = tiny_params(&model, 5);
        for checkpoint in [false, true] {
            let opt = GradOptions { checkpoint, ce_chunk: 2, grad_scale: 0.25 };
            let (a, b) = (model.loss_and_grad(&params, &plain, opt).unwrap(), model.loss_and_grad(&params, &shared, opt).unwrap());
            assert_eq!(a.n_targets, b.n_targets);
            assert!((a.loss_sum - b.loss_sum).abs() <= 1e-12 * a.loss_sum.abs(), "{arch}: loss {} vs {}", a.loss_sum, b.loss_sum);
            for (name, g) in &a.grads {
                let h = &b.grads[name];
                for (x, y) in g.a.iter().chain(&g.b).zip(h.a.iter().chain(&h.b)) {
                    assert!((x - y).abs() <= 1e-10 * (1.0 + x.abs()), "{arch} checkpoint={checkpoint} {name}: {x} vs {y}");
                }
                assert!(g.a.iter().chain(&g.b).any(|v| v.abs() > 1e-6), "{name}: no gradient to compare");
            }
            let (la, lb) = (model.losses(&params, &plain, 3).unwrap(), model.losses(&params, &shared, 3).unwrap());
            assert!(la.iter().zip(&lb).all(|(x, y)| (x - y).abs() <= 1e-12 * x.abs().max(1.0)), "{la:?} {lb:?}");
        }
    }
    // A prefix with a target in it, or a sequence of no rows after it, is refused.
    let f = tiny_model(&dir.path().join("c.gguf"), "llama", 1);
    let model = TrainModel::<f64>::new(&f, &ModelConfig::from_gguf(&f).unwrap()).unwrap();
    let params = tiny_params(&model, 5);
    let opt = GradOptions { checkpoint: false, ce_chunk: 2, grad_scale: 1.0 };
    let mut bad = shared.clone();
    bad.targets[1] = 3;
    let Err(e) = model.loss_and_grad(&params, &bad, opt) else { panic!("a target in the prefix was accepted") };
    assert!(e.to_string().contains("shared prefix of 4 rows"), "{e}");
    let bad = Batch { tokens: vec![1, 7, 3], seq_lens: vec![3, 0], targets: vec![-1, -1, 4], prefix: 0 };
    assert!(model.loss_and_grad(&params, &Batch { prefix: 1, seq_lens: vec![2, 0], ..bad }, opt).is_err());
}

/// The same factors in f32.
fn params_f32(p64: &LoraParams<f64>) -> LoraParams<f32> {
    p64.iter().map(|(k, p)| (k.clone(), LoraParam { rank: p.rank, n_in: p.n_in, n_out: p.n_out, scale: p.scale as f32, a: p.a.iter().map(|&v| v as f32).collect(), b: p.b.iter().map(|&v| v as f32).collect() })).collect()
}

#[test]
fn f32_gradients_agree_with_f64() {
    let dir = tempfile::tempdir().unwrap();
    let f = tiny_model(&dir.path().join("m.gguf"), "llama", 3);
    let config = ModelConfig::from_gguf(&f).unwrap();
    let m64 = TrainModel::<f64>::new(&f, &config).unwrap();
    let m32 = TrainModel::<f32>::new(&f, &config).unwrap();
    let p64 = tiny_params(&m64, 9);
    let p32 = params_f32(&p64);
    let opt = GradOptions { checkpoint: false, ce_chunk: 4, grad_scale: 1.0 };
    let (g64, g32) = (m64.loss_and_grad(&p64, &tiny_batch(), opt).unwrap(), m32.loss_and_grad(&p32, &tiny_batch(), opt).unwrap());
    assert!((g64.loss_sum - g32.loss_sum).abs() < 1e-4 * g64.loss_sum.abs());
    for (name, p) in &g64.grads {
        for (a, b) in p.a.iter().chain(&p.b).zip(g32.grads[name].a.iter().chain(&g32.grads[name].b)) {
            assert!((a - f64::from(*b)).abs() < 1e-4 * (1.0 + a.abs()), "{name}: f64 {a} vs f32 {b}");
        }
    }
}

/// bf16 base products (mixed precision) against the f32 graph on the same batch: the
/// loss within 1%, the LoRA gradients within 3% in norm and pointing the same way
/// (cosine ≥ 0.999) — and not equal (the bf16 products ran). f64 graphs refuse bf16.
#[test]
fn bf16_products_give_the_f32_loss_and_gradients_within_their_rounding() {
    let dir = tempfile::tempdir().unwrap();
    let f = tiny_model(&dir.path().join("m.gguf"), "llama", 3);
    let config = ModelConfig::from_gguf(&f).unwrap();
    let m32 = TrainModel::<f32>::new(&f, &config).unwrap();
    let mb = TrainModel::<f32>::new(&f, &config).unwrap().with_precision(Precision::Bf16).unwrap();
    assert_eq!(mb.precision(), Precision::Bf16);
    assert!(TrainModel::<f64>::new(&f, &config).unwrap().with_precision(Precision::Bf16).is_err());
    let p64 = tiny_params(&TrainModel::<f64>::new(&f, &config).unwrap(), 9);
    let p32 = params_f32(&p64);
    for checkpoint in [false, true] {
        let opt = GradOptions { checkpoint, ce_chunk: 4, grad_scale: 1.0 };
        let (g32, gb) = (m32.loss_and_grad(&p32, &tiny_batch(), opt).unwrap(), mb.loss_and_grad(&p32, &tiny_batch(), opt).unwrap());
        assert!((g32.loss_sum - gb.loss_sum).abs() < 1e-2 * g32.loss_sum.abs(), "loss f32 {} bf16 {}", g32.loss_sum, gb.loss_sum);
        let flat = |g: &LoraParams<f32>| -> Vec<f64> { g.values().flat_map(|p| p.a.iter().chain(&p.b)).map(|&v| f64::from(v)).collect() };
        let (u, v) = (flat(&g32.grads), flat(&gb.grads));
        let norm = |x: &[f64]| x.iter().map(|a| a * a).sum::<f64>().sqrt();
        let cos = u.iter().zip(&v).map(|(a, b)| a * b).sum::<f64>() / (norm(&u) * norm(&v));
        let rel = u.iter().zip(&v).map(|(a, b)| (a - b) * (a - b)).sum::<f64>().sqrt() / norm(&u);
        eprintln!("checkpoint {checkpoint}: loss f32 {} bf16 {}, gradient cosine {cos:.6}, relative difference {rel:.2e}", g32.loss_sum, gb.loss_sum);
        assert!(cos >= 0.999 && rel <= 0.03 && rel > 0.0, "cosine {cos}, relative difference {rel}");
    }
}

#[test]
fn a_forward_started_at_the_base_hidden_states_gives_the_same_loss_and_gradients() {
    use edgelora::model::grad::Start;
    let dir = tempfile::tempdir().unwrap();
    let f = tiny_model(&dir.path().join("m.gguf"), "qwen2", 21);
    let config = ModelConfig::from_gguf(&f).unwrap();
    let model = TrainModel::<f64>::new(&f, &config).unwrap();
    // Factors in layer 1 only: layer 0 is frozen and its output can be computed once.
    let params: LoraParams<f64> = tiny_params(&model, 4).into_iter().filter(|(k, _)| k.starts_with("blk.1.")).collect();
    assert_eq!(params.len(), 2);
    let batch = tiny_batch();
    let x1 = model.hidden_states(&batch, 1).unwrap();
    assert_eq!(x1.len(), batch.tokens.len() * config.n_embd);
    for checkpoint in [false, true] {
        let opt = GradOptions { checkpoint, ce_chunk: 2, grad_scale: 0.5 };
        let full = model.loss_and_grad(&params, &batch, opt).unwrap();
        let from = model.loss_and_grad_from(&params, &batch, Some(Start { layer: 1, x: x1.clone() }), opt).unwrap();
        assert_eq!(full.n_targets, from.n_targets);
        assert!((full.loss_sum - from.loss_sum).abs() <= 1e-12 * full.loss_sum.abs(), "loss {} vs {}", full.loss_sum, from.loss_sum);
        for (name, g) in &full.grads {
            let h = &from.grads[name];
            assert!(g.a.iter().chain(&g.b).any(|v| v.abs() > 1e-6), "{name}: no gradient to compare");
            for (x, y) in g.a.iter().chain(&g.b).zip(h.a.iter().chain(&h.b)) {
                assert!((x - y).abs() <= 1e-12 * (1.0 + x.abs()), "checkpoint={checkpoint} {name}: {x} vs {y}");
            }
        }
    }
    let full = model.losses_and_hits(&params, &batch, 3).unwrap();
    let from = model.losses_and_hits_from(&params, &batch, Some(Start { layer: 1, x: x1.clone() }), 3).unwrap();
    assert_eq!(full.iter().map(|s| s.1).collect::<Vec<_>>(), from.iter().map(|s| s.1).collect::<Vec<_>>());
    assert!(full.iter().zip(&from).all(|(a, b)| (a.0 - b.0).abs() <= 1e-12 * a.0.abs().max(1.0)));
    // All layers' states: the forward runs only the head. Starting above a factor, or with
    // states of the wrong size, is refused with what was expected.
    let top = model.hidden_states(&batch, 2).unwrap();
    let none = LoraParams::new();
    let l = model.losses_and_hits_from(&none, &batch, Some(Start { layer: 2, x: top }), 3).unwrap();
    assert!(l.iter().zip(&model.losses_and_hits(&none, &batch, 3).unwrap()).all(|(a, b)| (a.0 - b.0).abs() <= 1e-12 * a.0.abs().max(1.0)));
    let all = tiny_params(&model, 4);
    let opt = GradOptions { checkpoint: false, ce_chunk: 2, grad_scale: 1.0 };
    let Err(e) = model.loss_and_grad_from(&all, &batch, Some(Start { layer: 1, x: x1.clone() }), opt) else { panic!("a start above blk.0's factors was accepted") };
    assert!(e.to_string().contains("skips the LoRA factor blk.0."), "{e}");
    let Err(e) = model.loss_and_grad_from(&params, &batch, Some(Start { layer: 1, x: x1[..16].to_vec() }), opt) else { panic!("short states were accepted") };
    assert!(e.to_string().contains("needs 9 rows"), "{e}");
    assert!(model.hidden_states(&batch, 3).is_err());
}

#[test]
fn frozen_states_computed_in_other_batches_give_each_batch_its_own_hidden_states() {
    use edgelora::train::data::{pack_shared, Example};
    use edgelora::train::frozen::FrozenStates;
    let dir = tempfile::tempdir().unwrap();
    let f = tiny_model(&dir.path().join("m.gguf"), "llama", 8);
    let config = ModelConfig::from_gguf(&f).unwrap();
    let model = TrainModel::<f32>::new(&f, &config).unwrap();
    let ex = |tail: &[i32]| {
        let tokens: Vec<i32> = [1, 7, 3, 9].iter().chain(tail).copied().collect();
        let trained = (0..tokens.len()).map(|j| j >= tokens.len() - 2).collect();
        Example { tokens, trained }
    };
    // Examples 0 and 2 share a longer opening than all four do.
    let exs = [ex(&[22, 5, 31]), ex(&[4, 12, 6]), ex(&[22, 5, 8, 2]), ex(&[30, 11, 13])];
    let frozen = FrozenStates::new(1);
    // Filled by batches {3, 1} then {0}; asked for {2, 0}, {0, 1, 2, 3}, {1} and {2, 3}:
    // each must equal that batch's own hidden states.
    for group in [&[3usize, 1][..], &[0], &[2, 0], &[0, 1, 2, 3], &[1], &[2, 3]] {
        let pairs: Vec<(usize, &Example)> = group.iter().map(|&i| (i, &exs[i])).collect();
        let refs: Vec<&Example> = pairs.iter().map(|p| p.1).collect();
        let b = pack_shared(&refs);
        let start = frozen.start_for(&model, &pairs, &b).unwrap();
        let want = model.hidden_states(&b, 1).unwrap();
        assert_eq!(start.layer, 1);
        assert_eq!(start.x.len(), want.len(), "{group:?}");
        for (a, w) in start.x.iter().zip(&want) {
            assert!((a - w).abs() <= 1e-5 * (1.0 + w.abs()), "{group:?}: {a} vs {w}");
        }
    }
    // Every example is held now: rows − 1 per example, d wide.
    let d = config.n_embd;
    assert_eq!(frozen.bytes(), exs.iter().map(|e| (e.tokens.len() - 1) * d * 4).sum::<usize>());
    // A cap keeps what fits and computes the rest each time.
    let small = FrozenStates::with_cap(1, (exs[0].tokens.len() - 1) * d * 4);
    let pairs: Vec<(usize, &Example)> = exs.iter().enumerate().collect();
    let b = pack_shared(&exs.iter().collect::<Vec<_>>());
    let start = small.start_for(&model, &pairs, &b).unwrap();
    assert!(small.bytes() <= (exs[0].tokens.len() - 1) * d * 4 && small.bytes() > 0);
    assert!(start.x.iter().zip(&model.hidden_states(&b, 1).unwrap()).all(|(a, w)| (a - w).abs() <= 1e-5 * (1.0 + w.abs())));
    // Examples that do not match the batch are refused.
    assert!(frozen.start_for(&model, &pairs[..2], &b).is_err());
    // Another index of the same example can take over its states (a validation example
    // joining the training data); nothing is copied from a split that lacks it.
    let moved = FrozenStates::new(1);
    assert!(moved.adopt(&frozen, 2, 7));
    assert!(!moved.adopt(&frozen, 99, 8));
    assert!(!moved.adopt(&FrozenStates::new(0), 2, 9));
    assert_eq!(moved.bytes(), (exs[2].tokens.len() - 1) * d * 4);
    let b = pack_shared(&[&exs[2]]);
    let start = moved.start_for(&model, &[(7, &exs[2])], &b).unwrap();
    assert!(start.x.iter().zip(&model.hidden_states(&b, 1).unwrap()).all(|(a, w)| (a - w).abs() <= 1e-5 * (1.0 + w.abs())));
}
