//! `edgelora bench`: prompt and generation speed with no adapter and with each adapter
//! set, adapter-switch latency, peak RSS. Figures only — nothing here asserts a timing.

use std::time::Instant;

use anyhow::{Context, Result};
use clap::Args;
use serde_json::json;

use edgelora::adapter::{random_lora, FactorDtype, ALL_LINEAR};
use edgelora::engine::{parse_adapter_arg, GenerateRequest, Prompt};

use super::ModelArgs;

#[derive(Args)]
#[command(args_conflicts_with_subcommands = true)]
pub struct BenchArgs {
    #[command(subcommand)]
    what: Option<BenchWhat>,
    #[command(flatten)]
    model: ModelArgs,
    /// Prompt tokens per prompt-processing run
    #[arg(short = 'p', long = "prompt-tokens", default_value_t = 512)]
    n_prompt: usize,
    /// Tokens generated per generation run
    #[arg(short = 'n', long = "gen-tokens", default_value_t = 128)]
    n_gen: usize,
    /// Repetitions of each measurement (the median is reported)
    #[arg(long, default_value_t = 5)]
    reps: usize,
    /// Adapter-set switches to time
    #[arg(long, default_value_t = 1000)]
    switches: usize,
    /// Rank of the synthetic all-linear adapters used when fewer than 8 (or no) adapters are given
    #[arg(long, default_value_t = 16)]
    synthetic_rank: usize,
    /// Print JSON instead of a Markdown table
    #[arg(long)]
    json: bool,
    /// Native backend: also print where a decode step's time goes (ms per generated token
    /// by operation: matmuls by weight format, adapters, attention, norms, sampling, …)
    #[arg(long)]
    profile: bool,
}

#[derive(clap::Subcommand)]
pub enum BenchWhat {
    /// Time merging adapters into the model (written to a temporary file)
    Merge(MergeBench),
    /// Batched decoding on the native engine: B sequences, each with its own synthetic
    /// adapter, stepped together (what `serve` does); aggregate tokens/s against B = 1
    Batch(BatchBench),
}

#[derive(Args)]
pub struct BatchBench {
    #[arg(long, short = 'm', default_value = super::DEFAULT_MODEL)]
    model: std::path::PathBuf,
    /// CPU threads (default: all cores)
    #[arg(long, short = 't')]
    threads: Option<usize>,
    /// Batch sizes to measure
    #[arg(long, value_delimiter = ',', default_value = "1,2,4,8,16")]
    batch: Vec<usize>,
    /// Rank of each sequence's synthetic all-linear adapter (0: no adapter)
    #[arg(long, default_value_t = 16)]
    rank: usize,
    /// Decode steps timed per batch size (after an 8-token prompt)
    #[arg(long, default_value_t = 32)]
    steps: usize,
    /// cpu, or gpu: the whole forward on wgpu, batched there (what `serve --device gpu`
    /// steps; fails if no adapter)
    #[arg(long, default_value = "cpu", value_parser = ["cpu", "gpu"])]
    device: String,
    /// Decode with int8 copies of the adapters' factors (as `--lora-int8` elsewhere; CPU)
    #[arg(long)]
    lora_int8: bool,
    #[arg(long)]
    json: bool,
}

