//! Streaming, atomic GGUF writer.
//!
//! The header (metadata and every tensor's info) is written first; tensor data then
//! streams in, one tensor at a time and in the declared order, each padded to the
//! alignment. Everything goes to a temporary file beside the target that is synced and
//! renamed over the final name by [`GgufWriter::finish`]; dropping an unfinished writer
//! deletes the temporary file, so a crash or an error never leaves a partial file under
//! the final name.

use std::fs::{self, File};
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use super::reader::{align_up, DEFAULT_ALIGNMENT, GGUF_MAGIC, MAX_DIMS};
use super::types::{GgmlType, MetaValue};
use crate::error::GgufError;

/// What the writer needs to know of a tensor before its data arrives.
#[derive(Debug, Clone, PartialEq)]
pub struct TensorSpec {
    pub name: String,
    /// ggml order (`shape[0]` contiguous).
    pub shape: Vec<u64>,
    pub ggml_type: GgmlType,
}

impl TensorSpec {
    pub fn new(name: impl Into<String>, shape: &[u64], ggml_type: GgmlType) -> Self {
        TensorSpec { name: name.into(), shape: shape.to_vec(), ggml_type }
    }
}

enum Sink {
    File(BufWriter<File>),
    Memory(Vec<u8>),
}

/// Writes one GGUF file (or image in memory); see the module docs.
pub struct GgufWriter {
    final_path: PathBuf,
    tmp_path: PathBuf,
    out: Option<Sink>,
    alignment: u64,
    tensors: Vec<(TensorSpec, u64)>,
    next: usize,
    /// Bytes written so far (file position).
    pos: u64,
    /// Bytes written of the current tensor, for chunked writes.
    partial: u64,
}

impl GgufWriter {
    /// Creates the temporary file and writes the header: version 3, `metadata` in the
    /// given order, then the tensor infos with offsets laid out back to back at the
    /// alignment (`general.alignment` if `metadata` has it, else 32).
    pub fn create(
        path: impl AsRef<Path>,
        metadata: &[(String, MetaValue)],
        tensors: &[TensorSpec],
    ) -> Result<Self, GgufError> {
        Self::create_with_version(path, 3, metadata, tensors)
    }

    /// As [`create`](Self::create) with an explicit GGUF version (2 or 3).
    pub fn create_with_version(
        path: impl AsRef<Path>,
        version: u32,
        metadata: &[(String, MetaValue)],
        tensors: &[TensorSpec],
    ) -> Result<Self, GgufError> {
        Self::start(path.as_ref().to_path_buf(), false, version, metadata, tensors)
    }

    /// A writer that builds the GGUF image in memory ([`finish_in_memory`](Self::finish_in_memory)
    /// returns it); `name` only labels errors.
    pub fn in_memory(name: &str, metadata: &[(String, MetaValue)], tensors: &[TensorSpec]) -> Result<Self, GgufError> {
        Self::start(PathBuf::from(name), true, 3, metadata, tensors)
    }

    fn start(
        final_path: PathBuf,
        in_memory: bool,
        version: u32,
        metadata: &[(String, MetaValue)],
        tensors: &[TensorSpec],
    ) -> Result<Self, GgufError> {
        if version != 2 && version != 3 {
            return Err(GgufError::UnsupportedVersion { path: final_path, found: version, hint: "" });
        }
        let alignment = match metadata.iter().find(|(k, _)| k == "general.alignment") {
            None => DEFAULT_ALIGNMENT,
            Some((_, MetaValue::U32(a))) if *a != 0 && a.is_power_of_two() => u64::from(*a),
            Some((k, v)) => {
                return Err(GgufError::WrongValue {
                    path: final_path,
                    key: k.clone(),
                    expected: "a u32 power of two".into(),
                    found: v.summary(),
                })
            }
        };
        let mut seen = std::collections::HashSet::new();
        for (k, _) in metadata {
            if !seen.insert(k.as_str()) {
                return Err(GgufError::DuplicateKey { path: final_path, key: k.clone() });
            }
        }
        let mut seen = std::collections::HashSet::new();
        let mut laid_out = Vec::with_capacity(tensors.len());
        let mut offset = 0u64;
        for t in tensors {
            let bad = |reason: String| GgufError::BadTensor {
                path: final_path.clone(),
                name: t.name.clone(),
                reason,
            };
            if !seen.insert(t.name.as_str()) {
                return Err(GgufError::DuplicateTensor { path: final_path.clone(), name: t.name.clone() });
            }
            if t.shape.is_empty() || t.shape.len() > MAX_DIMS {
                return Err(bad(format!("{} dimensions (expected 1..={MAX_DIMS})", t.shape.len())));
            }
            let size = t
                .shape
                .iter()
                .try_fold(1u64, |a, &d| a.checked_mul(d))
                .and_then(|n| t.ggml_type.bytes_for(n))
                .filter(|_| t.shape[0] % t.ggml_type.block_size() == 0)
                .ok_or_else(|| bad(format!("shape {:?} does not fit type {}", t.shape, t.ggml_type)))?;
            laid_out.push((t.clone(), size));
            offset = align_up(offset + size, alignment).expect("sizes are bounded by memory");
        }
        let _ = offset;

        let tmp_path = temp_path_for(&final_path);
        let sink = if in_memory {
            Sink::Memory(Vec::new())
        } else {
            let file = File::create(&tmp_path).map_err(|source| GgufError::Io {
                path: tmp_path.clone(),
                action: "cannot create temporary file",
                source,
            })?;
            Sink::File(BufWriter::with_capacity(1 << 20, file))
        };
        let mut w = GgufWriter {
            final_path,
            tmp_path,
            out: Some(sink),
            alignment,
            tensors: laid_out,
            next: 0,
            pos: 0,
            partial: 0,
        };
        w.write_header(version, metadata)?;
        Ok(w)
    }

