//! Training data: JSONL records in four shapes, rendered and tokenized with the model's
//! own vocabulary and chat template, with the loss mask.
//!
//! | shape | rendered as | loss on |
//! |---|---|---|
//! | `{instruction, input?, output}` (Alpaca) | a chat: user = instruction (+ blank line + input), assistant = output | the assistant's turn |
//! | `{prompt, completion}` | plain text prompt + completion + EOS | completion + EOS |
//! | `{messages: [{role, content}]}` | the model's chat template | every assistant turn |
//! | `{text}` | plain text + EOS | everything |
//!
//! "Assistant turn" includes the template's end-of-turn marker, so the model learns to stop.

use std::path::{Path, PathBuf};

use serde_json::{Map, Value};

use crate::engine::{ChatMessage, Prompt, Vocabulary};
use crate::error::{Error, TrainError};
use crate::model::grad::Batch;

/// One training record as read.
#[derive(Debug, Clone, PartialEq)]
pub enum Record {
    Alpaca { instruction: String, input: String, output: String },
    PromptCompletion { prompt: String, completion: String },
    Messages(Vec<ChatMessage>),
    Text(String),
}

/// A record with where it came from (for errors).
#[derive(Debug, Clone, PartialEq)]
pub struct Sourced {
    pub record: Record,
    pub line: usize,
}

/// A tokenized example: `tokens`, and for each token whether predicting it is trained.
#[derive(Debug, Clone, PartialEq)]
pub struct Example {
    pub tokens: Vec<i32>,
    pub trained: Vec<bool>,
}

impl Example {
    /// Number of positions with a loss (targets).
    pub fn n_targets(&self) -> usize {
        self.trained.iter().skip(1).filter(|&&t| t).count()
    }
}

fn field(path: &Path, line: usize, field: &str, reason: impl Into<String>) -> Error {
    TrainError::Record { path: path.to_path_buf(), line, field: field.into(), reason: reason.into() }.into()
}

fn string_field(obj: &Map<String, Value>, key: &str, path: &Path, line: usize, required: bool) -> Result<String, Error> {
    match obj.get(key) {
        Some(Value::String(s)) => Ok(s.clone()),
        Some(Value::Null) | None if !required => Ok(String::new()),
        None | Some(Value::Null) => Err(field(path, line, key, "missing (expected a string)")),
        Some(other) => Err(field(path, line, key, format!("expected a string, found {}", kind(other)))),
    }
}

fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// Parses one JSON line (1-based `line` for errors).
pub fn parse_record(text: &str, path: &Path, line: usize) -> Result<Record, Error> {
    let v: Value = serde_json::from_str(text).map_err(|e| field(path, line, "<json>", format!("not valid JSON: {e}")))?;
    let Value::Object(obj) = v else { return Err(field(path, line, "<json>", format!("expected an object, found {}", kind(&v)))) };
    if obj.contains_key("messages") {
        let Some(Value::Array(items)) = obj.get("messages") else { return Err(field(path, line, "messages", "expected an array of {role, content}")) };
        let mut msgs = Vec::with_capacity(items.len());
        for (i, m) in items.iter().enumerate() {
            let f = format!("messages[{i}]");
            let Value::Object(m) = m else { return Err(field(path, line, &f, format!("expected an object, found {}", kind(m)))) };
            let role = string_field(m, "role", path, line, true).map_err(|_| field(path, line, &format!("{f}.role"), "missing or not a string"))?;
            if !["system", "user", "assistant"].contains(&role.as_str()) {
                return Err(field(path, line, &format!("{f}.role"), format!("{role:?} is not system, user or assistant")));
            }
            let content = string_field(m, "content", path, line, true).map_err(|_| field(path, line, &format!("{f}.content"), "missing or not a string"))?;
            msgs.push(ChatMessage { role, content });
        }
        if !msgs.iter().any(|m| m.role == "assistant") {
            return Err(field(path, line, "messages", "no assistant message (nothing to learn)"));
        }
        return Ok(Record::Messages(msgs));
    }
    if obj.contains_key("instruction") || obj.contains_key("output") {
        return Ok(Record::Alpaca {
            instruction: string_field(&obj, "instruction", path, line, true)?,
            input: string_field(&obj, "input", path, line, false)?,
            output: string_field(&obj, "output", path, line, true)?,
        });
    }
    if obj.contains_key("prompt") || obj.contains_key("completion") {
        return Ok(Record::PromptCompletion { prompt: string_field(&obj, "prompt", path, line, true)?, completion: string_field(&obj, "completion", path, line, true)? });
    }
    if obj.contains_key("text") {
        return Ok(Record::Text(string_field(&obj, "text", path, line, true)?));
    }
    let keys: Vec<&str> = obj.keys().map(String::as_str).collect();
    Err(field(path, line, "<record>", format!("keys {keys:?} match no format: expected {{instruction, input, output}}, {{prompt, completion}}, {{messages}} or {{text}}")))
}

