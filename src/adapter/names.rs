//! HF ↔ GGUF tensor names per architecture, and the llama q/k row permutation.
//!
//! One table per architecture maps HF module paths (`model.layers.{i}.self_attn.q_proj`)
//! to GGUF weight names (`blk.{i}.attn_q.weight`). llama.cpp's converter permutes the
//! rows of q_proj/k_proj for the `llama` architecture (interleaved RoPE); a LoRA B for
//! those weights must be permuted the same way going to GGUF, and back going to PEFT.

/// (HF module suffix after the layer prefix, GGUF module name).
type ModuleMap = &'static [(&'static str, &'static str)];

const SEPARATE: ModuleMap = &[
    ("self_attn.q_proj", "attn_q"),
    ("self_attn.k_proj", "attn_k"),
    ("self_attn.v_proj", "attn_v"),
    ("self_attn.o_proj", "attn_output"),
    ("mlp.gate_proj", "ffn_gate"),
    ("mlp.up_proj", "ffn_up"),
    ("mlp.down_proj", "ffn_down"),
];

/// Phi-3 keeps q/k/v and gate/up fused in both HF and GGUF (`attn_qkv`, `ffn_up` with
/// gate and up rows stacked), so a LoRA on the fused HF module maps to the fused tensor.
const PHI3: ModuleMap = &[
    ("self_attn.qkv_proj", "attn_qkv"),
    ("self_attn.o_proj", "attn_output"),
    ("mlp.gate_up_proj", "ffn_up"),
    ("mlp.down_proj", "ffn_down"),
];

/// What edgelora knows of an architecture's names.
#[derive(Debug, Clone, Copy)]
pub struct ArchNames {
    pub arch: &'static str,
    modules: ModuleMap,
    /// q/k rows are permuted by llama.cpp's converter.
    pub permute_qk: bool,
}

const ARCHS: &[ArchNames] = &[
    ArchNames { arch: "llama", modules: SEPARATE, permute_qk: true },
    ArchNames { arch: "qwen2", modules: SEPARATE, permute_qk: false },
    ArchNames { arch: "qwen3", modules: SEPARATE, permute_qk: false },
    ArchNames { arch: "gemma3", modules: SEPARATE, permute_qk: false },
    ArchNames { arch: "phi3", modules: PHI3, permute_qk: false },
];

/// HF layer prefixes, tried in order (gemma3's multimodal checkpoints nest the text model).
const LAYER_PREFIXES: &[&str] = &["model.layers.", "model.language_model.layers.", "language_model.model.layers."];

impl ArchNames {
    /// Names for a GGUF architecture, or `None` if edgelora has no table for it.
    pub fn for_arch(arch: &str) -> Option<ArchNames> {
        ARCHS.iter().find(|a| a.arch == arch).copied()
    }

