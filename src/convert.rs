//! Whole-model type conversion. Today: dequantize every float tensor to F32 — the
//! reference model that parity checks run on, since llama.cpp computes an F32 model
//! without quantizing activations. Streamed one tensor at a time through the atomic
//! writer. (Merging adapters and requantizing belong to the merge issue.)

use std::path::Path;

use crate::error::{Error, GgufError};
use crate::gguf::{GgmlType, GgufFile, GgufWriter, MetaValue, TensorSpec};
use crate::quant;

/// `general.file_type` value for "all F32" (llama.cpp's LLAMA_FTYPE_ALL_F32).
const FTYPE_ALL_F32: u32 = 0;

fn is_float(t: GgmlType) -> bool {
    !matches!(t, GgmlType::I8 | GgmlType::I16 | GgmlType::I32 | GgmlType::I64 | GgmlType::F64)
}

/// Writes `src` to `dst` with every float tensor dequantized to F32; metadata is kept
/// (with `general.file_type` set to all-F32), integer tensors are copied.
pub fn dequantize_model(src: &GgufFile, dst: impl AsRef<Path>) -> Result<(), Error> {
    let dst = dst.as_ref();
    let mut metadata = src.metadata().to_vec();
    match metadata.iter_mut().find(|(k, _)| k == "general.file_type") {
        Some((_, v)) => *v = MetaValue::U32(FTYPE_ALL_F32),
        None => metadata.push(("general.file_type".into(), MetaValue::U32(FTYPE_ALL_F32))),
    }
    let out_type = |t: GgmlType| if is_float(t) { GgmlType::F32 } else { t };
    let specs: Vec<TensorSpec> =
        src.tensors().iter().map(|t| TensorSpec::new(t.name.clone(), &t.shape, out_type(t.ggml_type))).collect();
    let mut w = GgufWriter::create_with_version(dst, src.version(), &metadata, &specs)?;
    for t in src.tensors() {
        let data = src.tensor_data(t);
        if !is_float(t.ggml_type) {
            w.write_tensor(&t.name, data)?;
            continue;
        }
        let mut f = vec![0f32; t.n_elements() as usize];
        quant::dequantize(t.ggml_type, data, &mut f).map_err(|e| GgufError::BadTensor {
            path: src.path().to_path_buf(),
            name: t.name.clone(),
            reason: e.to_string(),
        })?;
        w.write_tensor(&t.name, bytemuck::cast_slice(&f))?;
    }
    w.finish()?;
    Ok(())
}