    fn write_header(&mut self, version: u32, metadata: &[(String, MetaValue)]) -> Result<(), GgufError> {
        let mut buf = Vec::with_capacity(1 << 16);
        buf.extend_from_slice(&GGUF_MAGIC);
        buf.extend_from_slice(&version.to_le_bytes());
        buf.extend_from_slice(&(self.tensors.len() as u64).to_le_bytes());
        buf.extend_from_slice(&(metadata.len() as u64).to_le_bytes());
        for (k, v) in metadata {
            put_str(&mut buf, k);
            buf.extend_from_slice(&(v.value_type() as u32).to_le_bytes());
            put_value(&mut buf, v);
        }
        let mut offset = 0u64;
        for (t, size) in &self.tensors {
            put_str(&mut buf, &t.name);
            buf.extend_from_slice(&(t.shape.len() as u32).to_le_bytes());
            for d in &t.shape {
                buf.extend_from_slice(&d.to_le_bytes());
            }
            buf.extend_from_slice(&(t.ggml_type as u32).to_le_bytes());
            buf.extend_from_slice(&offset.to_le_bytes());
            offset = align_up(offset + size, self.alignment).expect("checked in create");
        }
        self.write_raw(&buf)?;
        self.pad()
    }

    fn write_raw(&mut self, bytes: &[u8]) -> Result<(), GgufError> {
        match self.out.as_mut().expect("writer used after finish") {
            Sink::File(f) => f.write_all(bytes).map_err(|source| GgufError::Io {
                path: self.tmp_path.clone(),
                action: "write failed",
                source,
            })?,
            Sink::Memory(v) => v.extend_from_slice(bytes),
        }
        self.pos += bytes.len() as u64;
        Ok(())
    }

    fn pad(&mut self) -> Result<(), GgufError> {
        let target = align_up(self.pos, self.alignment).expect("file sizes are bounded");
        let zeros = vec![0u8; (target - self.pos) as usize];
        self.write_raw(&zeros)
    }

    /// The tensor whose data is expected next, if any.
    pub fn next_tensor(&self) -> Option<&TensorSpec> {
        self.tensors.get(self.next).map(|(t, _)| t)
    }

    /// Writes the whole data of the next tensor, which must be `name`.
    pub fn write_tensor(&mut self, name: &str, data: &[u8]) -> Result<(), GgufError> {
        self.write_tensor_chunk(name, data)?;
        self.end_tensor(name)
    }

    /// Appends part of the next tensor's data; call [`end_tensor`](Self::end_tensor)
    /// after the last chunk. Lets a producer stream a tensor larger than it wants to hold.
    pub fn write_tensor_chunk(&mut self, name: &str, data: &[u8]) -> Result<(), GgufError> {
        let (spec, size) = self.expect_next(name)?;
        if self.partial + data.len() as u64 > size {
            return Err(GgufError::WriteOrder {
                path: self.final_path.clone(),
                name: spec.name.clone(),
                reason: format!("{} bytes given, the tensor holds {size}", self.partial + data.len() as u64),
            });
        }
        self.write_raw(data)?;
        self.partial += data.len() as u64;
        Ok(())
    }

    /// Closes the next tensor after its chunks; checks its size and pads.
    pub fn end_tensor(&mut self, name: &str) -> Result<(), GgufError> {
        let (spec, size) = self.expect_next(name)?;
        if self.partial != size {
            return Err(GgufError::WriteOrder {
                path: self.final_path.clone(),
                name: spec.name.clone(),
                reason: format!("{} bytes given, expected {size} for shape {:?} of type {}", self.partial, spec.shape, spec.ggml_type),
            });
        }
        self.partial = 0;
        self.next += 1;
        self.pad()
    }

