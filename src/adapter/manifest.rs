//! The adapter manifest: who made an adapter, for which base, from what data and with
//! which settings. Kept through every conversion.
//!
//! In GGUF-LoRA files each field is a metadata key `edgelora.manifest.<field>` (strings;
//! `hyperparameters` is a JSON string), plus the derived keys `edgelora.manifest.targets`
//! (string array of module names), `.rank` (u32, the most common rank) and `.alpha`
//! (f32, the file's `adapter.lora.alpha`); `lineage` is a JSON string too. In PEFT folders the whole manifest is one JSON
//! string under the safetensors metadata key `edgelora.manifest`.

use serde::{Deserialize, Serialize};

use crate::gguf::{GgufFile, MetaValue};

/// Documented manifest fields; all optional.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    /// Adapter name, e.g. `finance`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Adapter version, free-form (`1.2.0`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    /// The base model's `general.name`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub base_model: Option<String>,
    /// sha256 of the base model's GGUF tensor-info section (names, shapes, types).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub base_fingerprint: Option<String>,
    /// Creation time, RFC 3339 UTC.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub created: Option<String>,
    /// sha256 of the training data, when edgelora trained the adapter.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub data_fingerprint: Option<String>,
    /// Training hyper-parameters (JSON object), when known.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hyperparameters: Option<serde_json::Value>,
    /// What training measured (steps, final train/eval loss, tokens, wall time), when
    /// edgelora trained the adapter.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub training: Option<serde_json::Value>,
    /// Where the adapter came from (`peft:<path>`, `compose:cat`, …).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
    /// The training round, its parent adapter and its data, when edgelora trained it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lineage: Option<Lineage>,
}

/// Where a trained adapter comes from: `edgelora adapter history` follows `parent`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Lineage {
    /// 1 for an adapter trained from scratch, the parent's round + 1 for a continuation.
    pub round: u32,
    /// The adapter this one continued (`train --init-adapter`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parent: Option<ParentRef>,
    /// This round's training data: the new records and any replayed earlier ones.
    #[serde(default)]
    pub data: Vec<DataRef>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ParentRef {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    /// The parent's content fingerprint (`LoraAdapter::fingerprint`).
    pub fingerprint: String,
    /// sha256 of the parent's file (a GGUF-LoRA file, or a PEFT folder's
    /// `adapter_model.safetensors`): how `history` recognizes it without a base model.
    pub file_sha256: String,
    /// The path the parent was given as at training time.
    pub path: String,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct DataRef {
    pub path: String,
    /// sha256 of the file (as `train::data::fingerprint` of that one file).
    pub fingerprint: String,
    /// `new` or `replay`.
    pub role: String,
    /// A replayed file's share of every batch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fraction: Option<f64>,
}

pub const GGUF_PREFIX: &str = "edgelora.manifest.";

impl Manifest {
    /// Fills the base-model fields from a base GGUF.
    pub fn set_base(&mut self, base: &GgufFile) {
        self.base_model = base.get("general.name").and_then(MetaValue::as_str).map(str::to_string);
        self.base_fingerprint = Some(base.tensor_info_fingerprint());
    }

    /// Sets `created` to now, if unset.
    pub fn stamp(&mut self) {
        if self.created.is_none() {
            self.created = Some(now_rfc3339());
        }
    }

    /// The manifest's own fields as GGUF metadata (derived keys are added by the writer).
    pub fn to_gguf(&self) -> Vec<(String, MetaValue)> {
        let mut out = Vec::new();
        let mut put = |k: &str, v: &Option<String>| {
            if let Some(v) = v {
                out.push((format!("{GGUF_PREFIX}{k}"), MetaValue::String(v.clone())));
            }
        };
        put("name", &self.name);
        put("version", &self.version);
        put("base_model", &self.base_model);
        put("base_fingerprint", &self.base_fingerprint);
        put("created", &self.created);
        put("data_fingerprint", &self.data_fingerprint);
        put("source", &self.source);
        if let Some(h) = &self.hyperparameters {
            out.push((format!("{GGUF_PREFIX}hyperparameters"), MetaValue::String(h.to_string())));
        }
        if let Some(t) = &self.training {
            out.push((format!("{GGUF_PREFIX}training"), MetaValue::String(t.to_string())));
        }
        if let Some(l) = &self.lineage {
            out.push((format!("{GGUF_PREFIX}lineage"), MetaValue::String(serde_json::to_string(l).expect("lineage serializes"))));
        }
        out
    }

    /// Reads the manifest fields from GGUF metadata (absent keys stay `None`).
    pub fn from_gguf(f: &GgufFile) -> Manifest {
        let get = |k: &str| f.get(&format!("{GGUF_PREFIX}{k}")).and_then(MetaValue::as_str).map(str::to_string);
        Manifest {
            name: get("name"),
            version: get("version"),
            base_model: get("base_model"),
            base_fingerprint: get("base_fingerprint"),
            created: get("created"),
            data_fingerprint: get("data_fingerprint"),
            hyperparameters: get("hyperparameters").and_then(|s| serde_json::from_str(&s).ok()),
            training: get("training").and_then(|s| serde_json::from_str(&s).ok()),
            source: get("source"),
            lineage: get("lineage").and_then(|s| serde_json::from_str(&s).ok()),
        }
    }
}

/// The current UTC time as `YYYY-MM-DDTHH:MM:SSZ`.
pub fn now_rfc3339() -> String {
    let secs = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let (days, rem) = (secs / 86_400, secs % 86_400);
    // Civil date from days since 1970-01-01 (proleptic Gregorian).
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!("{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z", rem / 3600, rem % 3600 / 60, rem % 60)
}
