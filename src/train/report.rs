//! The data report before training (`edgelora data stats`, summarized by `train`):
//! records per format, per label (the answer's first word) and per `scenario` field,
//! token lengths, exact and near duplicates, the same input with contradicting answers,
//! and the records longer than `--max-len` with what training does to them. Also the
//! grouping behind `train --dedup` and `--balance`.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::PathBuf;

use serde::Serialize;

use super::data::{field_values, tokenize, Record, Sourced};
use super::eval::label_word;
use super::metrics::percentile;
use crate::engine::{Prompt, Vocabulary};
use crate::error::{Error, TrainError};

/// A data file and its records, as read by `read_jsonl`.
pub struct DataFile {
    pub path: PathBuf,
    pub records: Vec<Sourced>,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct LengthStats {
    pub min: usize,
    pub p50: f64,
    pub p95: f64,
    pub max: usize,
    pub mean: f64,
}

/// A record longer than `--max-len` tokens.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct OverLong {
    /// `file:line`.
    pub at: String,
    pub tokens: usize,
    /// `truncated` (cut to max-len, some answer tokens remain trained) or `refused`
    /// (nothing trained remains: `train` stops with an error naming this line).
    pub outcome: &'static str,
}

/// One input with more than one answer.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Contradiction {
    /// The input (prompt) as the first record writes it, cut to 160 characters.
    pub input: String,
    /// (`file:line`, answer) of every record with this input.
    pub answers: Vec<(String, String)>,
}

/// A record that cannot be tokenized for training.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Unusable {
    pub at: String,
    pub reason: String,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct DataReport {
    pub files: Vec<String>,
    pub records: usize,
    /// `alpaca`, `prompt-completion`, `messages`, `text`.
    pub formats: BTreeMap<String, usize>,
    /// The answers' first words ([`label_word`]); records without an answer are not counted.
    pub labels: BTreeMap<String, usize>,
    /// Values of the records' `scenario` field (empty when no record has one; `<none>` for
    /// the records without it when some have it).
    pub scenarios: BTreeMap<String, usize>,
    /// Tokens per record (the training tokenization, before any cut); `None` without a model.
    pub tokens: Option<LengthStats>,
    pub max_len: usize,
    pub over_max_len: Vec<OverLong>,
    pub unusable: Vec<Unusable>,
    /// Groups of identical records (`file:line` each); `--dedup` keeps the first.
    pub exact_duplicates: Vec<Vec<String>>,
    /// Groups of records equal after lower-casing and dropping punctuation and spacing,
    /// but not identical; `--dedup` keeps the first.
    pub near_duplicates: Vec<Vec<String>>,
    /// The same (normalized) input with different (normalized) answers: reported, never
    /// dropped or kept silently — `--dedup` leaves them in.
    pub contradictions: Vec<Contradiction>,
}

fn format_name(r: &Record) -> &'static str {
    match r {
        Record::Alpaca { .. } => "alpaca",
        Record::PromptCompletion { .. } => "prompt-completion",
        Record::Messages(_) => "messages",
        Record::Text(_) => "text",
    }
}

fn prompt_text(p: &Prompt) -> String {
    match p {
        Prompt::Text(t) => t.clone(),
        Prompt::Chat(m) => m.iter().map(|m| format!("{}: {}", m.role, m.content)).collect::<Vec<_>>().join("\n"),
        Prompt::Tokens(t) => format!("{t:?}"),
    }
}

/// Lower case, alphanumeric runs joined by one space.
fn normalize(s: &str) -> String {
    s.split(|c: char| !c.is_alphanumeric()).filter(|w| !w.is_empty()).map(str::to_lowercase).collect::<Vec<_>>().join(" ")
}

/// (input, answer) of a record; a `{text}` record is all input and no answer.
fn parts(r: &Record) -> (String, Option<String>) {
    match r.eval_pair() {
        Some((p, a)) => (prompt_text(&p), Some(a)),
        None => match r {
            Record::Text(t) => (t.clone(), None),
            // A messages record without an assistant turn.
            other => (format!("{other:?}"), None),
        },
    }
}

