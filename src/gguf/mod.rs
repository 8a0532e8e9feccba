//! GGUF: a memory-mapped reader with zero-copy tensor views, and a streaming, atomic
//! writer. Spec: ggml's `docs/gguf.md` (versions 2 and 3, little-endian).

mod reader;
mod types;
mod writer;

pub use reader::{align_up, GgufFile, TensorInfo, DEFAULT_ALIGNMENT, MAX_ARRAY_DEPTH, MAX_DIMS};
pub use types::{GgmlType, MetaValue, ValueType};
pub use writer::{temp_path_for, GgufWriter, TensorSpec};

/// Writes a copy of `src` (metadata, tensor infos and data) to `dst` through the
/// streaming writer, tensor by tensor from the map. A file written by ggml's or the
/// Python writer comes out byte-identical.
pub fn rewrite(src: &GgufFile, dst: impl AsRef<std::path::Path>) -> Result<(), crate::error::GgufError> {
    let specs: Vec<TensorSpec> = src
        .tensors()
        .iter()
        .map(|t| TensorSpec::new(t.name.clone(), &t.shape, t.ggml_type))
        .collect();
    let mut w = GgufWriter::create_with_version(dst, src.version(), src.metadata(), &specs)?;
    for t in src.tensors() {
        w.write_tensor(&t.name, src.tensor_data(t))?;
    }
    w.finish()?;
    Ok(())
}
