//! `edgelora eval`: accuracy of greedy answers, or loss/perplexity, on a JSONL test set.

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::Args;

use edgelora::adapter;
use edgelora::engine::parse_adapter_arg;
use edgelora::gguf::GgufFile;
use edgelora::train::data::{read_jsonl, Dataset};
use edgelora::train::eval::{generation_accuracy, loss, Metric};

use super::ModelArgs;

#[derive(Args)]
pub struct EvalArgs {
    #[command(flatten)]
    model: ModelArgs,
    /// Test data, JSONL (the training formats; the last assistant turn / output / completion is the expected answer)
    #[arg(long)]
    data: PathBuf,
    /// exact, first-word, contains (greedy answers) or loss (mean loss and perplexity of the expected answers)
    #[arg(long, default_value = "exact")]
    metric: String,
    /// Tokens generated per answer
    #[arg(long, default_value_t = 32)]
    max_tokens: usize,
    /// Tokens per example for --metric loss (longer ones are cut)
    #[arg(long, default_value_t = 512)]
    max_len: usize,
    /// Include every answer in the JSON
    #[arg(long)]
    answers: bool,
}

pub fn run(a: EvalArgs) -> Result<()> {
    let metric: Metric = a.metric.parse().map_err(|e| anyhow::anyhow!("--metric: {e}"))?;
    let t0 = std::time::Instant::now();
    let mut out = if metric == Metric::Loss {
        let base = GgufFile::open(&a.model.model).with_context(|| format!("reading {}", a.model.model.display()))?;
        let vocab = edgelora::Runtime::load(&a.model.model, edgelora::RuntimeOptions { n_ctx: 64, n_batch: 64, threads: 1, ..Default::default() })?;
        let data = Dataset::load(&vocab, &a.data, a.max_len, false)?;
        let mut adapters = Vec::new();
        for arg in &a.model.adapters {
            let (path, scale) = parse_adapter_arg(arg)?;
            let (ad, warnings) = adapter::load_with(&path, &base, adapter::ReadOptions { lenient: a.model.lenient }).with_context(|| format!("loading adapter {}", path.display()))?;
            warnings.iter().for_each(|w| eprintln!("{w}"));
            adapters.push((ad, scale));
        }
        let refs: Vec<_> = adapters.iter().map(|(a, s)| (a, *s)).collect();
        serde_json::to_value(loss(&base, &refs, &data.examples, 8)?)?
    } else {
        let records = read_jsonl(&a.data)?;
        let loaded = a.model.load()?;
        let report = generation_accuracy(loaded.engine(), &loaded.adapters, &records, &a.data, metric, a.max_tokens, &mut |_| {})?;
        let mut v = serde_json::to_value(&report)?;
        if !a.answers {
            v.as_object_mut().expect("an object").remove("answers");
        }
        v
    };
    let obj = out.as_object_mut().expect("an object");
    obj.insert("metric".into(), serde_json::to_value(metric)?);
    obj.insert("data".into(), a.data.display().to_string().into());
    obj.insert("secs".into(), t0.elapsed().as_secs_f64().into());
    println!("{}", serde_json::to_string_pretty(&out)?);
    Ok(())
}