/// A record's place: (file index, record index in that file).
type Ix = (usize, usize);

fn at(files: &[DataFile], (f, r): Ix) -> String {
    format!("{}:{}", files[f].path.display(), files[f].records[r].line)
}

/// Groups of the records sharing `key` (two or more), each in file order.
fn groups_by(files: &[DataFile], mut key: impl FnMut(&Record) -> String) -> Vec<Vec<Ix>> {
    let mut by: HashMap<String, Vec<Ix>> = HashMap::new();
    let mut order = Vec::new();
    for (f, file) in files.iter().enumerate() {
        for (r, rec) in file.records.iter().enumerate() {
            let k = key(&rec.record);
            let e = by.entry(k.clone()).or_default();
            if e.is_empty() {
                order.push(k);
            }
            e.push((f, r));
        }
    }
    order.into_iter().filter_map(|k| by.remove(&k)).filter(|g| g.len() > 1).collect()
}

impl DataReport {
    /// The report of `files`; with `rt`, token lengths and the records over `max_len` (as
    /// training tokenizes them, `train_on_prompt` deciding what is trained).
    pub fn build(files: &[DataFile], rt: Option<&Vocabulary>, max_len: usize, train_on_prompt: bool) -> Result<DataReport, Error> {
        let mut formats = BTreeMap::new();
        let mut labels = BTreeMap::new();
        let mut scenarios = BTreeMap::new();
        let mut lengths = Vec::new();
        let (mut over_max_len, mut unusable) = (Vec::new(), Vec::new());
        for (f, file) in files.iter().enumerate() {
            let scen = field_values(&file.path, "scenario")?;
            for (r, rec) in file.records.iter().enumerate() {
                *formats.entry(format_name(&rec.record).to_string()).or_insert(0) += 1;
                if let (_, Some(answer)) = parts(&rec.record) {
                    let w = label_word(&answer);
                    *labels.entry(if w.is_empty() { "<empty>".to_string() } else { w.to_string() }).or_insert(0) += 1;
                }
                if !scen.is_empty() {
                    *scenarios.entry(scen.get(&rec.line).cloned().unwrap_or_else(|| "<none>".into())).or_insert(0) += 1;
                }
                let Some(rt) = rt else { continue };
                match tokenize(rt, rec, &file.path, usize::MAX, train_on_prompt) {
                    Ok(ex) => {
                        lengths.push(ex.tokens.len());
                        if ex.tokens.len() > max_len {
                            let kept_trained = max_len >= 2 && ex.trained[1..max_len].iter().any(|&t| t);
                            over_max_len.push(OverLong { at: at(files, (f, r)), tokens: ex.tokens.len(), outcome: if kept_trained { "truncated" } else { "refused" } });
                        }
                    }
                    Err(e) => unusable.push(Unusable { at: at(files, (f, r)), reason: e.to_string() }),
                }
            }
        }
        let tokens = (!lengths.is_empty()).then(|| {
            let v: Vec<f64> = lengths.iter().map(|&n| n as f64).collect();
            LengthStats {
                min: *lengths.iter().min().expect("non-empty"),
                p50: percentile(&v, 50.0).expect("non-empty"),
                p95: percentile(&v, 95.0).expect("non-empty"),
                max: *lengths.iter().max().expect("non-empty"),
                mean: v.iter().sum::<f64>() / v.len() as f64,
            }
        });
        let exact = groups_by(files, |r| format!("{r:?}"));
        let near: Vec<Vec<Ix>> = groups_by(files, |r| {
            let (i, a) = parts(r);
            format!("{}\u{1}{}", normalize(&i), normalize(a.as_deref().unwrap_or("")))
        })
        .into_iter()
        // A near group made only of identical records is already an exact group.
        .filter(|g| g.iter().map(|&(f, r)| format!("{:?}", files[f].records[r].record)).collect::<HashSet<_>>().len() > 1)
        .collect();
        let mut contradictions = Vec::new();
        for g in groups_by(files, |r| normalize(&parts(r).0)) {
            let answers: Vec<(Ix, String)> = g.iter().filter_map(|&ix| parts(&files[ix.0].records[ix.1].record).1.map(|a| (ix, a))).collect();
            if answers.iter().map(|(_, a)| normalize(a)).collect::<HashSet<_>>().len() > 1 {
                let input: String = parts(&files[g[0].0].records[g[0].1].record).0.chars().take(160).collect();
                contradictions.push(Contradiction { input, answers: answers.into_iter().map(|(ix, a)| (at(files, ix), a)).collect() });
            }
        }
        let names = |gs: &[Vec<Ix>]| gs.iter().map(|g| g.iter().map(|&ix| at(files, ix)).collect()).collect();
        Ok(DataReport {
            files: files.iter().map(|f| f.path.display().to_string()).collect(),
            records: files.iter().map(|f| f.records.len()).sum(),
            formats,
            labels,
            scenarios,
            tokens,
            max_len,
            over_max_len,
            unusable,
            exact_duplicates: names(&exact),
            near_duplicates: names(&near),
            contradictions,
        })
    }

