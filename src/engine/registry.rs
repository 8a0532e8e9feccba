//! Named adapters loaded on one model: their llama.cpp handles and what validation found.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use super::llama_cpp::{Adapter, Model};
use crate::adapter::{self, gguf_lora_bytes, natural_dtype, validate, LoraAdapter, LoraSummary, ReadOptions};
use crate::error::{EngineError, Error};
use crate::gguf::GgufFile;

/// A loaded adapter as callers see it.
#[derive(Debug, Clone, PartialEq)]
pub struct AdapterInfo {
    pub name: String,
    pub path: PathBuf,
    pub summary: LoraSummary,
    /// What a lenient read let through (empty when strict).
    pub warnings: Vec<String>,
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
    fn check_name(&self, name: &str) -> Result<(), Error> {
        if name.is_empty() {
            return Err(EngineError::BadOption("an adapter name must not be empty".into()).into());
        }
        if self.entries.contains_key(name) {
            return Err(EngineError::DuplicateAdapter { name: name.into() }.into());
        }
        Ok(())
    }

    /// Reads and validates `path` (GGUF-LoRA file or PEFT folder) against `base`, then
    /// loads it into llama.cpp under `name`: a GGUF file as it is, a PEFT folder converted
    /// in memory.
    pub fn load(&mut self, model: &Model, base: &GgufFile, name: &str, path: &Path, options: ReadOptions) -> Result<AdapterInfo, Error> {
        self.check_name(name)?;
        let (adapter, warnings) = adapter::load_with(path, base, options)?;
        let summary = validate(&adapter, base, path)?;
        let handle = if path.is_dir() {
            model.load_adapter_bytes(&gguf_lora_bytes(&adapter, natural_dtype(&adapter))?, path)?
        } else {
            model.load_adapter(path)?
        };
        let mut info = self.insert(name, path, summary, handle);
        info.warnings = warnings;
        Ok(info)
    }

    /// Validates an adapter held in memory and loads it under `name`.
    pub fn load_in_memory(&mut self, model: &Model, base: &GgufFile, name: &str, adapter: &LoraAdapter) -> Result<AdapterInfo, Error> {
        self.check_name(name)?;
        let label = Path::new("<in-memory>");
        let summary = validate(adapter, base, label)?;
        let handle = model.load_adapter_bytes(&gguf_lora_bytes(adapter, natural_dtype(adapter))?, label)?;
        Ok(self.insert(name, label, summary, handle))
    }

    fn insert(&mut self, name: &str, path: &Path, summary: LoraSummary, handle: Adapter) -> AdapterInfo {
        let info = AdapterInfo { name: name.into(), path: path.to_path_buf(), summary, warnings: Vec::new() };
        self.next_id += 1;
        self.entries.insert(name.into(), Entry { id: self.next_id, info: info.clone(), handle });
        info
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