    /// Architectures with a table.
    pub fn known() -> Vec<&'static str> {
        ARCHS.iter().map(|a| a.arch).collect()
    }

    /// `model.layers.3.self_attn.q_proj` → `blk.3.attn_q.weight`; `lm_head` →
    /// `output.weight`. `Err` says why a path has no GGUF name.
    pub fn hf_to_gguf(&self, hf: &str) -> Result<String, String> {
        if hf == "lm_head" {
            return Ok("output.weight".into());
        }
        let rest = LAYER_PREFIXES
            .iter()
            .find_map(|p| hf.strip_prefix(p))
            .ok_or_else(|| format!("module {hf:?} is not inside a decoder layer (expected model.layers.N.…)"))?;
        let (layer, module) = rest.split_once('.').ok_or_else(|| format!("module {hf:?} has no name after its layer number"))?;
        let layer: usize = layer.parse().map_err(|_| format!("module {hf:?}: {layer:?} is not a layer number"))?;
        let gguf = self.modules.iter().find(|(h, _)| *h == module).map(|(_, g)| *g).ok_or_else(|| {
            let known: Vec<&str> = self.modules.iter().map(|(h, _)| *h).collect();
            format!("module {module:?} has no {} equivalent (known: {})", self.arch, known.join(", "))
        })?;
        Ok(format!("blk.{layer}.{gguf}.weight"))
    }

    /// The short names (`q_proj`, …, `lm_head`) PEFT's `target_modules` can use.
    pub fn short_modules(&self) -> Vec<&'static str> {
        let mut v: Vec<&'static str> = self.modules.iter().map(|(h, _)| short_module(h)).collect();
        v.push("lm_head");
        v
    }

    /// Whether PEFT's `target_modules` entry `target` (a module name or a dotted suffix
    /// of one, as PEFT matches them) names a linear module of a model of this
    /// architecture with `n_layer` layers.
    pub fn names_module(&self, target: &str, n_layer: usize) -> bool {
        let dotted_suffix = |full: &str, t: &str| full == t || full.ends_with(&format!(".{t}"));
        if dotted_suffix("lm_head", target) {
            return true;
        }
        self.modules.iter().any(|(h, _)| {
            if n_layer > 0 && dotted_suffix(h, target) {
                return true;
            }
            // `<…layer prefix>.<N>.<module>`: the part before the module ends in a layer
            // number below n_layer, after a dotted suffix of one of the layer prefixes.
            let Some(rest) = target.strip_suffix(h).and_then(|r| r.strip_suffix('.')) else { return false };
            let (head, layer) = rest.rsplit_once('.').map_or(("", rest), |(a, b)| (a, b));
            let in_range = layer.parse::<usize>().is_ok_and(|l| l < n_layer) && !layer.starts_with('+');
            in_range && (head.is_empty() || LAYER_PREFIXES.iter().any(|p| dotted_suffix(p.trim_end_matches('.'), head)))
        })
    }

    /// Every linear module path of a model with `n_layer` layers, under each known layer
    /// prefix, and `lm_head` (for matching a `target_modules` regex).
    pub fn module_paths(&self, n_layer: usize) -> Vec<String> {
        let mut v = vec!["lm_head".to_string()];
        for p in LAYER_PREFIXES {
            for l in 0..n_layer {
                v.extend(self.modules.iter().map(|(h, _)| format!("{p}{l}.{h}")));
            }
        }
        v
    }

    /// `blk.3.attn_q.weight` → `model.layers.3.self_attn.q_proj`.
    pub fn gguf_to_hf(&self, gguf: &str) -> Option<String> {
        if gguf == "output.weight" {
            return Some("lm_head".into());
        }
        let rest = gguf.strip_prefix("blk.")?.strip_suffix(".weight")?;
        let (layer, module) = rest.split_once('.')?;
        let layer: usize = layer.parse().ok()?;
        let hf = self.modules.iter().find(|(_, g)| *g == module).map(|(h, _)| *h)?;
        Some(format!("model.layers.{layer}.{hf}"))
    }

    /// Whether `gguf` is a q or k weight whose rows llama.cpp permuted, and with how many
    /// heads (q: `head_count`, k: `head_count_kv`).
    pub fn qk_heads(&self, gguf: &str, n_head: usize, n_head_kv: usize) -> Option<usize> {
        if !self.permute_qk {
            return None;
        }
        if gguf.ends_with(".attn_q.weight") {
            Some(n_head)
        } else if gguf.ends_with(".attn_k.weight") {
            Some(n_head_kv)
        } else {
            None
        }
    }
}

/// The HF module's short name (`q_proj`) used in `target_modules`.
pub fn short_module(hf: &str) -> &str {
    hf.rsplit('.').next().unwrap_or(hf)
}

