//! Evaluation: generation accuracy (greedy answers against the records' expected
//! outputs) on any engine, classification by the probabilities of the label words at the
//! answer position (one forward per record; metrics in [`super::metrics`]), and loss /
//! perplexity on the expected outputs through the training graph.

use serde::Serialize;

use super::data::{pack_shared, Example, Sourced};
use super::frozen::FrozenStates;
use super::metrics::{classification, percentile, ClassificationMetrics};
use crate::adapter::{compose, ComposeMethod, LoraAdapter};
use crate::engine::{Engine, GenerateRequest, Prompt, SamplingParams};
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
    /// The answer's first word is a label; the model's choice is the label whose first
    /// token is most probable at the answer position.
    Classification,
}

impl std::str::FromStr for Metric {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "exact" => Ok(Metric::Exact),
            "first-word" => Ok(Metric::FirstWord),
            "contains" => Ok(Metric::Contains),
            "loss" => Ok(Metric::Loss),
            "classification" => Ok(Metric::Classification),
            _ => Err(format!("{s:?} is not exact, first-word, contains, loss or classification")),
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
        Metric::Loss | Metric::Classification => false,
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

/// The label an answer stands for: its first word without the punctuation around it,
/// case kept ("Approved." → "Approved"); empty when the answer has no word.
pub fn label_word(answer: &str) -> &str {
    answer.split_whitespace().next().unwrap_or("").trim_matches(|c: char| !c.is_alphanumeric())
}

/// A label and the token it is scored by.
#[derive(Debug, Clone, Serialize)]
pub struct LabelToken {
    pub label: String,
    pub token: i32,
    /// The token's text.
    pub piece: String,
}

/// One record scored by [`classify`].
#[derive(Debug, Clone, Serialize)]
pub struct Classified {
    pub line: usize,
    pub expected: String,
    pub predicted: String,
    pub correct: bool,
    /// Probability of each label (in the report's label order), renormalized over the labels.
    pub scores: Vec<f64>,
    /// The labels' share of the model's whole next-token probability.
    pub label_mass: f64,
    /// Tokenize + one forward, milliseconds.
    pub ms: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct ClassificationReport {
    pub label_tokens: Vec<LabelToken>,
    #[serde(flatten)]
    pub metrics: ClassificationMetrics,
    pub latency_ms_p50: f64,
    pub latency_ms_p95: f64,
    /// Mean of the records' `label_mass`: low means the model would mostly answer
    /// something else than a label.
    pub mean_label_mass: f64,
    pub records: Vec<Classified>,
}

impl ClassificationReport {
    /// The metrics of the records at `indices` (into `records`), e.g. one scenario's.
    pub fn metrics_of(&self, indices: &[usize]) -> ClassificationMetrics {
        let names: Vec<String> = self.label_tokens.iter().map(|l| l.label.clone()).collect();
        let pos = |s: &str| names.iter().position(|n| n == s).expect("a record's labels are the report's");
        let expected: Vec<usize> = indices.iter().map(|&i| pos(&self.records[i].expected)).collect();
        let predicted: Vec<usize> = indices.iter().map(|&i| pos(&self.records[i].predicted)).collect();
        let scores: Vec<Vec<f64>> = indices.iter().map(|&i| self.records[i].scores.clone()).collect();
        classification(&names, &expected, &predicted, Some(&scores))
    }
}

/// Classifies every record with one forward: the expected label is the first word of the
/// record's answer ([`label_word`]); `labels` (default: the distinct expected labels,
/// sorted) are each scored by the first token of the label as the answers write it (with
/// the leading whitespace of the first record's answer), softmax over the labels' logits
/// at the answer position. Labels must start with distinct tokens.
pub fn classify(engine: &dyn Engine, adapters: &[(String, f32)], records: &[Sourced], path: &std::path::Path, labels: Option<&[String]>, on_record: &mut dyn FnMut(&Classified)) -> Result<ClassificationReport, Error> {
    let data_err = |reason: String| -> Error { TrainError::DataFile { path: path.to_path_buf(), reason }.into() };
    let mut items: Vec<(usize, Prompt, String)> = Vec::with_capacity(records.len());
    let mut lead = None;
    for r in records {
        let Some((prompt, expected)) = r.record.eval_pair() else {
            return Err(TrainError::Record { path: path.to_path_buf(), line: r.line, field: "text".into(), reason: "a {text} record has no expected answer to classify".into() }.into());
        };
        let word = label_word(&expected);
        if word.is_empty() {
            return Err(TrainError::Record { path: path.to_path_buf(), line: r.line, field: "answer".into(), reason: format!("the expected answer {expected:?} has no first word to use as its label") }.into());
        }
        lead.get_or_insert_with(|| expected[..expected.len() - expected.trim_start().len()].to_string());
        items.push((r.line, prompt, word.to_string()));
    }
    let lead = lead.unwrap_or_default();
    let names: Vec<String> = match labels {
        Some(l) => l.to_vec(),
        None => {
            let mut v: Vec<String> = items.iter().map(|(_, _, w)| w.clone()).collect();
            v.sort();
            v.dedup();
            v
        }
    };
    if names.len() < 2 {
        return Err(data_err(format!("classification needs at least two labels; got {names:?} (the answers' first words, or --labels)")));
    }
    let mut label_tokens: Vec<LabelToken> = Vec::with_capacity(names.len());
    for name in &names {
        let tokens = engine.tokenize_text(&format!("{lead}{name}"), false)?;
        let Some(&token) = tokens.first() else { return Err(data_err(format!("label {name:?} gives no token"))) };
        if let Some(other) = label_tokens.iter().find(|l| l.token == token) {
            return Err(data_err(format!(
                "labels {:?} and {name:?} both start with token {token} ({:?}): one forward cannot tell them apart; choose labels that start differently",
                other.label, other.piece
            )));
        }
        label_tokens.push(LabelToken { label: name.clone(), token, piece: engine.detokenize(&[token]) });
    }
    let find = |word: &str| names.iter().position(|n| n == word).or_else(|| names.iter().position(|n| n.eq_ignore_ascii_case(word)));
    let n_vocab = engine.n_vocab();
    let mut out = Vec::with_capacity(items.len());
    let (mut expected_ix, mut predicted_ix, mut scores) = (Vec::new(), Vec::new(), Vec::new());
    for (line, prompt, word) in items {
        let Some(e) = find(&word) else {
            return Err(TrainError::Record { path: path.to_path_buf(), line, field: "answer".into(), reason: format!("label {word:?} is not one of {names:?}") }.into());
        };
        let t0 = std::time::Instant::now();
        let tokens = engine.tokenize(&prompt)?;
        let logits = engine.logits(&tokens, adapters)?;
        let ms = t0.elapsed().as_secs_f64() * 1e3;
        if logits.len() != n_vocab {
            return Err(data_err(format!("line {line}: the engine returned {} logits for a vocabulary of {n_vocab}", logits.len())));
        }
        let max = logits.iter().fold(f32::NEG_INFINITY, |m, &x| m.max(x)) as f64;
        let lse = max + logits.iter().map(|&x| (x as f64 - max).exp()).sum::<f64>().ln();
        let label_logits: Vec<f64> = label_tokens.iter().map(|l| logits[l.token as usize] as f64).collect();
        let label_mass = label_logits.iter().map(|&x| (x - lse).exp()).sum::<f64>();
        let lmax = label_logits.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
        let exps: Vec<f64> = label_logits.iter().map(|&x| (x - lmax).exp()).collect();
        let z: f64 = exps.iter().sum();
        let s: Vec<f64> = exps.iter().map(|x| x / z).collect();
        let p = (0..s.len()).fold(0, |best, i| if s[i] > s[best] { i } else { best });
        let c = Classified { line, expected: names[e].clone(), predicted: names[p].clone(), correct: p == e, scores: s.clone(), label_mass, ms };
        on_record(&c);
        out.push(c);
        expected_ix.push(e);
        predicted_ix.push(p);
        scores.push(s);
    }
    let metrics = classification(&names, &expected_ix, &predicted_ix, Some(&scores));
    let ms: Vec<f64> = out.iter().map(|c| c.ms).collect();
    let mean_label_mass = out.iter().map(|c| c.label_mass).sum::<f64>() / out.len().max(1) as f64;
    Ok(ClassificationReport {
        label_tokens,
        metrics,
        latency_ms_p50: percentile(&ms, 50.0).unwrap_or(0.0),
        latency_ms_p95: percentile(&ms, 95.0).unwrap_or(0.0),
        mean_label_mass,
        records: out,
    })
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
/// With `frozen`, the forwards start at its layer from the states it holds for
/// `examples` (keyed by their index in the slice).
pub fn loss_sum(model: &TrainModel<f32>, params: &LoraParams<f32>, examples: &[Example], batch: usize, frozen: Option<&FrozenStates>) -> Result<(f64, usize), Error> {
    let (mut sum, mut n) = (0.0, 0usize);
    for (c, chunk) in examples.chunks(batch.max(1)).enumerate() {
        let l: Vec<f64> = scores(model, params, c * batch.max(1), chunk, frozen)?.into_iter().map(|(l, _)| l).collect();
        n += l.len();
        sum += l.iter().sum::<f64>();
    }
    Ok((sum, n))
}

/// Teacher-forced scores of examples in one forward each: the mean loss per trained token
/// and `exact`, the share of examples whose every trained token is the arg-max of its
/// logits — greedy decoding would write exactly the trained answer (its end token
/// included when the answer trains one).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, serde::Deserialize)]
pub struct Validation {
    pub n_examples: usize,
    pub loss: f64,
    pub exact: f64,
}

/// [`Validation`] of `examples` on `model` with `params`, `batch` examples at a time.
/// With `frozen`, as in [`loss_sum`].
pub fn validate(model: &TrainModel<f32>, params: &LoraParams<f32>, examples: &[Example], batch: usize, frozen: Option<&FrozenStates>) -> Result<Validation, Error> {
    let (mut sum, mut n, mut exact) = (0.0, 0usize, 0usize);
    for (c, chunk) in examples.chunks(batch.max(1)).enumerate() {
        let scores = scores(model, params, c * batch.max(1), chunk, frozen)?;
        // Targets come in example order, each example's trained tokens together.
        let mut at = 0;
        for e in chunk {
            let mine = &scores[at..at + e.n_targets()];
            at += mine.len();
            exact += usize::from(!mine.is_empty() && mine.iter().all(|&(_, hit)| hit));
            sum += mine.iter().map(|&(l, _)| l).sum::<f64>();
            n += mine.len();
        }
    }
    Ok(Validation { n_examples: examples.len(), loss: sum / n.max(1) as f64, exact: exact as f64 / examples.len().max(1) as f64 })
}

/// Per-target (loss, hit) of one chunk of examples (the first at index `first`), packed
/// with their shared prefix; from `frozen`'s layer when given.
fn scores(model: &TrainModel<f32>, params: &LoraParams<f32>, first: usize, chunk: &[Example], frozen: Option<&FrozenStates>) -> Result<Vec<(f64, bool)>, Error> {
    let refs: Vec<&Example> = chunk.iter().collect();
    let b = pack_shared(&refs);
    let start = match frozen {
        Some(f) => Some(f.start_for(model, &chunk.iter().enumerate().map(|(j, e)| (first + j, e)).collect::<Vec<_>>(), &b)?),
        None => None,
    };
    model.losses_and_hits_from(params, &b, start, 32)
}

/// Mean loss per trained token of `examples` on the base with `adapters`.
pub fn loss(base: &GgufFile, adapters: &[(&LoraAdapter, f32)], examples: &[Example], batch: usize) -> Result<LossReport, Error> {
    let config = ModelConfig::from_gguf(base)?;
    let model = TrainModel::<f32>::new(base, &config)?;
    let params = adapters_as_params(adapters)?;
    let (sum, n) = loss_sum(&model, &params, examples, batch, None)?;
    let loss = sum / n.max(1) as f64;
    Ok(LossReport { n_examples: examples.len(), n_tokens: n, loss, perplexity: loss.exp() })
}
