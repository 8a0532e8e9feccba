//! `edgelora eval`: accuracy of greedy answers, classification metrics from the label
//! words' probabilities, or loss/perplexity, on a JSONL test set; `--by FIELD` splits a
//! per-record metric by a record field; `--compare A B` runs two adapters on the same
//! records with a paired bootstrap interval and McNemar's exact test.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::Args;
use serde_json::{json, Value};

use edgelora::adapter;
use edgelora::engine::{parse_adapter_arg, Engine};
use edgelora::gguf::GgufFile;
use edgelora::train::data::{field_values, read_jsonl, Dataset, Sourced};
use edgelora::train::eval::{classify, generation_accuracy, loss, ClassificationReport, Metric};
use edgelora::train::metrics::{mcnemar_exact, paired_bootstrap, roc_curve};

use super::{load_adapter, ModelArgs};

#[derive(Args)]
pub struct EvalArgs {
    #[command(flatten)]
    model: ModelArgs,
    /// Test data, JSONL (the training formats; the last assistant turn / output / completion is the expected answer)
    #[arg(long)]
    data: PathBuf,
    /// exact, first-word, contains (greedy answers), classification (the answer's first
    /// word is a label; one forward per record scores every label) or loss (mean loss and
    /// perplexity of the expected answers)
    #[arg(long, default_value = "exact")]
    metric: String,
    /// Labels of --metric classification, comma-separated (default: the answers' distinct first words)
    #[arg(long, value_delimiter = ',')]
    labels: Vec<String>,
    /// Split the metric by this top-level field of each record (e.g. scenario); records without it count as "<none>"
    #[arg(long, value_name = "FIELD")]
    by: Option<String>,
    /// Compare two adapters (each PATH[:SCALE], or `base` for none) on the same records:
    /// both reports, B − A with a paired bootstrap 95% interval, McNemar's exact test
    #[arg(long, num_args = 2, value_names = ["A", "B"])]
    compare: Vec<String>,
    /// Bootstrap resamples of --compare
    #[arg(long, default_value_t = 2000)]
    bootstrap: usize,
    /// Seed of the bootstrap
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Tokens generated per answer
    #[arg(long, default_value_t = 32)]
    max_tokens: usize,
    /// Tokens per example for --metric loss (longer ones are cut)
    #[arg(long, default_value_t = 512)]
    max_len: usize,
    /// Include every answer (or classified record) in the JSON
    #[arg(long)]
    answers: bool,
    /// Draw FILE.png or FILE.svg (--metric classification): the ROC curve of each label
    /// against the diagonal; with --compare, per-label F1 of A and B as bars
    #[arg(long, value_name = "FILE")]
    plot: Option<PathBuf>,
    /// Print JSON (eval always does; accepted so every command takes it)
    #[arg(long)]
    json: bool,
}

/// One run's per-record outcome, for grouping and pairing.
struct Scored {
    report: Value,
    lines: Vec<usize>,
    correct: Vec<bool>,
    classified: Option<ClassificationReport>,
}

fn score(engine: &dyn Engine, adapters: &[(String, f32)], records: &[Sourced], a: &EvalArgs, metric: Metric) -> Result<Scored> {
    if metric == Metric::Classification {
        let labels = (!a.labels.is_empty()).then_some(a.labels.as_slice());
        let r = classify(engine, adapters, records, &a.data, labels, &mut |_| {})?;
        let mut v = serde_json::to_value(&r)?;
        if !a.answers {
            v.as_object_mut().expect("an object").remove("records");
        }
        let lines = r.records.iter().map(|c| c.line).collect();
        let correct = r.records.iter().map(|c| c.correct).collect();
        return Ok(Scored { report: v, lines, correct, classified: Some(r) });
    }
    let r = generation_accuracy(engine, adapters, records, &a.data, metric, a.max_tokens, &mut |_| {})?;
    let mut v = serde_json::to_value(&r)?;
    if !a.answers {
        v.as_object_mut().expect("an object").remove("answers");
    }
    Ok(Scored { report: v, lines: r.answers.iter().map(|x| x.line).collect(), correct: r.answers.iter().map(|x| x.correct).collect(), classified: None })
}

/// Record indices by the value of `field` ("<none>" where a record lacks it).
fn groups(a: &EvalArgs, field: &str, lines: &[usize]) -> Result<BTreeMap<String, Vec<usize>>> {
    let values: HashMap<usize, String> = field_values(&a.data, field)?;
    let mut g: BTreeMap<String, Vec<usize>> = BTreeMap::new();
    for (i, line) in lines.iter().enumerate() {
        g.entry(values.get(line).cloned().unwrap_or_else(|| "<none>".into())).or_default().push(i);
    }
    Ok(g)
}

