//! Checkpoints: one safetensors file holding every LoRA factor and its two AdamW moments
//! (f32), with the trainer's state (completed steps, configuration, fingerprints) as
//! JSON metadata. Written to a temporary file, synced and renamed: a crash never leaves a
//! partial checkpoint under the final name.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use safetensors::{Dtype, SafeTensors};
use serde::{Deserialize, Serialize};

use super::optim::Moments;
use super::trainer::TrainConfig;
use crate::error::{Error, TrainError};
use crate::model::grad::{LoraParam, LoraParams};

pub const FILE_NAME: &str = "checkpoint.safetensors";
const META_KEY: &str = "edgelora.checkpoint";

/// Everything but the tensors.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CheckpointState {
    pub format: u32,
    /// Optimizer steps completed.
    pub step: usize,
    pub total_steps: usize,
    pub config: TrainConfig,
    pub base_fingerprint: String,
    pub data_fingerprint: String,
    /// Shapes and scales per parameter (name → [rank, n_in, n_out], scale).
    pub shapes: Vec<(String, [usize; 3], f32)>,
}

pub struct Checkpoint {
    pub state: CheckpointState,
    pub params: LoraParams<f32>,
    pub moments: Moments,
}

fn bad(path: &Path, reason: impl Into<String>) -> Error {
    TrainError::Checkpoint { path: path.to_path_buf(), reason: reason.into() }.into()
}

/// The checkpoint file inside a checkpoint directory.
pub fn file_in(dir: &Path) -> PathBuf {
    dir.join(FILE_NAME)
}

pub fn save(dir: &Path, ck: &Checkpoint) -> Result<(), Error> {
    let path = file_in(dir);
    std::fs::create_dir_all(dir).map_err(|e| bad(&path, format!("creating the directory: {e}")))?;
    let mut tensors: Vec<(String, Vec<usize>, Vec<u8>)> = Vec::new();
    for (name, p) in &ck.params {
        let (m, v) = (&ck.moments.m[name], &ck.moments.v[name]);
        for (suffix, data, shape) in [
            ("a", &p.a, [p.rank, p.n_in]),
            ("b", &p.b, [p.n_out, p.rank]),
            ("m_a", &m.a, [p.rank, p.n_in]),
            ("m_b", &m.b, [p.n_out, p.rank]),
            ("v_a", &v.a, [p.rank, p.n_in]),
            ("v_b", &v.b, [p.n_out, p.rank]),
        ] {
            tensors.push((format!("{name}.{suffix}"), shape.to_vec(), bytemuck::cast_slice(data).to_vec()));
        }
    }
    let views: Vec<(String, safetensors::tensor::TensorView<'_>)> = tensors
        .iter()
        .map(|(k, shape, data)| safetensors::tensor::TensorView::new(Dtype::F32, shape.clone(), data).map(|v| (k.clone(), v)).map_err(|e| bad(&path, format!("{k}: {e}"))))
        .collect::<Result<_, _>>()?;
    let meta = HashMap::from([(META_KEY.to_string(), serde_json::to_string(&ck.state).expect("state serializes"))]);
    let bytes = safetensors::serialize(views, Some(meta)).map_err(|e| bad(&path, format!("serializing: {e}")))?;
    crate::fsutil::atomic_write(&path, &bytes).map_err(|e| bad(&path, format!("writing: {e}")))
}

pub fn load(dir: &Path) -> Result<Checkpoint, Error> {
    let path = if dir.is_file() { dir.to_path_buf() } else { file_in(dir) };
    let bytes = std::fs::read(&path).map_err(|e| bad(&path, format!("reading: {e}")))?;
    let (_, meta) = SafeTensors::read_metadata(&bytes).map_err(|e| bad(&path, format!("not a safetensors file: {e}")))?;
    let st = SafeTensors::deserialize(&bytes).map_err(|e| bad(&path, format!("not a safetensors file: {e}")))?;
    let json = meta.metadata().as_ref().and_then(|m| m.get(META_KEY)).ok_or_else(|| bad(&path, format!("no {META_KEY} metadata: not an edgelora checkpoint")))?;
    let state: CheckpointState = serde_json::from_str(json).map_err(|e| bad(&path, format!("bad {META_KEY} metadata: {e}")))?;
    if state.format != 1 {
        return Err(bad(&path, format!("format {} (this edgelora reads 1)", state.format)));
    }
    let get = |name: &str, n: usize| -> Result<Vec<f32>, Error> {
        let t = st.tensor(name).map_err(|_| bad(&path, format!("tensor {name} is missing")))?;
        if t.dtype() != Dtype::F32 || t.data().len() != 4 * n {
            return Err(bad(&path, format!("tensor {name}: {:?} with {} bytes, expected F32 with {} elements", t.dtype(), t.data().len(), n)));
        }
        Ok(t.data().chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect())
    };
    let (mut params, mut m, mut v) = (LoraParams::new(), LoraParams::new(), LoraParams::new());
    for (name, [rank, n_in, n_out], scale) in &state.shapes {
        let (na, nb) = (rank * n_in, n_out * rank);
        let mk = |a, b| LoraParam { rank: *rank, n_in: *n_in, n_out: *n_out, scale: *scale, a, b };
        params.insert(name.clone(), mk(get(&format!("{name}.a"), na)?, get(&format!("{name}.b"), nb)?));
        m.insert(name.clone(), mk(get(&format!("{name}.m_a"), na)?, get(&format!("{name}.m_b"), nb)?));
        v.insert(name.clone(), mk(get(&format!("{name}.v_a"), na)?, get(&format!("{name}.v_b"), nb)?));
    }
    Ok(Checkpoint { state, params, moments: Moments { m, v } })
}
