//! The adapter a run continues (`train --init-adapter`, `JobOptions::init_adapter`): its
//! factors and the LoRA settings they fix (rank, alpha, rsLoRA, targets, layers), and
//! the round and parent reference its lineage records.

use std::path::Path;

use super::trainer::parse_targets;
use crate::adapter::{file_sha256, LoraAdapter, ParentRef};
use crate::error::{Error, TrainError};
use crate::gguf::GgufFile;

/// What continuing an adapter decides: (rank, alpha, rslora, targets, layers) and the adapter.
pub struct Parent {
    pub adapter: LoraAdapter,
    pub rank: usize,
    pub alpha: f32,
    pub rslora: bool,
    pub targets: Vec<String>,
    pub layers: (usize, usize),
    pub file_sha256: String,
}

impl Parent {
    /// The continuing run's round: the parent's + 1 (a parent without lineage counts as round 1).
    pub fn next_round(&self) -> u32 {
        self.adapter.manifest.lineage.as_ref().map_or(1, |l| l.round) + 1
    }

    /// The lineage's reference to this parent, read from `path`.
    pub fn reference(&self, path: &Path) -> ParentRef {
        ParentRef {
            name: self.adapter.manifest.name.clone(),
            version: self.adapter.manifest.version.clone(),
            fingerprint: self.adapter.fingerprint(),
            file_sha256: self.file_sha256.clone(),
            path: path.display().to_string(),
        }
    }
}

/// Reads the adapter to continue (GGUF-LoRA or PEFT folder, validated against `base`)
/// and derives the run's LoRA settings from it.
pub fn read_parent(path: &Path, base: &GgufFile) -> Result<Parent, Error> {
    let adapter = crate::adapter::load(path, base)?;
    let ctx = |m: String| -> Error { TrainError::BadOption { option: "init adapter".into(), reason: format!("{}: {m}", path.display()) }.into() };
    let ranks: std::collections::BTreeSet<usize> = adapter.tensors.values().map(|t| t.rank).collect();
    let scales: Vec<f32> = adapter.tensors.values().map(|t| t.scale).collect();
    if ranks.len() != 1 {
        return Err(ctx(format!("its tensors have ranks {ranks:?}; continuing needs one rank")));
    }
    if scales.iter().any(|&x| (x - scales[0]).abs() > 1e-6 * scales[0].abs().max(1.0)) {
        return Err(ctx("its tensors have different scales; continuing needs one alpha".into()));
    }
    let rank = *ranks.first().expect("one rank");
    let rslora = adapter.manifest.hyperparameters.as_ref().and_then(|h| h.get("use_rslora")).and_then(|v| v.as_bool()).unwrap_or(false);
    let alpha = if rslora { scales[0] * (rank as f32).sqrt() } else { scales[0] * rank as f32 };
    let mut modules = Vec::new();
    let mut layers = std::collections::BTreeSet::new();
    for name in adapter.tensors.keys() {
        let parts: Vec<&str> = name.split('.').collect();
        let (Some(l), Some(m)) = (parts.get(1).and_then(|l| l.parse::<usize>().ok()), parts.get(2)) else {
            return Err(ctx(format!("tensor {name} is not blk.N.MODULE.weight")));
        };
        layers.insert(l);
        if !modules.iter().any(|x: &String| x == m) {
            modules.push(m.to_string());
        }
    }
    let (Some(&first), Some(&last)) = (layers.first(), layers.last()) else { return Err(ctx("it has no tensors".into())) };
    if adapter.tensors.len() != modules.len() * (last - first + 1) {
        return Err(ctx(format!("its {} tensors are not every module of {modules:?} on each layer {first}-{last}; continuing needs targets × a layer range", adapter.tensors.len())));
    }
    let file_sha256 = file_sha256(path)?;
    // Targets in the trainer's (GGUF module) names, in its canonical order.
    let targets = parse_targets(&modules.join(","))?;
    Ok(Parent { adapter, rank, alpha, rslora, targets, layers: (first, last), file_sha256 })
}