/// Reads a JSONL file (blank lines skipped).
pub fn read_jsonl(path: &Path) -> Result<Vec<Sourced>, Error> {
    let text = std::fs::read_to_string(path).map_err(|e| TrainError::DataFile { path: path.to_path_buf(), reason: e.to_string() })?;
    let mut out = Vec::new();
    for (i, l) in text.lines().enumerate() {
        if l.trim().is_empty() {
            continue;
        }
        out.push(Sourced { record: parse_record(l, path, i + 1)?, line: i + 1 });
    }
    if out.is_empty() {
        return Err(TrainError::DataFile { path: path.to_path_buf(), reason: "no records".into() }.into());
    }
    Ok(out)
}

/// Each record's value of its top-level field `field`, by line number (as [`read_jsonl`]
/// numbers them): a string as is, any other JSON value as its JSON text. Records without
/// the field are absent from the map. For splitting metrics by a field (`eval --by`).
pub fn field_values(path: &Path, field_name: &str) -> Result<std::collections::HashMap<usize, String>, Error> {
    let text = std::fs::read_to_string(path).map_err(|e| TrainError::DataFile { path: path.to_path_buf(), reason: e.to_string() })?;
    let mut out = std::collections::HashMap::new();
    for (i, l) in text.lines().enumerate() {
        if l.trim().is_empty() {
            continue;
        }
        let v: Value = serde_json::from_str(l).map_err(|e| field(path, i + 1, "<record>", format!("not JSON: {e}")))?;
        match v.get(field_name) {
            Some(Value::String(s)) => {
                out.insert(i + 1, s.clone());
            }
            Some(other) => {
                out.insert(i + 1, other.to_string());
            }
            None => {}
        }
    }
    Ok(out)
}

/// sha256 (hex) of files' bytes, in order: the data fingerprint in manifests.
pub fn fingerprint(paths: &[&Path]) -> Result<String, Error> {
    use sha2::{Digest, Sha256};
    let mut h = Sha256::new();
    for p in paths {
        let bytes = std::fs::read(p).map_err(|e| TrainError::DataFile { path: p.to_path_buf(), reason: e.to_string() })?;
        h.update((bytes.len() as u64).to_le_bytes());
        h.update(&bytes);
    }
    Ok(h.finalize().iter().map(|b| format!("{b:02x}")).collect())
}

fn alpaca_user(instruction: &str, input: &str) -> String {
    if input.is_empty() {
        instruction.to_string()
    } else {
        format!("{instruction}\n\n{input}")
    }
}

impl Record {
    /// (prompt, expected answer) for generation metrics; `None` for `{text}` records.
    pub fn eval_pair(&self) -> Option<(Prompt, String)> {
        match self {
            Record::Alpaca { instruction, input, output } => Some((Prompt::Chat(vec![ChatMessage::new("user", alpaca_user(instruction, input))]), output.clone())),
            Record::PromptCompletion { prompt, completion } => Some((Prompt::Text(prompt.clone()), completion.clone())),
            Record::Messages(m) => {
                let last = m.iter().rposition(|m| m.role == "assistant")?;
                Some((Prompt::Chat(m[..last].to_vec()), m[last].content.clone()))
            }
            Record::Text(_) => None,
        }
    }

