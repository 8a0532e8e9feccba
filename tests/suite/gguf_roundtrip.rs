//! GGUF reader and writer on the real model and on files with every metadata type.

use std::fs;

use edgelora::gguf::{self, GgmlType, GgufFile, GgufWriter, MetaValue, TensorSpec, ValueType};

use crate::common::{model_gguf, model_path, tmpdir};

#[test]
fn parses_the_default_model() {
    let f = model_gguf();
    assert_eq!(f.version(), 3);
    assert_eq!(f.architecture().unwrap(), "llama");
    assert_eq!(f.require_u64("llama.block_count").unwrap(), 30);
    assert_eq!(f.require_u64("llama.embedding_length").unwrap(), 576);
    assert_eq!(f.require_u64("llama.attention.head_count").unwrap(), 9);
    assert_eq!(f.require_u64("llama.attention.head_count_kv").unwrap(), 3);
    // Tied embeddings: SmolLM2 has no output.weight.
    assert!(f.tensor("output.weight").is_none());
    let emb = f.tensor("token_embd.weight").unwrap();
    assert_eq!(emb.shape, vec![576, 49152]);
    let q = f.tensor("blk.0.attn_q.weight").unwrap();
    assert_eq!(q.shape, vec![576, 576]);
    assert_eq!(q.ggml_type, GgmlType::Q4_1);
    assert_eq!(q.size, 576 * 576 / 32 * 20);
    match f.get("tokenizer.ggml.tokens") {
        Some(MetaValue::Array(ValueType::String, items)) => assert_eq!(items.len(), 49152),
        other => panic!("tokenizer.ggml.tokens: {other:?}"),
    }
    // Data section: every tensor's bytes lie in the file, back to back.
    let end = f.tensors().iter().map(|t| f.data_offset() + t.offset + t.size).max().unwrap();
    assert!(end <= f.file_len());
    assert_eq!(f.tensor_data(q).len() as u64, q.size);
    assert_eq!(f.tensor_info_fingerprint().len(), 64);
}

#[test]
fn rewriting_the_default_model_is_byte_identical() {
    let dir = tmpdir();
    let out = dir.path().join("copy.gguf");
    gguf::rewrite(model_gguf(), &out).unwrap();
    let a = fs::read(model_path()).unwrap();
    let b = fs::read(&out).unwrap();
    assert_eq!(a.len(), b.len(), "sizes differ");
    let first_diff = a.iter().zip(&b).position(|(x, y)| x != y);
    assert_eq!(first_diff, None, "first differing byte");
}

fn every_kind_of_metadata() -> Vec<(String, MetaValue)> {
    use MetaValue::*;
    vec![
        ("general.architecture".into(), String("llama".into())),
        ("t.u8".into(), U8(200)),
        ("t.i8".into(), I8(-100)),
        ("t.u16".into(), U16(60000)),
        ("t.i16".into(), I16(-30000)),
        ("t.u32".into(), U32(4_000_000_000)),
        ("t.i32".into(), I32(-2_000_000_000)),
        ("t.f32".into(), F32(1.5)),
        ("t.bool".into(), Bool(true)),
        ("t.string".into(), String("héllo ✓".into())),
        ("t.u64".into(), U64(u64::MAX)),
        ("t.i64".into(), I64(i64::MIN)),
        ("t.f64".into(), F64(-2.25e300)),
        ("t.empty_array".into(), Array(ValueType::F32, vec![])),
        ("t.strings".into(), Array(ValueType::String, vec![String("a".into()), String("".into())])),
        (
            "t.nested".into(),
            Array(ValueType::Array, vec![Array(ValueType::I32, vec![I32(1), I32(-2)]), Array(ValueType::Bool, vec![Bool(false)])]),
        ),
        ("general.alignment".into(), U32(64)),
    ]
}

