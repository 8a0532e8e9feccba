//! The on-device adapter store: versions of each named adapter, the current one, and
//! roll-back — what an app keeps after personalizing so a worse adapter can be undone.
//!
//! Layout (one folder per adapter name; every write is a temporary file renamed over its
//! final name, so a kill leaves either the old or the new state):
//!
//! ```text
//! STORE/NAME/index.json   {"name", "current", "versions": [{version, file, parent, …}]}
//! STORE/NAME/v1.gguf      the adapter files, as exported (bytes unchanged)
//! ```
//!
//! A version records its parent (the version that was current when it was saved), the
//! adapter file's SHA-256, and from its manifest the data fingerprint and the training
//! metrics. One process writes a store at a time (no lock file).

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::lineage::{file_sha256, read_manifest};
use super::manifest::now_rfc3339;
use crate::error::{AdapterError, Error};

const INDEX: &str = "index.json";

/// One stored version.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StoredVersion {
    pub version: u32,
    /// File name inside the adapter's folder.
    pub file: String,
    /// The version that was current when this one was saved.
    pub parent: Option<u32>,
    pub created: String,
    pub sha256: String,
    pub data_fingerprint: Option<String>,
    /// The manifest's `training` object (steps, losses, …) and what the caller added.
    pub metrics: Option<serde_json::Value>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Index {
    name: String,
    current: Option<u32>,
    versions: Vec<StoredVersion>,
}

/// A store folder.
#[derive(Debug, Clone)]
pub struct AdapterStore {
    root: PathBuf,
}

fn store_err(path: &Path, reason: impl Into<String>) -> Error {
    AdapterError::Store { path: path.to_path_buf(), reason: reason.into() }.into()
}

/// Names are folder names: 1–64 of `A-Z a-z 0-9 - _ .`, not starting with a dot.
fn check_name(root: &Path, name: &str) -> Result<(), Error> {
    let ok = !name.is_empty() && name.len() <= 64 && !name.starts_with('.') && name.chars().all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c));
    if ok {
        Ok(())
    } else {
        Err(store_err(root, format!("adapter name {name:?}: expected 1-64 characters of A-Z a-z 0-9 - _ . not starting with a dot")))
    }
}

impl AdapterStore {
    /// Opens (creating) a store folder.
    pub fn open(root: impl AsRef<Path>) -> Result<AdapterStore, Error> {
        let root = root.as_ref().to_path_buf();
        std::fs::create_dir_all(&root).map_err(|e| store_err(&root, format!("cannot create the store folder: {e}")))?;
        Ok(AdapterStore { root })
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    fn index_path(&self, name: &str) -> PathBuf {
        self.root.join(name).join(INDEX)
    }

    fn read_index(&self, name: &str) -> Result<Option<Index>, Error> {
        check_name(&self.root, name)?;
        let p = self.index_path(name);
        let text = match std::fs::read_to_string(&p) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(store_err(&p, format!("reading: {e}"))),
        };
        let idx: Index = serde_json::from_str(&text).map_err(|e| store_err(&p, format!("not a store index: {e}")))?;
        if let Some(c) = idx.current {
            if !idx.versions.iter().any(|v| v.version == c) {
                return Err(store_err(&p, format!("current version {c} is not among its versions")));
            }
        }
        Ok(Some(idx))
    }

    fn write_index(&self, idx: &Index) -> Result<(), Error> {
        let p = self.index_path(&idx.name);
        let text = serde_json::to_string_pretty(idx).expect("index serializes");
        crate::fsutil::atomic_write(&p, text.as_bytes()).map_err(|e| store_err(&p, format!("writing: {e}")))
    }

    /// Names of the stored adapters, sorted.
    pub fn names(&self) -> Result<Vec<String>, Error> {
        let rd = std::fs::read_dir(&self.root).map_err(|e| store_err(&self.root, format!("listing: {e}")))?;
        let mut out: Vec<String> = rd.filter_map(|e| e.ok()).filter(|e| e.path().join(INDEX).is_file()).filter_map(|e| e.file_name().into_string().ok()).collect();
        out.sort();
        Ok(out)
    }