    /// Text segments in order with whether each is trained.
    fn segments(&self, rt: &Vocabulary) -> Result<Vec<(String, bool)>, Error> {
        let eos = || rt.eos_piece();
        Ok(match self {
            Record::Text(t) => vec![(format!("{t}{}", eos()), true)],
            Record::PromptCompletion { prompt, completion } => vec![(prompt.clone(), false), (format!("{completion}{}", eos()), true)],
            Record::Alpaca { instruction, input, output } => chat_segments(rt, &[ChatMessage::new("user", alpaca_user(instruction, input)), ChatMessage::new("assistant", output.clone())])?,
            Record::Messages(m) => chat_segments(rt, m)?,
        })
    }
}

/// Splits a rendered chat into segments: each assistant message's span (its content and
/// the template's end-of-turn text) trained, everything else not.
fn chat_segments(rt: &Vocabulary, msgs: &[ChatMessage]) -> Result<Vec<(String, bool)>, Error> {
    let mut out = Vec::new();
    let mut done = String::new();
    for (i, m) in msgs.iter().enumerate() {
        if m.role != "assistant" {
            continue;
        }
        let prefix = rt.render_chat_with(&msgs[..i], true)?;
        let full = rt.render_chat_with(&msgs[..=i], false)?;
        let (Some(before), Some(span)) = (prefix.strip_prefix(done.as_str()), full.strip_prefix(prefix.as_str())) else {
            return Err(crate::error::EngineError::ChatTemplate("the chat template does not render conversations incrementally; cannot find the assistant turns".into()).into());
        };
        out.push((before.to_string(), false));
        out.push((span.to_string(), true));
        done = full;
    }
    let all = rt.render_chat_with(msgs, false)?;
    if let Some(rest) = all.strip_prefix(done.as_str()) {
        if !rest.is_empty() {
            out.push((rest.to_string(), false));
        }
    }
    Ok(out)
}

/// Tokenizes a record: segments one by one (the first with the model's BOS), truncated
/// to `max_len` tokens. Errors (naming the line) when no trained token survives.
pub fn tokenize(rt: &Vocabulary, rec: &Sourced, path: &Path, max_len: usize, train_on_prompt: bool) -> Result<Example, Error> {
    let mut ex = Example { tokens: Vec::new(), trained: Vec::new() };
    for (i, (text, trained)) in rec.record.segments(rt)?.iter().enumerate() {
        let t = rt.tokenize_text(text, i == 0)?;
        ex.trained.extend(std::iter::repeat_n(*trained || train_on_prompt, t.len()));
        ex.tokens.extend(t);
    }
    ex.tokens.truncate(max_len);
    ex.trained.truncate(max_len);
    if ex.tokens.len() < 2 || ex.n_targets() == 0 {
        return Err(field(path, rec.line, "<record>", format!("no trained token within the first {max_len} tokens (raise --max-len)")));
    }
    Ok(ex)
}

/// [`pack`], with the opening the examples share stored once ([`Batch::prefix`]): the
/// longest run of input tokens every example starts with that trains no target, leaving
/// each example at least one row of its own. On chat data that is the system prompt and
/// the instruction — on the credit example ~46 of ~98 rows per example, computed once
/// per batch instead of once per example. One example, or nothing shared: [`pack`].
pub fn pack_shared(examples: &[&Example]) -> Batch {
    let Some(first) = examples.first() else { return Batch::default() };
    // Row j is input token j, predicting token j + 1 (trained or not).
    let limit = examples.iter().map(|e| e.tokens.len().saturating_sub(2)).min().unwrap_or(0);
    let p = (0..limit).find(|&j| examples.iter().any(|e| e.tokens[j] != first.tokens[j] || e.trained[j + 1])).unwrap_or(limit);
    if examples.len() < 2 || p == 0 {
        return pack(examples);
    }
    let mut b = Batch { tokens: first.tokens[..p].to_vec(), targets: vec![-1; p], prefix: p, ..Batch::default() };
    for ex in examples {
        let n = ex.tokens.len();
        b.tokens.extend_from_slice(&ex.tokens[p..n - 1]);
        b.targets.extend(ex.tokens[p + 1..].iter().zip(&ex.trained[p + 1..]).map(|(&t, &on)| if on { t } else { -1 }));
        b.seq_lens.push(n - 1 - p);
    }
    b
}

