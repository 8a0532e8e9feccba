//! PEFT reader: the input is split (first 2 bytes little-endian = config length,
//! clamped) into `adapter_config.json` and `adapter_model.safetensors` bytes, read with
//! `read_peft_bytes` against the default model and the tiny model, strict and lenient;
//! an `Ok` or an `Err`, never a panic. Lenient never rejects what strict accepts.
#![no_main]

use std::path::Path;

use edgelora::adapter::{read_peft_bytes, ReadOptions};
use libfuzzer_sys::fuzz_target;

fuzz_target!(
    init: {
        edgelora_fuzz::default_model();
        edgelora_fuzz::tiny_model();
    },
    |data: &[u8]| {
        let (config, weights) = edgelora_fuzz::split_peft(data);
        let dir = Path::new("fuzz-peft");
        for base in [edgelora_fuzz::default_model(), edgelora_fuzz::tiny_model()] {
            let strict = read_peft_bytes(dir, config, weights, base, ReadOptions { lenient: false });
            let lenient = read_peft_bytes(dir, config, weights, base, ReadOptions { lenient: true });
            if let Ok((a, warnings)) = &strict {
                assert!(warnings.is_empty(), "strict read returned warnings");
                let (b, _) = lenient.as_ref().expect("lenient accepts what strict accepts");
                assert_eq!(a.tensors, b.tensors);
            }
        }
    }
);