    /// Saves an exported adapter file (GGUF-LoRA) as the next version of `name` and
    /// makes it current; its parent is the version current before. `metrics` (e.g. an
    /// evaluation) is stored beside the manifest's training metrics.
    pub fn save(&self, name: &str, adapter_file: impl AsRef<Path>, metrics: Option<serde_json::Value>) -> Result<StoredVersion, Error> {
        let src = adapter_file.as_ref();
        if src.is_dir() {
            return Err(store_err(src, "is a folder: the store keeps GGUF-LoRA files (export the adapter as one)"));
        }
        // An adapter, not any GGUF: its tensors must read as LoRA pairs.
        super::read_gguf_lora(&crate::gguf::GgufFile::open(src)?)?;
        let manifest = read_manifest(src)?;
        let sha256 = file_sha256(src)?;
        let mut idx = self.read_index(name)?.unwrap_or(Index { name: name.into(), current: None, versions: Vec::new() });
        let version = idx.versions.iter().map(|v| v.version).max().unwrap_or(0) + 1;
        let folder = self.root.join(name);
        std::fs::create_dir_all(&folder).map_err(|e| store_err(&folder, format!("cannot create: {e}")))?;
        let file = format!("v{version}.gguf");
        let dest = folder.join(&file);
        let bytes = std::fs::read(src).map_err(|e| store_err(src, format!("reading: {e}")))?;
        crate::fsutil::atomic_write(&dest, &bytes).map_err(|e| store_err(&dest, format!("writing: {e}")))?;
        let metrics = match (manifest.training, metrics) {
            (None, None) => None,
            (t, m) => Some(serde_json::json!({"training": t, "evaluation": m})),
        };
        let v = StoredVersion { version, file, parent: idx.current, created: now_rfc3339(), sha256, data_fingerprint: manifest.data_fingerprint, metrics };
        idx.versions.push(v.clone());
        idx.current = Some(version);
        if let Err(e) = self.write_index(&idx) {
            let _ = std::fs::remove_file(&dest);
            return Err(e);
        }
        Ok(v)
    }

    /// Every version of `name`, oldest first.
    pub fn versions(&self, name: &str) -> Result<Vec<StoredVersion>, Error> {
        Ok(self.read_index(name)?.map(|i| i.versions).unwrap_or_default())
    }

    /// The current version of `name`.
    pub fn current(&self, name: &str) -> Result<StoredVersion, Error> {
        let idx = self.read_index(name)?.ok_or_else(|| AdapterError::NotInStore { what: format!("adapter named {name:?} in {}", self.root.display()) })?;
        let c = idx.current.ok_or_else(|| AdapterError::NotInStore { what: format!("current version of {name:?}") })?;
        Ok(idx.versions.into_iter().find(|v| v.version == c).expect("read_index checks current"))
    }

    /// The file of `name`'s `version`.
    pub fn path(&self, name: &str, version: u32) -> Result<PathBuf, Error> {
        let idx = self.read_index(name)?.ok_or_else(|| AdapterError::NotInStore { what: format!("adapter named {name:?} in {}", self.root.display()) })?;
        let v = idx.versions.iter().find(|v| v.version == version).ok_or_else(|| AdapterError::NotInStore { what: format!("version {version} of {name:?}") })?;
        Ok(self.root.join(name).join(&v.file))
    }

    /// The current version's file.
    pub fn current_path(&self, name: &str) -> Result<PathBuf, Error> {
        let v = self.current(name)?;
        Ok(self.root.join(name).join(v.file))
    }

    /// Makes `version` current.
    pub fn set_current(&self, name: &str, version: u32) -> Result<StoredVersion, Error> {
        let mut idx = self.read_index(name)?.ok_or_else(|| AdapterError::NotInStore { what: format!("adapter named {name:?} in {}", self.root.display()) })?;
        let v = idx.versions.iter().find(|v| v.version == version).cloned().ok_or_else(|| AdapterError::NotInStore { what: format!("version {version} of {name:?}") })?;
        idx.current = Some(version);
        self.write_index(&idx)?;
        Ok(v)
    }

    /// Rolls `name` back to the parent of its current version (the one current before it
    /// was saved) and returns it. The rolled-back version stays stored.
    pub fn rollback(&self, name: &str) -> Result<StoredVersion, Error> {
        let cur = self.current(name)?;
        let parent = cur.parent.ok_or_else(|| AdapterError::NotInStore { what: format!("version before {name}@{} (it is the first)", cur.version) })?;
        self.set_current(name, parent)
    }
}