/// What the records of a `serve --feedback-log` say themselves (`rating`, `corrected`):
/// per record line, its rating (a number) and whether the answer was corrected. Empty when
/// no record has either field.
fn feedback_fields(path: &std::path::Path) -> Result<HashMap<usize, (Option<f64>, Option<bool>)>> {
    let ratings = edgelora::train::data::field_values(path, "rating")?;
    let corrected = edgelora::train::data::field_values(path, "corrected")?;
    let mut out: HashMap<usize, (Option<f64>, Option<bool>)> = HashMap::new();
    for (line, v) in ratings {
        out.entry(line).or_default().0 = v.parse().ok();
    }
    for (line, v) in corrected {
        out.entry(line).or_default().1 = v.parse().ok();
    }
    Ok(out)
}

/// A group's feedback: records rated, their mean rating, records whose answer was corrected.
fn feedback_summary(fb: &HashMap<usize, (Option<f64>, Option<bool>)>, lines: &[usize], ix: &[usize]) -> Value {
    let of: Vec<&(Option<f64>, Option<bool>)> = ix.iter().filter_map(|&i| fb.get(&lines[i])).collect();
    let ratings: Vec<f64> = of.iter().filter_map(|f| f.0).collect();
    let corrected = of.iter().filter(|f| f.1 == Some(true)).count();
    json!({
        "rated": ratings.len(),
        "mean_rating": (!ratings.is_empty()).then(|| ratings.iter().sum::<f64>() / ratings.len() as f64),
        "corrected": corrected,
        "corrected_share": corrected as f64 / ix.len().max(1) as f64,
    })
}

/// A group's figures: n and accuracy, plus the classification metrics where there are some.
fn group_summary(s: &Scored, ix: &[usize]) -> Result<Value> {
    if let Some(c) = &s.classified {
        return Ok(serde_json::to_value(c.metrics_of(ix))?);
    }
    let correct = ix.iter().filter(|&&i| s.correct[i]).count();
    Ok(json!({ "n": ix.len(), "correct": correct, "accuracy": correct as f64 / ix.len().max(1) as f64 }))
}