#[test]
fn write_read_round_trip_with_every_metadata_type() {
    let dir = tmpdir();
    let path = dir.path().join("t.gguf");
    let meta = every_kind_of_metadata();
    let a: Vec<u8> = (0..6 * 20u32).map(|i| (i * 7 % 251) as u8).collect();
    let b: Vec<u8> = (0..5 * 4u32).map(|i| i as u8).collect();
    let specs = vec![
        TensorSpec::new("a", &[64, 3], GgmlType::Q4_1),
        TensorSpec::new("b", &[5], GgmlType::F32),
    ];
    assert_eq!(a.len(), 64 * 3 / 32 * 20);
    let mut w = GgufWriter::create(&path, &meta, &specs).unwrap();
    w.write_tensor_chunk("a", &a[..50]).unwrap();
    w.write_tensor_chunk("a", &a[50..]).unwrap();
    w.end_tensor("a").unwrap();
    w.write_tensor("b", &b).unwrap();
    w.finish().unwrap();

    let f = GgufFile::open(&path).unwrap();
    assert_eq!(f.metadata(), &meta[..]);
    assert_eq!(f.alignment(), 64);
    assert_eq!(f.data_offset() % 64, 0);
    let (ia, da) = f.tensor_bytes("a").unwrap();
    assert_eq!((ia.shape.clone(), ia.ggml_type, da), (vec![64, 3], GgmlType::Q4_1, &a[..]));
    let (ib, db) = f.tensor_bytes("b").unwrap();
    assert_eq!(ib.offset % 64, 0);
    assert_eq!(db, &b[..]);
    // Version 2 files are read too.
    let p2 = dir.path().join("v2.gguf");
    let mut w = GgufWriter::create_with_version(&p2, 2, &meta, &specs).unwrap();
    w.write_tensor("a", &a).unwrap();
    w.write_tensor("b", &b).unwrap();
    w.finish().unwrap();
    let f2 = GgufFile::open(&p2).unwrap();
    assert_eq!(f2.version(), 2);
    assert_eq!(f2.metadata(), &meta[..]);
}

#[test]
fn an_unfinished_writer_leaves_no_file() {
    let dir = tmpdir();
    let path = dir.path().join("partial.gguf");
    let specs = vec![TensorSpec::new("a", &[4], GgmlType::F32), TensorSpec::new("b", &[4], GgmlType::F32)];
    {
        let mut w = GgufWriter::create(&path, &[], &specs).unwrap();
        w.write_tensor("a", &[0u8; 16]).unwrap();
        // Dropped here, as on an error or a panic, before `b` and finish().
    }
    assert!(!path.exists());
    assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 0, "temporary file left behind");

    // finish() with a tensor missing is an error naming it, and leaves nothing either.
    let mut w = GgufWriter::create(&path, &[], &specs).unwrap();
    w.write_tensor("a", &[0u8; 16]).unwrap();
    let err = w.finish().unwrap_err().to_string();
    assert!(err.contains("\"b\""), "{err}");
    assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 0);
}

#[test]
fn writer_rejects_wrong_sizes_and_order() {
    let dir = tmpdir();
    let path = dir.path().join("x.gguf");
    let specs = vec![TensorSpec::new("a", &[4], GgmlType::F32), TensorSpec::new("b", &[4], GgmlType::F32)];
    let mut w = GgufWriter::create(&path, &[], &specs).unwrap();
    let err = w.write_tensor("b", &[0u8; 16]).unwrap_err().to_string();
    assert!(err.contains("\"a\" comes next"), "{err}");
    let err = w.write_tensor("a", &[0u8; 12]).unwrap_err().to_string();
    assert!(err.contains("12 bytes given, expected 16"), "{err}");
    drop(w);
    let bad = vec![TensorSpec::new("q", &[33], GgmlType::Q4_0)];
    let err = GgufWriter::create(&path, &[], &bad).err().unwrap().to_string();
    assert!(err.contains("\"q\""), "{err}");
    let dup = vec![TensorSpec::new("a", &[4], GgmlType::F32), TensorSpec::new("a", &[4], GgmlType::F32)];
    assert!(GgufWriter::create(&path, &[], &dup).is_err());
    assert!(!path.exists());
}

#[test]
#[cfg(feature = "llama")]
fn block_sizes_match_ggml() {
    for t in GgmlType::ALL {
        let id = t as u32;
        // SAFETY: plain queries of ggml's static type-traits table for a valid type id.
        let (blck, size) = unsafe { (llama_cpp_sys_2::ggml_blck_size(id as _), llama_cpp_sys_2::ggml_type_size(id as _)) };
        assert_eq!((t.block_size(), t.type_size()), (blck as u64, size as u64), "{t}");
    }
}
