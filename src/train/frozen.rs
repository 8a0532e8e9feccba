//! The frozen layers' output per example, for runs whose LoRA factors all lie at or above
//! a layer L > 0 (`--layers L-…`, or the LoRA of `--auto`'s upper-layer recipes).
//!
//! The base below L never changes while the factors train, and backward already stops at
//! the lowest factor; so each example's residual stream at L's input is computed once, the
//! first time a batch holds the example, and every later step, epoch and validation pass
//! starts there ([`Start`]). The forward below L then runs once per example instead of once
//! per step.
//!
//! The states are held in f32, n·d·4 bytes for an example of n input rows: the values the
//! forward computes, up to the order of float additions when the example was computed in
//! another batch (the rows a batch shares as its prefix are each example's own first rows,
//! the same causal computation). At most [`CAP_BYTES`] are kept; examples beyond it are
//! computed each time they are needed, as without the cache.

use std::collections::HashMap;
use std::sync::Mutex;

use super::data::{pack_shared, Example};
use crate::error::{EngineError, Error};
use crate::model::grad::{Batch, Start, TrainModel};

/// The most bytes of states one [`FrozenStates`] keeps.
pub const CAP_BYTES: usize = 256 << 20;

/// Per-example hidden states at the input of one layer, filled as batches ask for them.
pub struct FrozenStates {
    layer: usize,
    states: Mutex<Held>,
    cap_bytes: usize,
}

/// The states held and their size.
#[derive(Default)]
struct Held {
    /// Example index → its rows [tokens − 1, d] (the rows a batch feeds for it).
    rows: HashMap<usize, Vec<f32>>,
    bytes: usize,
}

impl Held {
    /// Keeps `rows` as example `i`'s while the total stays within `cap` bytes.
    fn insert_within(&mut self, cap: usize, i: usize, rows: Vec<f32>) -> bool {
        let b = rows.len() * 4;
        if self.rows.contains_key(&i) || self.bytes + b > cap {
            return false;
        }
        self.bytes += b;
        self.rows.insert(i, rows);
        true
    }
}

/// Bytes the states of examples of these token lengths take (before the cap), d wide.
pub fn bytes_for(lengths: impl IntoIterator<Item = usize>, d: usize) -> usize {
    lengths.into_iter().map(|n| n.saturating_sub(1) * d * 4).sum()
}

impl FrozenStates {
    /// States at the input of `layer` (> 0: at layer 0 there is nothing to save).
    pub fn new(layer: usize) -> FrozenStates {
        FrozenStates::with_cap(layer, CAP_BYTES)
    }

    pub fn with_cap(layer: usize, cap_bytes: usize) -> FrozenStates {
        FrozenStates { layer, states: Mutex::new(Held::default()), cap_bytes }
    }

    pub fn layer(&self) -> usize {
        self.layer
    }

    /// Bytes held now.
    pub fn bytes(&self) -> usize {
        self.lock().bytes
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Held> {
        // The map is only ever extended by whole entries: a panic elsewhere leaves it valid.
        self.states.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Copies `other`'s state of its example `from` (if held, at the same layer) as this
    /// one's example `to`: the same example under another index (`--auto`'s validation
    /// split joining the training data). False when nothing was copied.
    pub fn adopt(&self, other: &FrozenStates, from: usize, to: usize) -> bool {
        if other.layer != self.layer || std::ptr::eq(self, other) {
            return false;
        }
        let Some(rows) = other.lock().rows.get(&from).cloned() else { return false };
        self.lock().insert_within(self.cap_bytes, to, rows)
    }

    /// Where `batch`'s forward starts: `batch` is [`pack_shared`] of `examples` (index,
    /// example) in this order. Examples not held yet are computed through the base's
    /// first `layer` layers together (one packed batch) and kept while the cap allows.
    pub fn start_for(&self, model: &TrainModel<f32>, examples: &[(usize, &Example)], batch: &Batch) -> Result<Start<f32>, Error> {
        let d = model.config.n_embd;
        if batch.seq_lens.len() != examples.len() {
            return Err(mismatch(format!("{} sequences for {} examples", batch.seq_lens.len(), examples.len())));
        }
        let mut fresh: HashMap<usize, Vec<f32>> = HashMap::new();
        let missing: Vec<(usize, &Example)> = {
            let held = self.lock();
            let mut seen = std::collections::HashSet::new();
            examples.iter().copied().filter(|(i, _)| !held.rows.contains_key(i) && seen.insert(*i)).collect()
        };
        if !missing.is_empty() {
            let refs: Vec<&Example> = missing.iter().map(|(_, e)| *e).collect();
            let b = pack_shared(&refs);
            let x = model.hidden_states(&b, self.layer)?;
            let p = b.prefix * d;
            let mut at = p;
            for ((i, _), &n) in missing.iter().zip(&b.seq_lens) {
                let mut rows = Vec::with_capacity(p + n * d);
                rows.extend_from_slice(&x[..p]);
                rows.extend_from_slice(&x[at..at + n * d]);
                at += n * d;
                fresh.insert(*i, rows);
            }
        }
        let mut held = self.lock();
        let x = {
            let get = |i: usize| -> &Vec<f32> { fresh.get(&i).or_else(|| held.rows.get(&i)).expect("every example is held or fresh") };
            let p = batch.prefix * d;
            let n_rows = batch.tokens.len();
            let mut x = Vec::with_capacity(n_rows * d);
            if let Some(&(i0, _)) = examples.first() {
                let first = get(i0);
                if first.len() < p {
                    return Err(mismatch(format!("a shared prefix of {} rows, example {i0} has {}", batch.prefix, first.len() / d)));
                }
                x.extend_from_slice(&first[..p]);
            }
            for (&(i, _), &n) in examples.iter().zip(&batch.seq_lens) {
                let rows = get(i);
                if rows.len() != p + n * d {
                    return Err(mismatch(format!("example {i} has {} rows, the batch gives it {} after a prefix of {}", rows.len() / d, n, batch.prefix)));
                }
                x.extend_from_slice(&rows[p..]);
            }
            x
        };
        for (i, rows) in fresh {
            held.insert_within(self.cap_bytes, i, rows);
        }
        Ok(Start { layer: self.layer, x })
    }
}

fn mismatch(what: String) -> Error {
    EngineError::BadOption(format!("frozen-layer states do not fit the batch: {what}")).into()
}