    /// One paragraph for `train`'s stderr.
    pub fn summary(&self) -> String {
        let dups = |g: &[Vec<String>]| g.iter().map(|g| g.len() - 1).sum::<usize>();
        let mut s = format!("data: {} records ({})", self.records, self.formats.iter().map(|(k, v)| format!("{k} {v}")).collect::<Vec<_>>().join(", "));
        if !self.labels.is_empty() && self.labels.len() <= 12 {
            s += &format!("; labels {}", self.labels.iter().map(|(k, v)| format!("{k} {v}")).collect::<Vec<_>>().join(", "));
        }
        if !self.scenarios.is_empty() {
            s += &format!("; scenarios {}", self.scenarios.iter().map(|(k, v)| format!("{k} {v}")).collect::<Vec<_>>().join(", "));
        }
        if let Some(t) = &self.tokens {
            s += &format!("; tokens min {} p50 {:.0} p95 {:.0} max {}", t.min, t.p50, t.p95, t.max);
        }
        s += &format!(
            "; {} exact and {} near duplicates, {} contradicting inputs, {} records over --max-len {} ({} truncated, {} refused)",
            dups(&self.exact_duplicates),
            dups(&self.near_duplicates),
            self.contradictions.len(),
            self.over_max_len.len(),
            self.max_len,
            self.over_max_len.iter().filter(|o| o.outcome == "truncated").count(),
            self.over_max_len.iter().filter(|o| o.outcome == "refused").count(),
        );
        for c in self.contradictions.iter().take(3) {
            s += &format!("\n  contradiction: {:?} answered {}", c.input.chars().take(60).collect::<String>(), c.answers.iter().map(|(at, a)| format!("{a:?} ({at})")).collect::<Vec<_>>().join(", "));
        }
        s
    }
}

/// Indices (into `records`) that `--dedup` drops: every exact or near duplicate after the
/// first of its group. Records that contradict each other differ, so none is dropped.
pub fn duplicates_to_drop(records: &[Sourced]) -> HashSet<usize> {
    let mut seen_exact = HashSet::new();
    let mut seen_near = HashSet::new();
    let mut drop = HashSet::new();
    for (i, r) in records.iter().enumerate() {
        let (input, answer) = parts(&r.record);
        let near = format!("{}\u{1}{}", normalize(&input), normalize(answer.as_deref().unwrap_or("")));
        let fresh_exact = seen_exact.insert(format!("{:?}", r.record));
        let fresh_near = seen_near.insert(near);
        if !fresh_exact || !fresh_near {
            drop.insert(i);
        }
    }
    drop
}

