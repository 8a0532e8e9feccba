//! Memory-mapped GGUF reader (versions 2 and 3).
//!
//! The whole header — metadata and tensor infos — is parsed up front with every count,
//! offset and size checked against the bytes that remain, in overflow-safe arithmetic,
//! before anything is allocated or touched. Tensor data stays in the map: `tensor_data`
//! hands out borrowed slices, never copies.

use std::collections::HashMap;
use std::fs::File;
use std::ops::Range;
use std::path::{Path, PathBuf};

use memmap2::Mmap;
use sha2::{Digest, Sha256};

use super::types::{GgmlType, MetaValue, ValueType};
use crate::error::GgufError;

/// `GGUF` read as a little-endian u32.
pub const GGUF_MAGIC: [u8; 4] = *b"GGUF";
/// Default data alignment when `general.alignment` is absent.
pub const DEFAULT_ALIGNMENT: u64 = 32;
/// ggml tensors have at most this many dimensions.
pub const MAX_DIMS: usize = 4;
/// Deepest array nesting accepted (arrays of arrays of …); real files use 1.
pub const MAX_ARRAY_DEPTH: usize = 8;

/// One tensor's header entry. `shape` is in ggml order: `shape[0]` is the contiguous
/// (row) dimension, so a weight for `out × in` has `shape == [in, out]`.
#[derive(Debug, Clone, PartialEq)]
pub struct TensorInfo {
    pub name: String,
    pub shape: Vec<u64>,
    pub ggml_type: GgmlType,
    /// Offset of the data relative to the start of the data section.
    pub offset: u64,
    /// Size of the data in bytes.
    pub size: u64,
}

impl TensorInfo {
    pub fn n_elements(&self) -> u64 {
        // Checked at parse time not to overflow.
        self.shape.iter().product()
    }
}

enum Storage {
    Mapped(Mmap),
    Owned(Vec<u8>),
}

impl Storage {
    fn bytes(&self) -> &[u8] {
        match self {
            Storage::Mapped(m) => m,
            Storage::Owned(v) => v,
        }
    }
}

/// A parsed GGUF file whose tensor data stays memory-mapped.
pub struct GgufFile {
    path: PathBuf,
    storage: Storage,
    version: u32,
    metadata: Vec<(String, MetaValue)>,
    key_index: HashMap<String, usize>,
    tensors: Vec<TensorInfo>,
    tensor_index: HashMap<String, usize>,
    alignment: u64,
    data_offset: u64,
    tensor_info_range: Range<usize>,
}

impl std::fmt::Debug for GgufFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GgufFile")
            .field("path", &self.path)
            .field("version", &self.version)
            .field("n_metadata", &self.metadata.len())
            .field("n_tensors", &self.tensors.len())
            .finish()
    }
}

impl GgufFile {
    /// Maps and parses `path`.
    pub fn open(path: impl AsRef<Path>) -> Result<Self, GgufError> {
        let path = path.as_ref().to_path_buf();
        let file = File::open(&path)
            .map_err(|source| GgufError::Io { path: path.clone(), action: "cannot open", source })?;
        // SAFETY: the map is read-only. Another process truncating the file while it is
        // mapped would fault on access; that is the accepted contract of every mmap-based
        // model loader (llama.cpp included) and cannot be prevented from user space.
        let mmap = unsafe { Mmap::map(&file) }
            .map_err(|source| GgufError::Io { path: path.clone(), action: "cannot map", source })?;
        Self::parse(path, Storage::Mapped(mmap))
    }

    /// Parses a GGUF image held in memory; `path` is only used in error messages.
    pub fn from_bytes(path: impl AsRef<Path>, bytes: Vec<u8>) -> Result<Self, GgufError> {
        Self::parse(path.as_ref().to_path_buf(), Storage::Owned(bytes))
    }

