//! GPTQ's re-coded tensors between the layer-by-layer pass and the writer. The pass
//! finishes before the first tensor is written (the writer goes in file order, the pass
//! layer by layer), so the re-coded blocks wait somewhere: here, in an anonymous
//! temporary file beside the output — removed by the OS when closed, never under a name —
//! then mapped read-only. The merge holds one layer's tensors in memory, not every
//! re-coded tensor of the model (≈ 3.8 GB for a 7B all-linear Q4_1 merge).

use std::collections::HashMap;
use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};

use memmap2::Mmap;

use crate::error::{Error, GgufError};

/// Tensors being spilled.
pub struct Spill {
    dir: PathBuf,
    file: File,
    /// name → (offset, length) in the file
    index: HashMap<String, (usize, usize)>,
    len: usize,
}

/// Spilled tensors, readable.
#[derive(Default)]
pub struct Spilled {
    map: Option<Mmap>,
    index: HashMap<String, (usize, usize)>,
}

impl Spill {
    /// An anonymous temporary file in `dir` (the output's directory: same file system,
    /// and no more than the output's size).
    pub fn new(dir: &Path) -> Result<Spill, Error> {
        let file = tempfile::tempfile_in(dir).map_err(|source| GgufError::Io { path: dir.to_path_buf(), action: "cannot create a temporary file for GPTQ's re-coded tensors in", source })?;
        Ok(Spill { dir: dir.to_path_buf(), file, index: HashMap::new(), len: 0 })
    }

    /// Appends tensor `name`'s bytes.
    pub fn push(&mut self, name: &str, bytes: &[u8]) -> Result<(), Error> {
        self.file.write_all(bytes).map_err(|source| GgufError::Io { path: self.dir.clone(), action: "cannot write GPTQ's re-coded tensors to a temporary file in", source })?;
        self.index.insert(name.to_string(), (self.len, bytes.len()));
        self.len += bytes.len();
        Ok(())
    }

    /// Maps what was written.
    pub fn finish(mut self) -> Result<Spilled, Error> {
        if self.len == 0 {
            return Ok(Spilled::default());
        }
        let io = |source| GgufError::Io { path: self.dir.clone(), action: "cannot read back GPTQ's re-coded tensors from a temporary file in", source };
        self.file.flush().map_err(io)?;
        // SAFETY: the file is anonymous (no other process can reach it) and only read from
        // here on.
        let map = unsafe { Mmap::map(&self.file) }.map_err(io)?;
        Ok(Spilled { map: Some(map), index: self.index })
    }
}

impl Spilled {
    /// Tensor `name`'s bytes, if it was spilled.
    pub fn get(&self, name: &str) -> Option<&[u8]> {
        let &(at, len) = self.index.get(name)?;
        self.map.as_ref().map(|m| &m[at..at + len])
    }

    pub fn contains(&self, name: &str) -> bool {
        self.index.contains_key(name)
    }
}