/// Packs examples into a batch: inputs are tokens[..n−1], targets tokens[1..] where trained.
pub fn pack(examples: &[&Example]) -> Batch {
    let mut b = Batch::default();
    for ex in examples {
        let n = ex.tokens.len();
        b.tokens.extend_from_slice(&ex.tokens[..n - 1]);
        b.targets.extend(ex.tokens[1..].iter().zip(&ex.trained[1..]).map(|(&t, &on)| if on { t } else { -1 }));
        b.seq_lens.push(n - 1);
    }
    b
}

/// A data file with its path kept for errors.
pub struct Dataset {
    pub path: PathBuf,
    pub examples: Vec<Example>,
    pub records: Vec<Sourced>,
}

impl Dataset {
    pub fn load(rt: &Vocabulary, path: &Path, max_len: usize, train_on_prompt: bool) -> Result<Dataset, Error> {
        let records = read_jsonl(path)?;
        let examples = records.iter().map(|r| tokenize(rt, r, path, max_len, train_on_prompt)).collect::<Result<_, _>>()?;
        Ok(Dataset { path: path.to_path_buf(), examples, records })
    }

    /// The dataset without the records (and their examples) at `drop` (indices).
    pub fn without(self, drop: &std::collections::HashSet<usize>) -> Dataset {
        let keep = |i: &usize| !drop.contains(i);
        let examples = self.examples.into_iter().enumerate().filter(|(i, _)| keep(i)).map(|(_, e)| e).collect();
        let records = self.records.into_iter().enumerate().filter(|(i, _)| keep(i)).map(|(_, r)| r).collect();
        Dataset { path: self.path, examples, records }
    }

    /// Splits off `fraction` of the examples, drawn with `seed`, as a validation set (a
    /// file sorted by label or scenario still gives a mixed one); order kept on both sides.
    pub fn split_seeded(self, fraction: f64, seed: u64) -> (Dataset, Dataset) {
        use rand::seq::SliceRandom;
        use rand::SeedableRng;
        let n = self.examples.len();
        let n_val = (((n as f64) * fraction).round() as usize).min(n.saturating_sub(1));
        let mut order: Vec<usize> = (0..n).collect();
        order.shuffle(&mut rand_chacha::ChaCha8Rng::seed_from_u64(seed ^ 0x5EED_5A11));
        let held: std::collections::HashSet<usize> = order[..n_val].iter().copied().collect();
        let empty = || Dataset { path: self.path.clone(), examples: Vec::new(), records: Vec::new() };
        let (mut train, mut val) = (empty(), empty());
        for (i, (e, r)) in self.examples.into_iter().zip(self.records).enumerate() {
            let side = if held.contains(&i) { &mut val } else { &mut train };
            side.examples.push(e);
            side.records.push(r);
        }
        (train, val)
    }

    /// Splits off the last `fraction` of the examples as a validation set.
    pub fn split(mut self, fraction: f64) -> (Dataset, Dataset) {
        let n_val = ((self.examples.len() as f64) * fraction).round() as usize;
        let at = self.examples.len() - n_val.min(self.examples.len() - 1);
        let val = Dataset { path: self.path.clone(), examples: self.examples.split_off(at), records: self.records.split_off(at) };
        (self, val)
    }
}
