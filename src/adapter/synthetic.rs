//! Adapters with random weights of a chosen shape, for tests, benches and demos.

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use super::manifest::Manifest;
use super::model::{FactorDtype, LoraAdapter, LoraTensor};
use crate::gguf::GgufFile;

/// The seven projections of a llama-family block, by GGUF name.
pub const ALL_LINEAR: [&str; 7] = ["attn_q", "attn_k", "attn_v", "attn_output", "ffn_gate", "ffn_up", "ffn_down"];

/// Factors for every `blk.*.<module>.weight` of `base` whose module is in `modules`:
/// A and B uniform in ±`amplitude` from `seed`, scale `alpha / rank`.
pub fn random_lora(base: &GgufFile, modules: &[&str], rank: usize, alpha: f32, amplitude: f32, seed: u64) -> LoraAdapter {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut out = LoraAdapter::new(base.architecture().unwrap_or("unknown"));
    for t in base.tensors() {
        let Some(rest) = t.name.strip_prefix("blk.") else { continue };
        let Some(module) = rest.split('.').nth(1) else { continue };
        if !t.name.ends_with(".weight") || t.shape.len() != 2 || !modules.contains(&module) {
            continue;
        }
        let (n_in, n_out) = (t.shape[0] as usize, t.shape[1] as usize);
        let mut draw = |n: usize| (0..n).map(|_| rng.random_range(-amplitude..=amplitude)).collect::<Vec<f32>>();
        let a = draw(rank * n_in);
        let b = draw(n_out * rank);
        out.tensors.insert(t.name.clone(), LoraTensor { rank, n_in, n_out, a, b, scale: alpha / rank as f32, dtype: FactorDtype::F32 });
    }
    out.manifest = Manifest { name: Some(format!("synthetic-r{rank}-seed{seed}")), source: Some("synthetic".into()), ..Manifest::default() };
    out.manifest.set_base(base);
    out
}