/// What `--balance` groups by.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BalanceBy {
    /// The answer's first word.
    Label,
    /// The record's `scenario` field (`<none>` without one).
    Scenario,
}

/// `--balance label|scenario[=RATIOS]`: RATIOS as `name:weight,…` or as positional
/// `w1:w2:…` over the group names in sorted order; default equal shares.
#[derive(Debug, Clone, PartialEq)]
pub struct BalanceSpec {
    pub by: BalanceBy,
    pub ratios: Option<String>,
}

impl std::str::FromStr for BalanceSpec {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self, Error> {
        let (by, ratios) = match s.split_once('=') {
            Some((b, r)) => (b, Some(r.to_string())),
            None => (s, None),
        };
        let by = match by {
            "label" => BalanceBy::Label,
            "scenario" => BalanceBy::Scenario,
            other => return Err(TrainError::BadOption { option: "--balance".into(), reason: format!("{other:?} is not label or scenario (label|scenario[=RATIOS])") }.into()),
        };
        Ok(BalanceSpec { by, ratios })
    }
}

impl BalanceSpec {
    /// (group names with their shares summing to 1, each record's group index).
    pub fn groups(&self, path: &std::path::Path, records: &[Sourced]) -> Result<(Vec<(String, f64)>, Vec<usize>), Error> {
        let bad = |reason: String| -> Error { TrainError::BadOption { option: "--balance".into(), reason }.into() };
        let scen = if self.by == BalanceBy::Scenario { field_values(path, "scenario")? } else { HashMap::new() };
        let key_of = |r: &Sourced| -> String {
            match self.by {
                BalanceBy::Label => parts(&r.record).1.map(|a| label_word(&a).to_string()).unwrap_or_default(),
                BalanceBy::Scenario => scen.get(&r.line).cloned().unwrap_or_else(|| "<none>".into()),
            }
        };
        let keys: Vec<String> = records.iter().map(key_of).collect();
        let mut names: Vec<String> = keys.iter().cloned().collect::<std::collections::BTreeSet<_>>().into_iter().collect();
        if names.iter().any(String::is_empty) {
            return Err(bad("some records have no answer (label) to balance by".into()));
        }
        let weights: Vec<f64> = match &self.ratios {
            None => vec![1.0; names.len()],
            Some(r) if r.contains(',') || names.iter().any(|n| r.starts_with(&format!("{n}:"))) => {
                let mut w = vec![f64::NAN; names.len()];
                for part in r.split(',') {
                    let (n, v) = part.rsplit_once(':').ok_or_else(|| bad(format!("{part:?}: expected NAME:WEIGHT")))?;
                    let i = names.iter().position(|x| x == n).ok_or_else(|| bad(format!("{n:?} is not one of the groups {names:?}")))?;
                    w[i] = v.trim().parse().map_err(|_| bad(format!("{part:?}: {v:?} is not a number")))?;
                }
                if let Some(i) = w.iter().position(|x| x.is_nan()) {
                    return Err(bad(format!("no weight for group {:?} (groups: {names:?})", names[i])));
                }
                w
            }
            Some(r) => {
                let w: Vec<f64> = r.split(':').map(|v| v.trim().parse::<f64>().map_err(|_| bad(format!("{v:?} in {r:?} is not a number")))).collect::<Result<_, _>>()?;
                if w.len() != names.len() {
                    return Err(bad(format!("{} weights for {} groups {names:?} (sorted)", w.len(), names.len())));
                }
                w
            }
        };
        if weights.iter().any(|w| !(w.is_finite() && *w >= 0.0)) || weights.iter().sum::<f64>() <= 0.0 {
            return Err(bad(format!("weights {weights:?} must be finite, ≥ 0 and not all 0")));
        }
        let total: f64 = weights.iter().sum();
        let of_record = keys.iter().map(|k| names.iter().position(|n| n == k).expect("a key is a name")).collect();
        let shares = names.drain(..).zip(weights).map(|(n, w)| (n, w / total)).collect();
        Ok((shares, of_record))
    }
}
