//! LoRA adapters: one in-memory model (`model`), read and written as GGUF-LoRA
//! (`gguf_lora`, llama.cpp's layout) and PEFT (`peft`), with HF ↔ GGUF name maps per
//! architecture (`names`), validation against a base model, weighted composition
//! (`compose`), a manifest kept through conversions (`manifest`), lineage (`lineage`) and
//! the on-device store of versions (`store`).
//!
//! Orientation and scale follow DESIGN.md: A `[r, in]`, B `[out, r]` row-major (GGUF
//! `lora_a` ne `[in, r]`, `lora_b` ne `[r, out]`), ΔW = s·B·A.

mod compose;
mod gguf_lora;
mod lineage;
mod manifest;
mod model;
mod names;
mod peft;
mod store;
mod synthetic;

use std::collections::BTreeMap;
use std::path::Path;

pub use compose::{compose, ComposeMethod, ComposeReport};
pub use gguf_lora::{gguf_lora_bytes, natural_dtype, read_gguf_lora, write_gguf_lora, GgufLoraDtype};
pub use lineage::{file_sha256, history, read_manifest, HistoryEnd, HistoryEntry};
pub use manifest::{now_rfc3339, DataRef, Lineage, Manifest, ParentRef};
pub use model::{FactorDtype, LoraAdapter, LoraTensor};
pub use names::{permute_qk_rows, ArchNames};
pub use peft::{is_peft_dir, read_peft, read_peft_bytes, read_peft_with, write_peft, ReadOptions};
pub use store::{AdapterStore, StoredVersion};
pub use synthetic::{random_lora, ALL_LINEAR};

use crate::error::{AdapterError, Error};
use crate::gguf::GgufFile;

/// What a checked adapter holds.
#[derive(Debug, Clone, PartialEq)]
pub struct LoraSummary {
    pub architecture: String,
    /// Base tensor name → (rank, effective scale).
    pub targets: BTreeMap<String, (usize, f32)>,
}

/// Reads an adapter from a GGUF-LoRA file or a PEFT folder, for the model `base`, and
/// validates it against that model.
/// Strict: see [`ReadOptions`].
pub fn load(path: &Path, base: &GgufFile) -> Result<LoraAdapter, Error> {
    load_with(path, base, ReadOptions::default()).map(|(a, _)| a)
}

/// [`load`] with options; also returns the warnings a lenient read let through.
pub fn load_with(path: &Path, base: &GgufFile, options: ReadOptions) -> Result<(LoraAdapter, Vec<String>), Error> {
    if path.is_dir() {
        if !is_peft_dir(path) {
            return Err(AdapterError::Invalid { path: path.to_path_buf(), reason: format!("a folder without {} (not a PEFT adapter)", "adapter_config.json") }.into());
        }
        return read_peft_with(path, base, options);
    }
    let f = GgufFile::open(path)?;
    let adapter = read_gguf_lora(&f)?;
    validate(&adapter, base, path)?;
    Ok((adapter, Vec::new()))
}

/// Checks `adapter` against the base model: architecture, every target present with the
/// matching shape, ranks, finite scales and weights. `origin` names the adapter in errors.
pub fn validate(adapter: &LoraAdapter, base: &GgufFile, origin: &Path) -> Result<LoraSummary, Error> {
    let path = origin.to_path_buf();
    let base_arch = base.architecture()?;
    if adapter.architecture != base_arch {
        return Err(AdapterError::WrongArchitecture { path, expected: base_arch.into(), found: adapter.architecture.clone() }.into());
    }
    let mut targets = BTreeMap::new();
    for (name, t) in &adapter.tensors {
        let bad = |reason: String| -> Error { AdapterError::BadTensor { path: path.clone(), tensor: name.clone(), reason }.into() };
        if name == "token_embd.weight" {
            // llama.cpp applies an embedding LoRA in another orientation, and on a model
            // with tied embeddings reuses it for the output head, where it aborts.
            return Err(bad("LoRA on the token embedding is not supported (llama.cpp would misapply it; on a tied model it aborts)".into()));
        }
        let w = base.tensor(name).ok_or_else(|| {
            let hint = if name == "output.weight" { " (the model ties its output to token_embd: an lm_head LoRA has no weight to apply to)" } else { " (wrong base model, or unmapped HF names?)" };
            bad(format!("the base model {} has no such tensor{hint}", base.path().display()))
        })?;
        if w.shape.len() != 2 {
            return Err(bad(format!("the base tensor has shape {:?}, expected a 2-D weight", w.shape)));
        }
        let (n_in, n_out) = (w.shape[0] as usize, w.shape[1] as usize);
        if t.n_in != n_in || t.n_out != n_out {
            return Err(bad(format!(
                "shapes do not fit the base weight [{n_in}, {n_out}] (ggml order): expected A [r, {n_in}] and B [{n_out}, r], found A [{}, {}] and B [{}, {}]",
                t.rank, t.n_in, t.n_out, t.rank
            )));
        }
        if t.rank == 0 || t.a.len() != t.rank * t.n_in || t.b.len() != t.n_out * t.rank {
            return Err(bad(format!("rank {} does not fit {} A and {} B values", t.rank, t.a.len(), t.b.len())));
        }
        if !t.scale.is_finite() {
            return Err(bad(format!("scale {} is not finite", t.scale)));
        }
        if let Some(i) = t.a.iter().chain(&t.b).position(|x| !x.is_finite()) {
            return Err(bad(format!("weight {i} is not finite")));
        }
        targets.insert(name.clone(), (t.rank, t.scale));
    }
    if targets.is_empty() {
        return Err(AdapterError::Invalid { path, reason: "holds no LoRA tensors".into() }.into());
    }
    Ok(LoraSummary { architecture: adapter.architecture.clone(), targets })
}
