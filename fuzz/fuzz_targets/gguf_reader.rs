//! GGUF reader: any bytes give a `GgufFile` or an `Err`, never a panic, and an `Ok`
//! file can be touched everywhere (metadata summaries, every tensor's bytes, model
//! checks, fingerprint, dequantization) without one either.
#![no_main]

use edgelora::gguf::GgufFile;
use libfuzzer_sys::fuzz_target;

/// Dequantize tensors up to this many elements (f32 output: 4 bytes each).
const MAX_DEQUANT_ELEMENTS: u64 = 1 << 20;

fuzz_target!(|data: &[u8]| {
    let Ok(f) = GgufFile::from_bytes("fuzz.gguf", data.to_vec()) else { return };
    assert!(f.data_offset() <= f.file_len() || f.tensors().is_empty());
    for (key, value) in f.metadata() {
        std::hint::black_box(value.summary());
        std::hint::black_box((value.as_u64(), value.as_f64(), value.as_str()));
        assert!(f.get(key).is_some(), "metadata key {key:?} listed but not found");
    }
    for t in f.tensors() {
        let (info, bytes) = f.tensor_bytes(&t.name).expect("a listed tensor is found by name");
        assert_eq!(bytes.len() as u64, info.size, "tensor {:?}", info.name);
        assert!(info.size <= f.file_len(), "tensor {:?} larger than the file", info.name);
        assert_eq!(info.ggml_type.bytes_for(info.n_elements()), Some(info.size));
        if edgelora::quant::can_dequantize(info.ggml_type) && info.n_elements() <= MAX_DEQUANT_ELEMENTS {
            let mut out = vec![0f32; info.n_elements() as usize];
            let _ = edgelora::quant::dequantize(info.ggml_type, bytes, &mut out);
        }
    }
    let _ = f.architecture();
    let _ = f.require_u64("general.alignment");
    let _ = f.require_f64("general.alignment");
    let _ = f.require_str("general.name");
    let _ = edgelora::model::validate::check_model(&f);
    let _ = edgelora::model::validate::check_vocab(&f, None);
    std::hint::black_box(f.tensor_info_fingerprint());
    std::hint::black_box(f.tensor_bytes_total());
});
