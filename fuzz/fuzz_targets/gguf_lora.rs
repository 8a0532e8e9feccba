//! GGUF-LoRA reader: bytes parsed as GGUF, then `read_gguf_lora`, then on `Ok`
//! `validate` against the default model's header and the tiny model; every step an `Ok`
//! or an `Err`, never a panic. An accepted adapter is also written back as GGUF-LoRA
//! (f32, f16) and re-read: the writer must not panic on anything the reader accepted.
#![no_main]

use std::path::Path;

use edgelora::adapter::{gguf_lora_bytes, read_gguf_lora, validate, GgufLoraDtype};
use edgelora::gguf::GgufFile;
use libfuzzer_sys::fuzz_target;

fuzz_target!(
    init: {
        edgelora_fuzz::default_model();
        edgelora_fuzz::tiny_model();
    },
    |data: &[u8]| {
        let Ok(f) = GgufFile::from_bytes("fuzz.gguf", data.to_vec()) else { return };
        let Ok(adapter) = read_gguf_lora(&f) else { return };
        for (name, t) in &adapter.tensors {
            assert!(t.rank >= 1, "{name}: rank 0 accepted");
            assert_eq!(t.a.len(), t.rank * t.n_in, "{name}: A length");
            assert_eq!(t.b.len(), t.n_out * t.rank, "{name}: B length");
            assert!(t.a.iter().chain(&t.b).all(|x| x.is_finite()), "{name}: non-finite weight accepted");
            assert!(t.scale.is_finite(), "{name}: non-finite scale {} accepted", t.scale);
        }
        let origin = Path::new("fuzz.gguf");
        for base in [edgelora_fuzz::default_model(), edgelora_fuzz::tiny_model()] {
            if let Ok(summary) = validate(&adapter, base, origin) {
                assert!(!summary.targets.is_empty());
            }
        }
        std::hint::black_box((adapter.fingerprint(), adapter.ranks(), adapter.nominal_rank(), adapter.target_modules()));
        for dtype in [GgufLoraDtype::F32, GgufLoraDtype::F16] {
            if let Ok(bytes) = gguf_lora_bytes(&adapter, dtype) {
                if let Ok(g) = GgufFile::from_bytes("fuzz-rewritten.gguf", bytes) {
                    let _ = read_gguf_lora(&g);
                }
            }
        }
    }
);