    fn parse(path: PathBuf, storage: Storage) -> Result<Self, GgufError> {
        let bytes = storage.bytes();
        let mut cur = Cursor { path: &path, bytes, pos: 0 };

        let magic: [u8; 4] = cur.take(4, || "magic".into())?.try_into().expect("took 4 bytes");
        if magic != GGUF_MAGIC {
            return Err(GgufError::BadMagic { path: path.clone(), found: magic });
        }
        let version = cur.u32(|| "version".into())?;
        if version != 2 && version != 3 {
            let hint = if version == 1 {
                "; version 1 files predate 64-bit counts: re-convert the model"
            } else if version.swap_bytes() == 2 || version.swap_bytes() == 3 {
                "; this looks like a big-endian file, which is not supported"
            } else {
                ""
            };
            return Err(GgufError::UnsupportedVersion { path: path.clone(), found: version, hint });
        }
        let n_tensors = cur.u64(|| "tensor count".into())?;
        let n_kv = cur.u64(|| "metadata count".into())?;
        // Each tensor info is at least name length (8) + n_dims (4) + type (4) + offset (8).
        cur.check_count(n_tensors, 24, "tensor")?;
        cur.check_count(n_kv, 8 + 4 + 1, "metadata")?;

        let mut metadata = Vec::new();
        let mut key_index = HashMap::new();
        for _ in 0..n_kv {
            let key = cur.string(|| "metadata key".into())?;
            let raw_type = cur.u32(|| format!("type of metadata {key:?}"))?;
            let vt = ValueType::from_u32(raw_type).ok_or_else(|| GgufError::UnknownValueType {
                path: path.clone(),
                key: key.clone(),
                found: raw_type,
            })?;
            let value = cur.value(vt, &key, 0)?;
            if key_index.insert(key.clone(), metadata.len()).is_some() {
                return Err(GgufError::DuplicateKey { path: path.clone(), key });
            }
            metadata.push((key, value));
        }

        let alignment = match key_index.get("general.alignment") {
            None => DEFAULT_ALIGNMENT,
            Some(&i) => match metadata[i].1 {
                MetaValue::U32(a) if a != 0 && a.is_power_of_two() => u64::from(a),
                ref other => {
                    return Err(GgufError::WrongValue {
                        path: path.clone(),
                        key: "general.alignment".into(),
                        expected: "a u32 power of two".into(),
                        found: format!("{} {}", other.value_type().name(), other.summary()),
                    })
                }
            },
        };

        let info_start = cur.pos;
        let mut tensors = Vec::new();
        let mut tensor_index = HashMap::new();
        for _ in 0..n_tensors {
            let info = cur.tensor_info()?;
            if tensor_index.insert(info.name.clone(), tensors.len()).is_some() {
                return Err(GgufError::DuplicateTensor { path: path.clone(), name: info.name });
            }
            tensors.push(info);
        }
        let tensor_info_range = info_start..cur.pos;

        let file_len = bytes.len() as u64;
        let data_offset = align_up(cur.pos as u64, alignment).unwrap_or(u64::MAX);
        if data_offset > file_len && !tensors.is_empty() {
            return Err(GgufError::Truncated {
                path: path.clone(),
                what: "padding before the tensor data".into(),
                offset: cur.pos as u64,
                needed: data_offset - cur.pos as u64,
                available: file_len - cur.pos as u64,
            });
        }
        for t in &tensors {
            if t.offset % alignment != 0 {
                return Err(GgufError::BadTensor {
                    path: path.clone(),
                    name: t.name.clone(),
                    reason: format!("data offset {} is not a multiple of the alignment {alignment}", t.offset),
                });
            }
            let start = data_offset.checked_add(t.offset);
            let end = start.and_then(|s| s.checked_add(t.size));
            match (start, end) {
                (Some(_), Some(end)) if end <= file_len => {}
                _ => {
                    return Err(GgufError::TensorOutOfBounds {
                        path: path.clone(),
                        name: t.name.clone(),
                        start: start.unwrap_or(u64::MAX),
                        end: end.unwrap_or(u64::MAX),
                        file_len,
                    })
                }
            }
        }

        Ok(GgufFile {
            path: path.clone(),
            storage,
            version,
            metadata,
            key_index,
            tensors,
            tensor_index,
            alignment,
            data_offset,
            tensor_info_range,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
    pub fn version(&self) -> u32 {
        self.version
    }
    pub fn alignment(&self) -> u64 {
        self.alignment
    }
    /// Absolute file offset of the data section.
    pub fn data_offset(&self) -> u64 {
        self.data_offset
    }
    /// Size of the whole file in bytes.
    pub fn file_len(&self) -> u64 {
        self.storage.bytes().len() as u64
    }
    /// Metadata in file order.
    pub fn metadata(&self) -> &[(String, MetaValue)] {
        &self.metadata
    }
    pub fn get(&self, key: &str) -> Option<&MetaValue> {
        self.key_index.get(key).map(|&i| &self.metadata[i].1)
    }
    /// Tensor infos in file order.
    pub fn tensors(&self) -> &[TensorInfo] {
        &self.tensors
    }
    pub fn tensor(&self, name: &str) -> Option<&TensorInfo> {
        self.tensor_index.get(name).map(|&i| &self.tensors[i])
    }

    /// A tensor's bytes, borrowed from the map. Bounds were checked at parse time.
    pub fn tensor_data(&self, info: &TensorInfo) -> &[u8] {
        let start = (self.data_offset + info.offset) as usize;
        &self.storage.bytes()[start..start + info.size as usize]
    }

    /// The bytes of the named tensor, or an error naming it.
    pub fn tensor_bytes(&self, name: &str) -> Result<(&TensorInfo, &[u8]), GgufError> {
        let info = self.tensor(name).ok_or_else(|| GgufError::MissingTensor {
            path: self.path.clone(),
            name: name.to_string(),
        })?;
        Ok((info, self.tensor_data(info)))
    }

    /// A required string field.
    pub fn require_str(&self, key: &str) -> Result<&str, GgufError> {
        match self.get(key) {
            None => Err(GgufError::MissingKey { path: self.path.clone(), key: key.into() }),
            Some(MetaValue::String(s)) => Ok(s),
            Some(other) => Err(self.wrong(key, "a string", other)),
        }
    }

    /// A required non-negative integer field (any integer width).
    pub fn require_u64(&self, key: &str) -> Result<u64, GgufError> {
        match self.get(key) {
            None => Err(GgufError::MissingKey { path: self.path.clone(), key: key.into() }),
            Some(v) => v.as_u64().ok_or_else(|| self.wrong(key, "a non-negative integer", v)),
        }
    }

    /// A required float field (float or integer types).
    pub fn require_f64(&self, key: &str) -> Result<f64, GgufError> {
        match self.get(key) {
            None => Err(GgufError::MissingKey { path: self.path.clone(), key: key.into() }),
            Some(v) => v.as_f64().ok_or_else(|| self.wrong(key, "a number", v)),
        }
    }

    fn wrong(&self, key: &str, expected: &str, found: &MetaValue) -> GgufError {
        GgufError::WrongValue {
            path: self.path.clone(),
            key: key.into(),
            expected: expected.into(),
            found: format!("{} {}", found.value_type().name(), found.summary()),
        }
    }

    /// `general.architecture`.
    pub fn architecture(&self) -> Result<&str, GgufError> {
        self.require_str("general.architecture")
    }

    /// sha256 (hex) of the tensor-info section: names, shapes, types and offsets of every
    /// tensor. Identifies a base model's layout without hashing its weights.
    pub fn tensor_info_fingerprint(&self) -> String {
        let digest = Sha256::digest(&self.storage.bytes()[self.tensor_info_range.clone()]);
        digest.iter().map(|b| format!("{b:02x}")).collect()
    }

    /// Total bytes of tensor data.
    pub fn tensor_bytes_total(&self) -> u64 {
        self.tensors.iter().map(|t| t.size).sum()
    }
}

/// Rounds `v` up to a multiple of `align` (a power of two); `None` on overflow.
pub fn align_up(v: u64, align: u64) -> Option<u64> {
    Some(v.checked_add(align - 1)? & !(align - 1))
}

/// A bounds-checked little-endian reader over the file image.
struct Cursor<'a> {
    path: &'a Path,
    bytes: &'a [u8],
    pos: usize,
}

impl<'a> Cursor<'a> {
    fn remaining(&self) -> u64 {
        (self.bytes.len() - self.pos) as u64
    }

    /// `what` names the field in an error; it is only formatted when one occurs.
    fn take(&mut self, n: u64, what: impl Fn() -> String) -> Result<&'a [u8], GgufError> {
        if n > self.remaining() {
            return Err(GgufError::Truncated {
                path: self.path.to_path_buf(),
                what: what(),
                offset: self.pos as u64,
                needed: n,
                available: self.remaining(),
            });
        }
        let s = &self.bytes[self.pos..self.pos + n as usize];
        self.pos += n as usize;
        Ok(s)
    }

    /// Rejects a count whose items, at `min_size` bytes each, cannot fit in what is left.
    fn check_count(&self, count: u64, min_size: u64, what: &str) -> Result<(), GgufError> {
        match count.checked_mul(min_size) {
            Some(n) if n <= self.remaining() => Ok(()),
            _ => Err(GgufError::AbsurdCount {
                path: self.path.to_path_buf(),
                what: what.to_string(),
                count,
                min_size,
                available: self.remaining(),
            }),
        }
    }

    fn array<const N: usize>(&mut self, what: impl Fn() -> String) -> Result<[u8; N], GgufError> {
        Ok(self.take(N as u64, what)?.try_into().expect("took N bytes"))
    }
    fn u32(&mut self, what: impl Fn() -> String) -> Result<u32, GgufError> {
        Ok(u32::from_le_bytes(self.array(what)?))
    }
    fn u64(&mut self, what: impl Fn() -> String) -> Result<u64, GgufError> {
        Ok(u64::from_le_bytes(self.array(what)?))
    }

    fn string(&mut self, what: impl Fn() -> String) -> Result<String, GgufError> {
        let len = self.u64(|| format!("length of {}", what()))?;
        let raw = self.take(len, &what)?;
        String::from_utf8(raw.to_vec()).map_err(|_| GgufError::InvalidUtf8 {
            path: self.path.to_path_buf(),
            what: format!("{} at byte {}", what(), self.pos as u64 - len),
        })
    }

    fn value(&mut self, vt: ValueType, key: &str, depth: usize) -> Result<MetaValue, GgufError> {
        let what = || format!("value of metadata {key:?}");
        Ok(match vt {
            ValueType::U8 => MetaValue::U8(self.array::<1>(what)?[0]),
            ValueType::I8 => MetaValue::I8(self.array::<1>(what)?[0] as i8),
            ValueType::U16 => MetaValue::U16(u16::from_le_bytes(self.array(what)?)),
            ValueType::I16 => MetaValue::I16(i16::from_le_bytes(self.array(what)?)),
            ValueType::U32 => MetaValue::U32(u32::from_le_bytes(self.array(what)?)),
            ValueType::I32 => MetaValue::I32(i32::from_le_bytes(self.array(what)?)),
            ValueType::F32 => MetaValue::F32(f32::from_le_bytes(self.array(what)?)),
            ValueType::U64 => MetaValue::U64(u64::from_le_bytes(self.array(what)?)),
            ValueType::I64 => MetaValue::I64(i64::from_le_bytes(self.array(what)?)),
            ValueType::F64 => MetaValue::F64(f64::from_le_bytes(self.array(what)?)),
            ValueType::Bool => match self.array::<1>(what)?[0] {
                0 => MetaValue::Bool(false),
                1 => MetaValue::Bool(true),
                b => {
                    return Err(GgufError::WrongValue {
                        path: self.path.to_path_buf(),
                        key: key.into(),
                        expected: "a bool (0 or 1)".into(),
                        found: format!("byte {b}"),
                    })
                }
            },
            ValueType::String => MetaValue::String(self.string(what)?),
            ValueType::Array => {
                if depth >= MAX_ARRAY_DEPTH {
                    return Err(GgufError::NestingTooDeep {
                        path: self.path.to_path_buf(),
                        key: key.into(),
                        max: MAX_ARRAY_DEPTH,
                    });
                }
                let raw = self.u32(|| format!("element type of metadata {key:?}"))?;
                let et = ValueType::from_u32(raw).ok_or_else(|| GgufError::UnknownValueType {
                    path: self.path.to_path_buf(),
                    key: key.into(),
                    found: raw,
                })?;
                let n = self.u64(|| format!("length of metadata {key:?}"))?;
                self.check_count(n, et.min_encoded_size(), &format!("array {key:?} element"))?;
                // Bounded by the bytes left, checked just above.
                let mut items = Vec::with_capacity(n as usize);
                for _ in 0..n {
                    items.push(self.value(et, key, depth + 1)?);
                }
                MetaValue::Array(et, items)
            }
        })
    }

    fn tensor_info(&mut self) -> Result<TensorInfo, GgufError> {
        let name = self.string(|| "tensor name".into())?;
        let path = self.path;
        let bad = |reason: String| GgufError::BadTensor {
            path: path.to_path_buf(),
            name: name.clone(),
            reason,
        };
        let n_dims = self.u32(|| format!("dimension count of tensor {name:?}"))?;
        if n_dims == 0 || n_dims as usize > MAX_DIMS {
            return Err(bad(format!("{n_dims} dimensions (expected 1..={MAX_DIMS})")));
        }
        let mut shape = Vec::with_capacity(n_dims as usize);
        for _ in 0..n_dims {
            shape.push(self.u64(|| format!("shape of tensor {name:?}"))?);
        }
        let raw_type = self.u32(|| format!("type of tensor {name:?}"))?;
        let offset = self.u64(|| format!("offset of tensor {name:?}"))?;
        let ggml_type = GgmlType::from_u32(raw_type).ok_or_else(|| GgufError::UnknownTensorType {
            path: path.to_path_buf(),
            name: name.clone(),
            found: raw_type,
        })?;
        let n_elements = shape
            .iter()
            .try_fold(1u64, |acc, &d| acc.checked_mul(d))
            .filter(|&n| n <= i64::MAX as u64)
            .ok_or_else(|| bad(format!("shape {shape:?} overflows the element count")))?;
        if shape[0] % ggml_type.block_size() != 0 {
            return Err(bad(format!(
                "row length {} is not a multiple of the {} block size {}",
                shape[0],
                ggml_type,
                ggml_type.block_size()
            )));
        }
        let size = ggml_type
            .bytes_for(n_elements)
            .ok_or_else(|| bad(format!("shape {shape:?} of type {ggml_type} overflows the byte size")))?;
        Ok(TensorInfo { name, shape, ggml_type, offset, size })
    }
}