pub fn run(a: EvalArgs) -> Result<()> {
    let metric: Metric = a.metric.parse().map_err(|e| anyhow::anyhow!("--metric: {e}"))?;
    let _always_json = a.json;
    if !a.labels.is_empty() && metric != Metric::Classification {
        anyhow::bail!("--labels needs --metric classification");
    }
    if let Some(p) = &a.plot {
        if metric != Metric::Classification {
            anyhow::bail!("--plot draws ROC curves and F1 bars: it needs --metric classification");
        }
        super::plot::check_path(p)?;
    }
    if metric == Metric::Loss && (a.by.is_some() || !a.compare.is_empty()) {
        anyhow::bail!("--by and --compare need a per-record metric (exact, first-word, contains or classification), not loss");
    }
    let t0 = std::time::Instant::now();
    let mut out = if !a.compare.is_empty() {
        compare(&a, metric)?
    } else if metric == Metric::Loss {
        let base = GgufFile::open(&a.model.model).with_context(|| format!("reading {}", a.model.model.display()))?;
        let vocab = edgelora::engine::Vocabulary::open(&a.model.model)?;
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
        let s = score(loaded.engine(), &loaded.adapters, &records, &a, metric)?;
        if let (Some(p), Some(c)) = (&a.plot, &s.classified) {
            let name = a.model.adapters.join(" + ");
            plot_roc(p, c, &format!("ROC, {}", if name.is_empty() { "base model".into() } else { name }))?;
        }
        let mut v = s.report.clone();
        if let Some(field) = &a.by {
            let mut by = serde_json::Map::new();
            let fb = feedback_fields(&a.data)?;
            for (k, ix) in groups(&a, field, &s.lines)? {
                let mut g = group_summary(&s, &ix)?;
                if !fb.is_empty() {
                    g["feedback"] = feedback_summary(&fb, &s.lines, &ix);
                }
                by.insert(k, g);
            }
            v.as_object_mut().expect("an object").insert("by".into(), json!({ "field": field, "groups": by }));
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

/// ROC curves of a classification report, one per label that has records with and without it.
fn plot_roc(path: &std::path::Path, c: &ClassificationReport, title: &str) -> Result<()> {
    let mut curves = Vec::new();
    for (l, m) in c.metrics.labels.iter().enumerate() {
        let scores: Vec<f64> = c.records.iter().map(|r| r.scores[l]).collect();
        let positive: Vec<bool> = c.records.iter().map(|r| r.expected == m.label).collect();
        if let (Some(points), Some(auc)) = (roc_curve(&scores, &positive), m.auc) {
            curves.push(super::plot::RocCurve { label: m.label.clone(), points, auc });
        }
    }
    super::plot::roc_curves(path, &curves, title)?;
    eprintln!("wrote {}", path.display());
    Ok(())
}

/// `--compare A B`: both arms on the same records, paired statistics of B − A.
fn compare(a: &EvalArgs, metric: Metric) -> Result<Value> {
    if !a.model.adapters.is_empty() {
        anyhow::bail!("--compare takes its adapters itself (A and B); drop --adapter");
    }
    if a.model.merge {
        anyhow::bail!("--compare applies A and B on the fly; drop --merge");
    }
    let records = read_jsonl(&a.data)?;
    let loaded = a.model.load()?;
    let engine = loaded.engine();
    let mut arms = Vec::new();
    for (name, arg) in ["A", "B"].iter().zip(&a.compare) {
        let set = if arg == "base" {
            Vec::new()
        } else {
            let (path, scale) = parse_adapter_arg(arg)?;
            load_adapter(engine, name, &path, a.model.lenient)?;
            vec![(name.to_string(), scale)]
        };
        let mut s = score(engine, &set, &records, a, metric).with_context(|| format!("evaluating {name} ({arg})"))?;
        s.report.as_object_mut().expect("an object").insert("adapter".into(), arg.clone().into());
        arms.push(s);
    }
    let (ra, rb) = (&arms[0], &arms[1]);
    if let (Some(p), Some(ca), Some(cb)) = (&a.plot, &ra.classified, &rb.classified) {
        let labels: Vec<String> = ca.metrics.labels.iter().map(|l| l.label.clone()).collect();
        let f1 = |c: &ClassificationReport| c.metrics.labels.iter().map(|l| l.f1).collect::<Vec<f64>>();
        let (fa, fb) = (f1(ca), f1(cb));
        let (na, nb) = (format!("A: {}", a.compare[0]), format!("B: {}", a.compare[1]));
        super::plot::f1_bars(p, &labels, [(&na, &fa), (&nb, &fb)], "per-label F1, A vs B")?;
        eprintln!("wrote {}", p.display());
    }
    let n = ra.correct.len();
    let a_only = (0..n).filter(|&i| ra.correct[i] && !rb.correct[i]).count();
    let b_only = (0..n).filter(|&i| !ra.correct[i] && rb.correct[i]).count();
    let acc = |s: &Scored, ix: &[usize]| ix.iter().filter(|&&i| s.correct[i]).count() as f64 / ix.len().max(1) as f64;
    let all: Vec<usize> = (0..n).collect();
    let ci = paired_bootstrap(n, a.bootstrap, a.seed, |ix| acc(rb, ix) - acc(ra, ix));
    let mut difference = json!({ "accuracy": { "b_minus_a": acc(rb, &all) - acc(ra, &all), "ci95": [ci.lo, ci.hi] } });
    if let (Some(ca), Some(cb)) = (&ra.classified, &rb.classified) {
        let f1 = |c: &ClassificationReport, ix: &[usize]| c.metrics_of(ix).macro_f1;
        let ci = paired_bootstrap(n, a.bootstrap, a.seed, |ix| f1(cb, ix) - f1(ca, ix));
        difference["macro_f1"] = json!({ "b_minus_a": cb.metrics.macro_f1 - ca.metrics.macro_f1, "ci95": [ci.lo, ci.hi] });
    }
    let mut out = json!({
        "a": ra.report,
        "b": rb.report,
        "n": n,
        "difference": difference,
        "mcnemar": { "a_only": a_only, "b_only": b_only, "p_value": mcnemar_exact(a_only, b_only) },
        "bootstrap": { "reps": a.bootstrap, "seed": a.seed },
    });
    if let Some(field) = &a.by {
        let mut by = serde_json::Map::new();
        let fb = feedback_fields(&a.data)?;
        for (k, ix) in groups(a, field, &ra.lines)? {
            let mut g = json!({ "a": group_summary(ra, &ix)?, "b": group_summary(rb, &ix)? });
            if !fb.is_empty() {
                g["feedback"] = feedback_summary(&fb, &ra.lines, &ix);
            }
            by.insert(k, g);
        }
        out["by"] = json!({ "field": field, "groups": by });
    }
    Ok(out)
}
