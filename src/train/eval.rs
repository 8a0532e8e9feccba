//! Evaluation: generation accuracy (greedy answers against the records' expected
//! outputs) on any engine, and loss / perplexity on the expected outputs through the
//! training graph.

use serde::Serialize;

use super::data::{pack, Example, Sourced};
use crate::adapter::{compose, ComposeMethod, LoraAdapter};
use crate::engine::{Engine, GenerateRequest, SamplingParams};
use crate::error::{Error, TrainError};
use crate::gguf::GgufFile;
use crate::model::config::ModelConfig;
use crate::model::grad::{LoraParam, LoraParams, TrainModel};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Metric {
    /// The answer equals the expected text (trimmed, case-insensitive).
    Exact,
    /// The first words agree (case-insensitive, punctuation stripped).
    FirstWord,
    /// The answer contains the expected text (case-insensitive).
    Contains,
    /// Mean loss (and perplexity) of the expected answers.
    Loss,
}

impl std::str::FromStr for Metric {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "exact" => Ok(Metric::Exact),
            "first-word" => Ok(Metric::FirstWord),
            "contains" => Ok(Metric::Contains),
            "loss" => Ok(Metric::Loss),
            _ => Err(format!("{s:?} is not exact, first-word, contains or loss")),
        }
    }
}

fn first_word(s: &str) -> String {
    s.split_whitespace().next().unwrap_or("").trim_matches(|c: char| !c.is_alphanumeric()).to_lowercase()
}

/// Whether `answer` is right for `expected` under `metric` (not `Loss`).
pub fn is_correct(metric: Metric, answer: &str, expected: &str) -> bool {
    match metric {
        Metric::Exact => answer.trim().to_lowercase() == expected.trim().to_lowercase(),
        Metric::FirstWord => {
            let e = first_word(expected);
            !e.is_empty() && first_word(answer) == e
        }
        Metric::Contains => answer.to_lowercase().contains(&expected.trim().to_lowercase()),
        Metric::Loss => false,
    }
}

/// One answered record.
#[derive(Debug, Clone, Serialize)]
pub struct Answer {
    pub line: usize,
    pub expected: String,
    pub answer: String,
    pub correct: bool,
}

#[derive(Debug, Clone, Serialize)]
pub struct AccuracyReport {
    pub metric: Metric,
    pub n: usize,
    pub correct: usize,
    pub accuracy: f64,
    pub answers: Vec<Answer>,
}

/// Greedy answers for every record (max `max_tokens` each) on `engine` with `adapters`.
pub fn generation_accuracy(engine: &dyn Engine, adapters: &[(String, f32)], records: &[Sourced], path: &std::path::Path, metric: Metric, max_tokens: usize, on_answer: &mut dyn FnMut(&Answer)) -> Result<AccuracyReport, Error> {
    let mut answers = Vec::with_capacity(records.len());
    for r in records {
        let Some((prompt, expected)) = r.record.eval_pair() else {
            return Err(TrainError::Record { path: path.to_path_buf(), line: r.line, field: "text".into(), reason: "a {text} record has no expected answer; use --metric loss".into() }.into());
        };
        let mut req = GenerateRequest::new(prompt);
        req.adapters = adapters.to_vec();
        req.sampling = SamplingParams { temperature: 0.0, ..SamplingParams::default() };
        req.max_tokens = max_tokens;
        let out = engine.generate(&req, &mut |_| true)?;
        let a = Answer { line: r.line, correct: is_correct(metric, &out.text, &expected), expected, answer: out.text };
        on_answer(&a);
        answers.push(a);
    }
    let correct = answers.iter().filter(|a| a.correct).count();
    Ok(AccuracyReport { metric, n: answers.len(), correct, accuracy: correct as f64 / answers.len().max(1) as f64, answers })
}

/// The adapters as training-graph parameters (several are concatenated: ranks add).
pub fn adapters_as_params(adapters: &[(&LoraAdapter, f32)]) -> Result<LoraParams<f32>, Error> {
    if adapters.is_empty() {
        return Ok(LoraParams::new());
    }
    let (cat, _) = compose(adapters, ComposeMethod::Cat)?;
    Ok(cat.tensors.into_iter().map(|(k, t)| (k, LoraParam { rank: t.rank, n_in: t.n_in, n_out: t.n_out, scale: t.scale, a: t.a, b: t.b })).collect())
}

#[derive(Debug, Clone, Serialize)]
pub struct LossReport {
    pub n_examples: usize,
    pub n_tokens: usize,
    pub loss: f64,
    pub perplexity: f64,
}

/// (Σ loss, target tokens) of `examples` on `model` with `params`, `batch` examples at a time.
pub fn loss_sum(model: &TrainModel<f32>, params: &LoraParams<f32>, examples: &[Example], batch: usize) -> Result<(f64, usize), Error> {
    let (mut sum, mut n) = (0.0, 0usize);
    for chunk in examples.chunks(batch.max(1)) {
        let refs: Vec<&Example> = chunk.iter().collect();
        let l = model.losses(params, &pack(&refs), 32)?;
        n += l.len();
        sum += l.iter().sum::<f64>();
    }
    Ok((sum, n))
}

/// Mean loss per trained token of `examples` on the base with `adapters`.
pub fn loss(base: &GgufFile, adapters: &[(&LoraAdapter, f32)], examples: &[Example], batch: usize) -> Result<LossReport, Error> {
    let config = ModelConfig::from_gguf(base)?;
    let model = TrainModel::<f32>::new(base, &config)?;
    let params = adapters_as_params(adapters)?;
    let (sum, n) = loss_sum(&model, &params, examples, batch)?;
    let loss = sum / n.max(1) as f64;
    Ok(LossReport { n_examples: examples.len(), n_tokens: n, loss, perplexity: loss.exp() })
}