/// Decode steps of B sequences in one `forward_batch` each, every sequence on its own
/// adapter; tokens/s summed over the batch.
fn bench_batch(b: BatchBench) -> Result<()> {
    use edgelora::adapter::LoraAdapter;
    use edgelora::model::{BatchItem, NativeModel, Session};
    anyhow::ensure!(b.steps > 0 && !b.batch.is_empty() && b.batch.iter().all(|&n| n > 0), "--steps and every --batch must be ≥ 1");
    if let Some(t) = b.threads {
        let _ = rayon::ThreadPoolBuilder::new().num_threads(t.max(1)).build_global();
    }
    let open = || edgelora::gguf::GgufFile::open(&b.model).with_context(|| format!("opening {}", b.model.display()));
    let base = open()?;
    let max_b = b.batch.iter().copied().max().unwrap_or(1);
    // Factors rounded to f16, as an adapter file holds them (the exact path then reads its
    // f16 copies, as it does for a loaded adapter).
    let adapters: Vec<LoraAdapter> = if b.rank == 0 {
        Vec::new()
    } else {
        (0..max_b)
            .map(|i| {
                let mut a = random_lora(&base, &ALL_LINEAR, b.rank, 2.0 * b.rank as f32, 0.02, i as u64 + 1);
                for t in a.tensors.values_mut() {
                    t.a.iter_mut().chain(t.b.iter_mut()).for_each(|v| *v = half::f16::from_f32(*v).to_f32());
                    t.dtype = edgelora::adapter::FactorDtype::F16;
                }
                a
            })
            .collect()
    };
    let mut model = if b.device == "gpu" { NativeModel::on_gpu(open()?, edgelora::compute::gpu::Gpu::new().context("--device gpu")?)? } else { NativeModel::new(open()?, Box::new(edgelora::compute::cpu::Cpu))? };
    if b.lora_int8 {
        model.set_decode_factors(edgelora::model::DecodeFactors::Int8)?;
    }
    // Token ids within any vocabulary (the default model's prompt on it).
    let id = |t: i32| t % model.config.n_vocab as i32;
    let prompt: Vec<i32> = [1, 9690, 198, 2683, 359, 504, 3947, 9656].into_iter().map(id).collect();
    let mut rows = Vec::new();
    for &n in &b.batch {
        let sets: Vec<Vec<(&LoraAdapter, f32)>> = (0..n).map(|i| adapters.get(i).map(|a| vec![(a, 1.0)]).unwrap_or_default()).collect();
        let mut sessions: Vec<Session> = (0..n).map(|_| Session::default()).collect();
        let mut items: Vec<BatchItem> = sessions.iter_mut().zip(&sets).map(|(s, a)| BatchItem { session: s, tokens: &prompt, adapters: a, all_logits: false }).collect();
        model.forward_batch(&mut items)?;
        drop(items);
        let tokens: Vec<[i32; 1]> = (0..n).map(|i| [id(198 + i as i32)]).collect();
        edgelora::model::profile::reset();
        let t0 = Instant::now();
        for _ in 0..b.steps {
            let mut items: Vec<BatchItem> = sessions.iter_mut().zip(&sets).zip(&tokens).map(|((s, a), t)| BatchItem { session: s, tokens: t, adapters: a, all_logits: false }).collect();
            model.forward_batch(&mut items)?;
        }
        let secs = t0.elapsed().as_secs_f64();
        if edgelora::model::profile::enabled() {
            // EDGELORA_PROFILE=1: where one step of this batch size went, on stderr.
            let mut ops: Vec<(String, (f64, u64))> = edgelora::model::profile::take().into_iter().collect();
            ops.sort_by(|x, y| y.1 .0.total_cmp(&x.1 .0));
            let per = |v: f64| v * 1e3 / b.steps as f64;
            eprintln!("\nprofile (EDGELORA_PROFILE=1), batch {n}: per step ({:.3} ms wall)\n| operation | ms | calls | share |\n|---|---:|---:|---:|", per(secs));
            for (op, (s, calls)) in &ops {
                eprintln!("| {op} | {:.3} | {:.1} | {:.1}% |", per(*s), *calls as f64 / b.steps as f64, 100.0 * s / secs);
            }
        }
        rows.push((n, (n * b.steps) as f64 / secs));
    }
    let one = rows.iter().find(|r| r.0 == 1).map(|r| r.1);
    if b.json {
        let list: Vec<_> = rows.iter().map(|&(n, tps)| json!({"batch": n, "aggregate_tok_s": tps, "per_sequence_tok_s": tps / n as f64, "vs_batch_1": one.map(|o| tps / o)})).collect();
        println!("{}", serde_json::to_string_pretty(&json!({"model": b.model, "device": model.backend_name(), "lora_factors": if b.lora_int8 { "int8" } else { "exact" }, "rank": b.rank, "steps": b.steps, "threads": rayon::current_num_threads(), "rows": list}))?);
    } else {
        println!("batched decode on {} ({}, {} thread(s)), a rank-{} all-linear adapter per sequence{}, {} steps after an 8-token prompt", b.model.display(), model.backend_name(), rayon::current_num_threads(), b.rank, if b.lora_int8 { " (int8 factors)" } else { "" }, b.steps);
        println!("| batch | aggregate tok/s | per sequence tok/s | vs batch 1 |\n|---:|---:|---:|---:|");
        for (n, tps) in rows {
            println!("| {n} | {tps:.1} | {:.1} | {} |", tps / n as f64, one.map(|o| format!("{:.2}x", tps / o)).unwrap_or_else(|| "-".into()));
        }
    }
    Ok(())
}

