//! Named adapters loaded on one model: their llama.cpp handles and what validation found.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use super::llama_cpp::{Adapter, Model};
use crate::adapter::{check_against_base, LoraSummary};
use crate::error::{EngineError, Error};
use crate::gguf::GgufFile;

/// A loaded adapter as callers see it.
#[derive(Debug, Clone, PartialEq)]
pub struct AdapterInfo {
    pub name: String,
    pub path: PathBuf,
    pub summary: LoraSummary,
}

pub(super) struct Entry {
    /// Unique for the runtime's life: a name reloaded from another file is a new adapter.
    pub id: u64,
    pub info: AdapterInfo,
    pub handle: Adapter,
}

#[derive(Default)]
pub(super) struct AdapterRegistry {
    entries: BTreeMap<String, Entry>,
    next_id: u64,
}

impl AdapterRegistry {
    /// Validates `path` against `base`, then loads it into llama.cpp under `name`.
    pub fn load(&mut self, model: &Model, base: &GgufFile, name: &str, path: &Path) -> Result<AdapterInfo, Error> {
        if name.is_empty() {
            return Err(EngineError::BadOption("an adapter name must not be empty".into()).into());
        }
        if self.entries.contains_key(name) {
            return Err(EngineError::DuplicateAdapter { name: name.into() }.into());
        }
        let file = GgufFile::open(path)?;
        let summary = check_against_base(&file, base)?;
        drop(file);
        let handle = model.load_adapter(path)?;
        let info = AdapterInfo { name: name.into(), path: path.to_path_buf(), summary };
        self.next_id += 1;
        self.entries.insert(name.into(), Entry { id: self.next_id, info: info.clone(), handle });
        Ok(info)
    }

    pub fn remove(&mut self, name: &str) -> Result<Entry, EngineError> {
        self.entries.remove(name).ok_or_else(|| self.unknown(name))
    }

    pub fn get(&self, name: &str) -> Result<&Entry, EngineError> {
        self.entries.get(name).ok_or_else(|| self.unknown(name))
    }

    pub fn infos(&self) -> Vec<AdapterInfo> {
        self.entries.values().map(|e| e.info.clone()).collect()
    }

    fn unknown(&self, name: &str) -> EngineError {
        let loaded: Vec<&str> = self.entries.keys().map(String::as_str).collect();
        EngineError::UnknownAdapter {
            name: name.into(),
            loaded: if loaded.is_empty() { "none".into() } else { loaded.join(", ") },
        }
    }

    /// Drops every handle (before the model goes).
    pub fn clear(&mut self) {
        self.entries.clear();
    }
}