/// Permutes the rows of a `[n_out, cols]` row-major matrix as llama.cpp's converter
/// permutes q/k weights: within each of `n_head` heads, rows `[half 0 | half 1]` become
/// interleaved pairs. `inverse` undoes it. `Err` when `n_out` is not heads × even size.
pub fn permute_qk_rows(m: &[f32], n_out: usize, cols: usize, n_head: usize, inverse: bool) -> Result<Vec<f32>, String> {
    if n_head == 0 || !n_out.is_multiple_of(n_head) || !(n_out / n_head).is_multiple_of(2) || m.len() != n_out * cols {
        return Err(format!("{n_out} rows cannot be split into {n_head} heads of an even size"));
    }
    let head_dim = n_out / n_head;
    let half = head_dim / 2;
    let mut out = vec![0f32; m.len()];
    for h in 0..n_head {
        for i in 0..2 {
            for j in 0..half {
                // HF row (h, i, j) ↔ GGUF row (h, j, i).
                let hf = h * head_dim + i * half + j;
                let gg = h * head_dim + 2 * j + i;
                let (src, dst) = if inverse { (gg, hf) } else { (hf, gg) };
                out[dst * cols..(dst + 1) * cols].copy_from_slice(&m[src * cols..(src + 1) * cols]);
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        let llama = ArchNames::for_arch("llama").unwrap();
        for (hf, gg) in [
            ("model.layers.3.self_attn.q_proj", "blk.3.attn_q.weight"),
            ("model.layers.12.mlp.down_proj", "blk.12.ffn_down.weight"),
            ("lm_head", "output.weight"),
        ] {
            assert_eq!(llama.hf_to_gguf(hf).unwrap(), gg);
            assert_eq!(llama.gguf_to_hf(gg).unwrap(), hf);
        }
        let phi3 = ArchNames::for_arch("phi3").unwrap();
        assert_eq!(phi3.hf_to_gguf("model.layers.0.self_attn.qkv_proj").unwrap(), "blk.0.attn_qkv.weight");
        assert!(phi3.hf_to_gguf("model.layers.0.self_attn.q_proj").unwrap_err().contains("qkv_proj"));
        assert!(llama.hf_to_gguf("model.embed_tokens").is_err());
        assert!(ArchNames::for_arch("mamba").is_none());
    }

    #[test]
    fn target_names_are_checked_against_the_architecture() {
        let llama = ArchNames::for_arch("llama").unwrap();
        for t in ["q_proj", "self_attn.q_proj", "down_proj", "lm_head", "model.layers.3.mlp.up_proj", "layers.3.mlp.up_proj", "3.mlp.up_proj"] {
            assert!(llama.names_module(t, 4), "{t}");
        }
        for t in ["qkv_proj", "proj", "self_attn", "model.layers.4.mlp.up_proj", "model.layers.x.mlp.up_proj", "foo.3.mlp.up_proj", "embed_tokens"] {
            assert!(!llama.names_module(t, 4), "{t}");
        }
        assert!(ArchNames::for_arch("phi3").unwrap().names_module("qkv_proj", 2));
        assert_eq!(llama.module_paths(2).len(), 1 + 3 * 2 * 7);
    }

    #[test]
    fn permutation_matches_the_converter_and_inverts() {
        // 2 heads of size 4, one column: HF rows [0 1 2 3 | 4 5 6 7] → [0 2 1 3 | 4 6 5 7].
        let m: Vec<f32> = (0..8).map(|x| x as f32).collect();
        let p = permute_qk_rows(&m, 8, 1, 2, false).unwrap();
        assert_eq!(p, [0., 2., 1., 3., 4., 6., 5., 7.]);
        assert_eq!(permute_qk_rows(&p, 8, 1, 2, true).unwrap(), m);
        let wide: Vec<f32> = (0..8 * 3).map(|x| x as f32).collect();
        let back = permute_qk_rows(&permute_qk_rows(&wide, 8, 3, 2, false).unwrap(), 8, 3, 2, true).unwrap();
        assert_eq!(back, wide);
        assert!(permute_qk_rows(&m, 8, 1, 3, false).is_err());
    }
}
