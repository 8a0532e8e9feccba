//! The in-memory adapter: per base tensor (GGUF name) the factors A `[r, in]` and B
//! `[out, r]` (row-major, PEFT's orientation), the rank and the effective scale, plus the
//! manifest. ΔW = scale·B·A has the base weight's shape `[out, in]` (ggml `ne=[in, out]`).
//!
//! Factors are held as f32 with the storage type they came in (`dtype`): f16 and bf16
//! widen to f32 exactly, so every supported source round-trips without loss.

use std::collections::BTreeMap;

use super::manifest::Manifest;

/// The storage type a tensor's factors were read in (and are written in by default).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FactorDtype {
    F32,
    F16,
    BF16,
    /// GGUF's Q8_0 (read only; written as f16).
    Q8_0,
}

/// One target's LoRA factors.
#[derive(Debug, Clone, PartialEq)]
pub struct LoraTensor {
    pub rank: usize,
    pub n_in: usize,
    pub n_out: usize,
    /// `[rank, n_in]`, row-major.
    pub a: Vec<f32>,
    /// `[n_out, rank]`, row-major.
    pub b: Vec<f32>,
    /// Effective scale s: ΔW = s·B·A.
    pub scale: f32,
    pub dtype: FactorDtype,
}

impl LoraTensor {
    /// y += s·B·(A·x) for one input row x (`n_in`) into y (`n_out`), in f64. A reference
    /// used by tests and composition checks, not a fast path.
    pub fn apply_f64(&self, x: &[f64], y: &mut [f64]) {
        let mut ax = vec![0f64; self.rank];
        for (j, v) in ax.iter_mut().enumerate() {
            let row = &self.a[j * self.n_in..(j + 1) * self.n_in];
            *v = row.iter().zip(x).map(|(a, x)| f64::from(*a) * x).sum();
        }
        for (o, yo) in y.iter_mut().enumerate() {
            let row = &self.b[o * self.rank..(o + 1) * self.rank];
            *yo += f64::from(self.scale) * row.iter().zip(&ax).map(|(b, v)| f64::from(*b) * v).sum::<f64>();
        }
    }

    /// The dense delta s·B·A as `[n_out, n_in]` in f64 (small tensors only: tests).
    pub fn delta_f64(&self) -> Vec<f64> {
        let mut d = vec![0f64; self.n_out * self.n_in];
        for o in 0..self.n_out {
            for j in 0..self.rank {
                let b = f64::from(self.scale) * f64::from(self.b[o * self.rank + j]);
                for i in 0..self.n_in {
                    d[o * self.n_in + i] += b * f64::from(self.a[j * self.n_in + i]);
                }
            }
        }
        d
    }
}

/// A LoRA adapter for one base architecture.
#[derive(Debug, Clone, PartialEq)]
pub struct LoraAdapter {
    /// GGUF `general.architecture` of the base model (`llama`, `qwen2`, …).
    pub architecture: String,
    /// Base tensor name (`blk.3.attn_q.weight`) → factors.
    pub tensors: BTreeMap<String, LoraTensor>,
    pub manifest: Manifest,
    /// The PEFT `adapter_config.json` this adapter was read from, kept so that an
    /// unchanged adapter is written back with the same configuration.
    pub peft_config: Option<serde_json::Value>,
    /// Identity of this value (not of its contents): the GPU forward keeps device copies
    /// of the factors under it. Fresh for every adapter and every clone; not compared.
    id: AdapterId,
}

/// A process-unique number per [`LoraAdapter`] value; clones get a new one, and it takes
/// no part in equality.
#[derive(Debug)]
struct AdapterId(u64);

impl AdapterId {
    fn fresh() -> AdapterId {
        static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
        AdapterId(NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed))
    }
}

impl Clone for AdapterId {
    fn clone(&self) -> Self {
        AdapterId::fresh()
    }
}

impl PartialEq for AdapterId {
    fn eq(&self, _: &Self) -> bool {
        true
    }
}

impl LoraAdapter {
    pub fn new(architecture: impl Into<String>) -> Self {
        LoraAdapter { architecture: architecture.into(), tensors: BTreeMap::new(), manifest: Manifest::default(), peft_config: None, id: AdapterId::fresh() }
    }

    /// This value's identity (see the field): device copies of its factors are keyed by
    /// it, so an adapter must not be changed in place after a GPU forward has used it.
    pub fn id(&self) -> u64 {
        self.id.0
    }

    /// Distinct ranks with how many tensors have each.
    pub fn ranks(&self) -> BTreeMap<usize, usize> {
        let mut m = BTreeMap::new();
        for t in self.tensors.values() {
            *m.entry(t.rank).or_default() += 1;
        }
        m
    }

    /// The most common rank (the adapter's nominal `r`).
    pub fn nominal_rank(&self) -> usize {
        self.ranks().into_iter().max_by_key(|&(r, n)| (n, std::cmp::Reverse(r))).map_or(0, |(r, _)| r)
    }

    /// Module names targeted (`attn_q`, `ffn_down`, … for `blk.*` tensors; the full
    /// name otherwise), sorted and unique.
    pub fn target_modules(&self) -> Vec<String> {
        let mut v: Vec<String> = self
            .tensors
            .keys()
            .map(|n| match n.strip_prefix("blk.").and_then(|r| r.split('.').nth(1)) {
                Some(m) => m.to_string(),
                None => n.clone(),
            })
            .collect();
        v.sort();
        v.dedup();
        v
    }

    /// sha256 (hex) of the adapter's content: every tensor's name, shape, scale and
    /// factors. Identifies what was merged, whatever file it came from.
    pub fn fingerprint(&self) -> String {
        use sha2::{Digest, Sha256};
        let mut h = Sha256::new();
        h.update(self.architecture.as_bytes());
        for (name, t) in &self.tensors {
            h.update(name.as_bytes());
            for v in [t.rank, t.n_in, t.n_out] {
                h.update((v as u64).to_le_bytes());
            }
            h.update(t.scale.to_le_bytes());
            for v in [&t.a, &t.b] {
                // The f32 values' little-endian bytes, hashed in bulk.
                if cfg!(target_endian = "little") {
                    h.update(bytemuck::cast_slice::<f32, u8>(v));
                } else {
                    v.iter().for_each(|x| h.update(x.to_le_bytes()));
                }
            }
        }
        h.finalize().iter().map(|b| format!("{b:02x}")).collect()
    }

    /// Multiplies every tensor's scale by `w` (a weighted copy).
    pub fn scaled(&self, w: f32) -> LoraAdapter {
        let mut out = self.clone();
        for t in out.tensors.values_mut() {
            t.scale *= w;
        }
        out
    }
}