#[derive(Args)]
pub struct MergeBench {
    #[arg(long, short = 'm', default_value = super::DEFAULT_MODEL)]
    model: std::path::PathBuf,
    /// Adapters to merge (none: a synthetic rank-16 all-linear one)
    #[arg(long = "adapter", short = 'a', value_name = "PATH[:SCALE]")]
    adapters: Vec<String>,
    #[arg(long, default_value_t = 3)]
    reps: usize,
    /// refit, ggml or gptq (calibration sampled from the adapted model, as `merge` does)
    #[arg(long, value_parser = super::merge::quantizer_names(), default_value = "refit")]
    quantizer: String,
    #[arg(long, value_parser = ["cpu", "gpu"], default_value = "cpu")]
    device: String,
    #[arg(long)]
    json: bool,
}

fn bench_merge(b: MergeBench) -> Result<()> {
    use edgelora::merge::Quantizer;
    let dir = tempfile::tempdir()?;
    let mut adapters = b.adapters.clone();
    if adapters.is_empty() {
        let base = edgelora::gguf::GgufFile::open(&b.model)?;
        let mut a = random_lora(&base, &ALL_LINEAR, 16, 32.0, 0.02, 7);
        a.tensors.values_mut().for_each(|t| t.dtype = FactorDtype::F16);
        let p = dir.path().join("r16.gguf");
        edgelora::adapter::write_gguf_lora(&a, &p, edgelora::adapter::GgufLoraDtype::F16)?;
        adapters.push(p.display().to_string());
    }
    let q = Quantizer::from_name(&b.quantizer).context("clap checked --quantizer")?;
    let out = dir.path().join("merged.gguf");
    let mut secs = Vec::new();
    let mut bytes = 0;
    for _ in 0..b.reps.max(1) {
        let t = Instant::now();
        let device = if b.device == "gpu" { edgelora::compute::Device::Gpu } else { edgelora::compute::Device::Cpu };
        let opts = edgelora::merge::MergeOptions { quantizer: q, device, ..Default::default() };
        let s = super::merge::merge_args_into(&b.model, &adapters, &out, &opts, false)?;
        secs.push(t.elapsed().as_secs_f64());
        bytes = s.bytes;
    }
    let med = median(&mut secs);
    if b.json {
        println!("{}", serde_json::to_string_pretty(&json!({"model": b.model, "adapters": adapters, "quantizer": b.quantizer, "device": b.device, "reps": secs.len(), "median_s": med, "min_s": secs[0], "bytes": bytes, "peak_rss_bytes": peak_rss_bytes()}))?);
    } else {
        println!("merge {} adapter(s) into {} ({} quantizer, {}): median {:.3} s, min {:.3} s over {} reps (read, merge, requantize, write {} bytes); peak RSS {:.1} MiB",
            adapters.len(), b.model.display(), b.quantizer, b.device, med, secs[0], secs.len(), bytes, peak_rss_bytes().unwrap_or(0) as f64 / (1 << 20) as f64);
    }
    Ok(())
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    if v.is_empty() {
        return f64::NAN;
    }
    v[v.len() / 2]
}

fn percentile(v: &mut [f64], p: f64) -> f64 {
    v.sort_by(f64::total_cmp);
    if v.is_empty() {
        return f64::NAN;
    }
    let i = ((v.len() as f64 - 1.0) * p).round() as usize;
    v[i]
}