    fn expect_next(&self, name: &str) -> Result<(TensorSpec, u64), GgufError> {
        match self.tensors.get(self.next) {
            Some((t, size)) if t.name == name => Ok((t.clone(), *size)),
            Some((t, _)) => Err(GgufError::WriteOrder {
                path: self.final_path.clone(),
                name: name.into(),
                reason: format!("tensor {:?} comes next in the declared order", t.name),
            }),
            None => Err(GgufError::WriteOrder {
                path: self.final_path.clone(),
                name: name.into(),
                reason: "all declared tensors are already written".into(),
            }),
        }
    }

    fn check_complete(&self) -> Result<(), GgufError> {
        match self.tensors.get(self.next) {
            Some((t, _)) => Err(GgufError::WriteOrder {
                path: self.final_path.clone(),
                name: t.name.clone(),
                reason: format!("never written ({} of {} tensors done)", self.next, self.tensors.len()),
            }),
            None => Ok(()),
        }
    }

    /// The finished image of an [`in_memory`](Self::in_memory) writer.
    pub fn finish_in_memory(mut self) -> Result<Vec<u8>, GgufError> {
        self.check_complete()?;
        match self.out.take() {
            Some(Sink::Memory(v)) => Ok(v),
            _ => Err(GgufError::WriteOrder {
                path: self.final_path.clone(),
                name: String::new(),
                reason: "finish_in_memory called on a file writer".into(),
            }),
        }
    }

    /// Checks that every tensor was written, syncs the file and renames it to the final
    /// name (then syncs the directory, so the rename itself is durable).
    pub fn finish(mut self) -> Result<PathBuf, GgufError> {
        self.check_complete()?;
        let io = |path: &Path, action: &'static str| {
            let path = path.to_path_buf();
            move |source| GgufError::Io { path, action, source }
        };
        let out = match self.out.take() {
            Some(Sink::File(f)) => f,
            _ => {
                return Err(GgufError::WriteOrder {
                    path: self.final_path.clone(),
                    name: String::new(),
                    reason: "finish called on an in-memory writer".into(),
                })
            }
        };
        // The sink is taken out of `self`, so Drop no longer removes the temporary file:
        // every failure from here on removes it (a full disk shows up at this flush).
        let done = (|| {
            let file = out.into_inner().map_err(|e| e.into_error()).map_err(io(&self.tmp_path, "write failed"))?;
            file.sync_all().map_err(io(&self.tmp_path, "fsync failed"))?;
            drop(file);
            fs::rename(&self.tmp_path, &self.final_path).map_err(io(&self.final_path, "cannot rename the temporary file onto"))
        })();
        if done.is_err() {
            let _ = fs::remove_file(&self.tmp_path);
        }
        done?;
        if let Some(dir) = self.final_path.parent().filter(|d| !d.as_os_str().is_empty()) {
            if let Ok(d) = File::open(dir) {
                let _ = d.sync_all();
            }
        }
        Ok(self.final_path.clone())
    }
}

impl Drop for GgufWriter {
    fn drop(&mut self) {
        if let Some(Sink::File(_)) = self.out.take() {
            let _ = fs::remove_file(&self.tmp_path);
        }
    }
}

/// `dir/.name.tmp-<pid>-<n>` beside `path`, so the rename stays on one file system.
pub fn temp_path_for(path: &Path) -> PathBuf {
    use std::sync::atomic::{AtomicU64, Ordering};
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    path.with_file_name(format!(".{name}.tmp-{}-{n}", std::process::id()))
}

fn put_str(buf: &mut Vec<u8>, s: &str) {
    buf.extend_from_slice(&(s.len() as u64).to_le_bytes());
    buf.extend_from_slice(s.as_bytes());
}

fn put_value(buf: &mut Vec<u8>, v: &MetaValue) {
    match v {
        MetaValue::U8(x) => buf.push(*x),
        MetaValue::I8(x) => buf.push(*x as u8),
        MetaValue::U16(x) => buf.extend_from_slice(&x.to_le_bytes()),
        MetaValue::I16(x) => buf.extend_from_slice(&x.to_le_bytes()),
        MetaValue::U32(x) => buf.extend_from_slice(&x.to_le_bytes()),
        MetaValue::I32(x) => buf.extend_from_slice(&x.to_le_bytes()),
        MetaValue::F32(x) => buf.extend_from_slice(&x.to_le_bytes()),
        MetaValue::U64(x) => buf.extend_from_slice(&x.to_le_bytes()),
        MetaValue::I64(x) => buf.extend_from_slice(&x.to_le_bytes()),
        MetaValue::F64(x) => buf.extend_from_slice(&x.to_le_bytes()),
        MetaValue::Bool(x) => buf.push(u8::from(*x)),
        MetaValue::String(s) => put_str(buf, s),
        MetaValue::Array(et, items) => {
            buf.extend_from_slice(&(*et as u32).to_le_bytes());
            buf.extend_from_slice(&(items.len() as u64).to_le_bytes());
            for item in items {
                put_value(buf, item);
            }
        }
    }
}
