//! Adapter lineage without a base model: an adapter file's manifest (GGUF-LoRA metadata
//! or a PEFT folder's safetensors metadata), the file hash its children record, and the
//! chain child → parent → … that `edgelora adapter history` prints.

use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use super::manifest::Manifest;
use crate::error::{AdapterError, Error};
use crate::gguf::GgufFile;

/// The file whose bytes identify an adapter: the GGUF-LoRA file, or a PEFT folder's
/// `adapter_model.safetensors`.
pub fn identity_file(path: &Path) -> PathBuf {
    if path.is_dir() {
        path.join("adapter_model.safetensors")
    } else {
        path.to_path_buf()
    }
}

/// sha256 (hex) of [`identity_file`], hashed as `train::data::fingerprint` hashes one
/// file (its length, then its bytes): the `file_sha256` a child's lineage records.
pub fn file_sha256(path: &Path) -> Result<String, Error> {
    let file = identity_file(path);
    let bytes = std::fs::read(&file).map_err(|e| AdapterError::Invalid { path: file.clone(), reason: format!("cannot read: {e}") })?;
    let mut h = Sha256::new();
    h.update((bytes.len() as u64).to_le_bytes());
    h.update(&bytes);
    Ok(h.finalize().iter().map(|b| format!("{b:02x}")).collect())
}

/// An adapter's manifest, read without a base model; a file without one gives the
/// default (empty) manifest.
pub fn read_manifest(path: &Path) -> Result<Manifest, Error> {
    if path.is_dir() {
        let file = identity_file(path);
        let bytes = std::fs::read(&file).map_err(|e| AdapterError::Invalid { path: file.clone(), reason: format!("cannot read: {e}") })?;
        let (_, meta) = safetensors::SafeTensors::read_metadata(&bytes).map_err(|e| AdapterError::Invalid { path: file.clone(), reason: format!("not a safetensors file: {e}") })?;
        let stored = meta.metadata().as_ref().and_then(|m| m.get("edgelora.manifest").cloned());
        return match stored {
            None => Ok(Manifest::default()),
            Some(s) => serde_json::from_str(&s).map_err(|e| AdapterError::Invalid { path: file, reason: format!("metadata edgelora.manifest is not a manifest: {e}") }.into()),
        };
    }
    Ok(Manifest::from_gguf(&GgufFile::open(path)?))
}

/// One adapter of a history.
#[derive(Debug, Clone, serde::Serialize)]
pub struct HistoryEntry {
    pub path: PathBuf,
    pub file_sha256: String,
    pub manifest: Manifest,
}

/// How a history ended.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum HistoryEnd {
    /// The oldest adapter has no parent.
    Root,
    /// The parent (its recorded path and file hash) is in none of the places looked at.
    ParentNotFound { path: String, file_sha256: String, looked_in: Vec<PathBuf> },
    /// A parent repeats an adapter already in the chain.
    Cycle,
}

/// Candidates for a parent recorded as `recorded`: that path (as is, and relative to the
/// child's folder), then every adapter (a `.gguf` file or a folder with
/// `adapter_model.safetensors`) in the child's folder and in `stores`.
fn candidates(recorded: &str, child: &Path, stores: &[PathBuf]) -> (Vec<PathBuf>, Vec<PathBuf>) {
    let dir = child.parent().map(Path::to_path_buf).unwrap_or_default();
    let mut out = vec![PathBuf::from(recorded)];
    if Path::new(recorded).is_relative() {
        out.push(dir.join(recorded));
    }
    let mut dirs = vec![if dir.as_os_str().is_empty() { PathBuf::from(".") } else { dir }];
    dirs.extend(stores.iter().cloned());
    for d in &dirs {
        let Ok(rd) = std::fs::read_dir(d) else { continue };
        let mut entries: Vec<PathBuf> = rd.filter_map(|e| e.ok().map(|e| e.path())).collect();
        entries.sort();
        for p in entries {
            if (p.is_file() && p.extension().is_some_and(|x| x == "gguf")) || p.join("adapter_model.safetensors").is_file() {
                out.push(p);
            }
        }
    }
    (out, dirs)
}

/// The chain from `path` to its oldest ancestor that can be found (at most 1000 links).
pub fn history(path: &Path, stores: &[PathBuf]) -> Result<(Vec<HistoryEntry>, HistoryEnd), Error> {
    let mut chain = vec![HistoryEntry { path: path.to_path_buf(), file_sha256: file_sha256(path)?, manifest: read_manifest(path)? }];
    while chain.len() < 1000 {
        let last = chain.last().expect("non-empty");
        let Some(parent) = last.manifest.lineage.as_ref().and_then(|l| l.parent.clone()) else { return Ok((chain, HistoryEnd::Root)) };
        if chain.iter().any(|e| e.file_sha256 == parent.file_sha256) {
            return Ok((chain, HistoryEnd::Cycle));
        }
        let (cands, looked_in) = candidates(&parent.path, &last.path, stores);
        let found = cands.into_iter().find(|c| (c.is_file() || c.is_dir()) && file_sha256(c).is_ok_and(|h| h == parent.file_sha256));
        let Some(p) = found else {
            return Ok((chain, HistoryEnd::ParentNotFound { path: parent.path, file_sha256: parent.file_sha256, looked_in }));
        };
        chain.push(HistoryEntry { manifest: read_manifest(&p)?, file_sha256: parent.file_sha256, path: p });
    }
    Ok((chain, HistoryEnd::Cycle))
}