/// Peak resident set size of this process (VmHWM), in bytes.
pub fn peak_rss_bytes() -> Option<u64> {
    let s = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = s.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

struct Row {
    label: String,
    set: Vec<(String, f32)>,
    prompt_tps: f64,
    gen_tps: f64,
    /// Seconds and calls per operation over the generation runs, and the tokens generated.
    profile: Option<(std::collections::BTreeMap<String, (f64, u64)>, usize)>,
}

pub fn run(a: BenchArgs) -> Result<()> {
    match a.what {
        Some(BenchWhat::Merge(b)) => return bench_merge(b),
        Some(BenchWhat::Batch(b)) => return bench_batch(b),
        None => {}
    }
    anyhow::ensure!(a.reps > 0 && a.n_prompt > 0 && a.n_gen > 1, "--reps, -p must be ≥ 1 and -n ≥ 2");
    let mut margs = a.model.clone();
    let user = std::mem::take(&mut margs.adapters);
    let loaded = margs.load()?;
    let rt = loaded.engine();
    let n_vocab = rt.n_vocab();
    let threads = margs.options().threads;
    let base = edgelora::gguf::GgufFile::open(&margs.model)?;
    let tmp = tempfile::tempdir().context("creating a temporary directory for synthetic adapters")?;

    // Adapters: the user's, then synthetic rank-R all-linear ones (f16) up to 8 for
    // switching.
    let mut names = Vec::new();
    let mut rows_sets: Vec<(String, Vec<(String, f32)>)> = vec![("base".into(), vec![])];
    for (i, arg) in user.iter().enumerate() {
        let (path, scale) = parse_adapter_arg(arg)?;
        let name = format!("u{i}");
        super::load_adapter(rt, &name, &path, margs.lenient)?;
        rows_sets.push((format!("{} @{scale}", path.display()), vec![(name.clone(), scale)]));
        names.push(name);
    }
    if user.len() > 1 {
        let all: Vec<(String, f32)> = rows_sets[1..].iter().map(|(_, s)| s[0].clone()).collect();
        rows_sets.push(("all given adapters at once".into(), all));
    }
    let mut synth_k = 0;
    while names.len() < 8 {
        let synth = random_lora(&base, &ALL_LINEAR, a.synthetic_rank, 2.0 * a.synthetic_rank as f32, 0.02, 1000 + synth_k);
        let path = tmp.path().join(format!("synthetic-{synth_k}.gguf"));
        edgelora::adapter::write_gguf_lora(&synth, &path, edgelora::adapter::GgufLoraDtype::F16)?;
        let name = format!("s{synth_k}");
        rt.load_adapter(&name, &path, Default::default())?;
        if user.is_empty() && synth_k == 0 {
            rows_sets.push((format!("synthetic r{} all-linear (f16)", a.synthetic_rank), vec![(name.clone(), 1.0)]));
        }
        names.push(name);
        synth_k += 1;
    }

    let prompt: Vec<i32> = (0..a.n_prompt).map(|i| ((i * 7919 + 13) % n_vocab) as i32).collect();
    let profiling = a.profile && !loaded.is_llama();
    if a.profile && !profiling {
        eprintln!("--profile: the llama.cpp backend is not profiled (use --backend native)");
    }
    if profiling {
        edgelora::model::profile::enable();
    }
    let mut rows = Vec::new();
    for (label, set) in rows_sets {
        let mut ptps = Vec::new();
        let mut gtps = Vec::new();
        let mut prof: std::collections::BTreeMap<String, (f64, u64)> = Default::default();
        let mut prof_tokens = 0;
        for _ in 0..a.reps {
            rt.clear_cache();
            let t = Instant::now();
            rt.logits(&prompt, &set)?;
            ptps.push(a.n_prompt as f64 / t.elapsed().as_secs_f64());

            rt.clear_cache();
            let mut req = GenerateRequest::new(Prompt::Tokens(prompt[..8.min(prompt.len())].to_vec()));
            req.adapters = set.clone();
            req.max_tokens = a.n_gen;
            req.ignore_eog = true;
            edgelora::model::profile::reset();
            let g = rt.generate(&req, &mut |_| true)?;
            gtps.push((g.tokens.len() - 1) as f64 / g.gen_secs);
            // The run's operations (its 8-token prompt included), summed over the reps.
            for (op, (secs, calls)) in edgelora::model::profile::take() {
                let e = prof.entry(op).or_insert((0.0, 0));
                e.0 += secs;
                e.1 += calls;
            }
            prof_tokens += g.tokens.len();
        }
        rows.push(Row { label, set, prompt_tps: median(&mut ptps), gen_tps: median(&mut gtps), profile: profiling.then_some((prof, prof_tokens)) });
    }

    // Switch latency: activate a different single-adapter set each time (the llama.cpp
    // backend's switch; the native engine has no per-set state but its KV cache).
    let sets: Vec<Vec<(String, f32)>> = names.iter().map(|n| vec![(n.clone(), 1.0)]).collect();
    let mut switch = Vec::with_capacity(a.switches);
    #[cfg(feature = "llama")]
    if let Some(llama) = loaded.llama() {
        for i in 0..a.switches {
            let t = Instant::now();
            llama.activate(&sets[i % sets.len()])?;
            switch.push(t.elapsed().as_secs_f64() * 1e6);
        }
    }
    // Switch plus the first decoded token, against the same token with no switch.
    let n_first = if loaded.is_llama() { a.switches.min(200) } else { 0 };
    let mut first_switch = Vec::new();
    let mut first_same = Vec::new();
    for i in 0..n_first {
        let t = Instant::now();
        rt.logits(&prompt[..1], &sets[i % sets.len()])?;
        first_switch.push(t.elapsed().as_secs_f64() * 1e3);
    }
    for _ in 0..n_first {
        let t = Instant::now();
        rt.logits(&prompt[..1], &sets[0])?;
        first_same.push(t.elapsed().as_secs_f64() * 1e3);
    }
    let sw_med = median(&mut switch);
    let sw_p99 = percentile(&mut switch, 0.99);
    let fs_med = median(&mut first_switch);
    let fs_p99 = percentile(&mut first_switch, 0.99);
    let same_med = median(&mut first_same);
    let rss = peak_rss_bytes();
    let base_gen = rows[0].gen_tps;
    let base_prompt = rows[0].prompt_tps;

    if a.json {
        let v = json!({
            "model": margs.model,
            "backend": rt.backend_name(),
            "threads": threads,
            "prompt_tokens": a.n_prompt,
            "gen_tokens": a.n_gen,
            "reps": a.reps,
            "rows": rows.iter().map(|r| json!({
                "config": r.label, "adapters": r.set.len(),
                "prompt_tok_s": r.prompt_tps, "gen_tok_s": r.gen_tps,
                "prompt_vs_base": r.prompt_tps / base_prompt, "gen_vs_base": r.gen_tps / base_gen,
                "profile_ms_per_token": r.profile.as_ref().map(|(p, n)| p.iter().map(|(op, (secs, calls))| (op.clone(), json!({"ms": secs * 1e3 / (*n).max(1) as f64, "calls": *calls as f64 / (*n).max(1) as f64}))).collect::<serde_json::Map<_, _>>()),
            })).collect::<Vec<_>>(),
            "switch": {"adapters_loaded": names.len(), "switches": a.switches,
                       "median_us": sw_med, "p99_us": sw_p99,
                       "first_token_after_switch_median_ms": fs_med, "first_token_after_switch_p99_ms": fs_p99,
                       "first_token_same_set_median_ms": same_med, "first_token_samples": n_first},
            "peak_rss_bytes": rss,
        });
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(());
    }
    println!("model: {} ({}), threads: {threads}, prompt {} tokens, generate {} tokens, median of {} reps\n", margs.model.display(), rt.backend_name(), a.n_prompt, a.n_gen, a.reps);
    println!("| config | prompt tok/s | gen tok/s | prompt vs base | gen vs base |");
    println!("|---|---:|---:|---:|---:|");
    for r in &rows {
        println!("| {} | {:.1} | {:.1} | {:.3} | {:.3} |", r.label, r.prompt_tps, r.gen_tps, r.prompt_tps / base_prompt, r.gen_tps / base_gen);
    }
    if switch.is_empty() {
        println!("\nadapter switch: not measured on the {} backend (no per-set state besides the KV cache)", rt.backend_name());
    } else {
        println!("\nadapter switch ({} switches among {} loaded adapters): median {:.1} µs, p99 {:.1} µs", a.switches, names.len(), sw_med, sw_p99);
        println!("switch + first token ({n_first} samples): median {fs_med:.2} ms, p99 {fs_p99:.2} ms; same set, no switch: median {same_med:.2} ms");
    }
    if let Some(r) = rss {
        println!("peak RSS: {:.1} MiB", r as f64 / (1 << 20) as f64);
    }
    for r in rows.iter().filter(|r| r.profile.is_some()) {
        let (p, n) = r.profile.as_ref().expect("filtered");
        let total: f64 = p.values().map(|v| v.0).sum();
        println!("\nprofile, {}: per generated token (the 8-token prompt included), {n} tokens over {} reps", r.label, a.reps);
        println!("| operation | ms per token | calls per token | share |\n|---|---:|---:|---:|");
        let mut ops: Vec<_> = p.iter().collect();
        ops.sort_by(|x, y| y.1 .0.total_cmp(&x.1 .0));
        for (op, (secs, calls)) in ops {
            println!("| {op} | {:.3} | {:.1} | {:.1}% |", secs * 1e3 / (*n).max(1) as f64, *calls as f64 / (*n).max(1) as f64, 100.0 * secs / total.max(1e-12));
        }
        println!("| all profiled | {:.3} | | |", total * 1e3 / (*n).max(1) as f64);
    }
    Ok(())
}
