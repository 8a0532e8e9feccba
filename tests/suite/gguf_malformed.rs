//! Malformed GGUF files: each gives its typed error, none panics.

use edgelora::gguf::GgufFile;
use edgelora::GgufError;

/// A hand-built GGUF image where every field can be wrong on purpose.
#[derive(Clone)]
struct Img {
    version: u32,
    n_tensors: Option<u64>,
    n_kv: Option<u64>,
    kvs: Vec<Vec<u8>>,
    tensors: Vec<Vec<u8>>,
    data: Vec<u8>,
    alignment: u64,
}

fn s(v: &str) -> Vec<u8> {
    let mut b = (v.len() as u64).to_le_bytes().to_vec();
    b.extend_from_slice(v.as_bytes());
    b
}

fn kv(key: &str, vtype: u32, value: &[u8]) -> Vec<u8> {
    let mut b = s(key);
    b.extend_from_slice(&vtype.to_le_bytes());
    b.extend_from_slice(value);
    b
}

fn tensor(name: &str, dims: &[u64], ttype: u32, offset: u64) -> Vec<u8> {
    let mut b = s(name);
    b.extend_from_slice(&(dims.len() as u32).to_le_bytes());
    for d in dims {
        b.extend_from_slice(&d.to_le_bytes());
    }
    b.extend_from_slice(&ttype.to_le_bytes());
    b.extend_from_slice(&offset.to_le_bytes());
    b
}

impl Img {
    /// A valid file: one string key, two f32 tensors of 8 elements.
    fn valid() -> Img {
        Img {
            version: 3,
            n_tensors: None,
            n_kv: None,
            kvs: vec![kv("general.architecture", 8, &s("llama"))],
            tensors: vec![tensor("a", &[8], 0, 0), tensor("b", &[8], 0, 32)],
            data: vec![1u8; 64],
            alignment: 32,
        }
    }

    fn bytes(&self) -> Vec<u8> {
        let mut b = b"GGUF".to_vec();
        b.extend_from_slice(&self.version.to_le_bytes());
        b.extend_from_slice(&self.n_tensors.unwrap_or(self.tensors.len() as u64).to_le_bytes());
        b.extend_from_slice(&self.n_kv.unwrap_or(self.kvs.len() as u64).to_le_bytes());
        for k in &self.kvs {
            b.extend_from_slice(k);
        }
        for t in &self.tensors {
            b.extend_from_slice(t);
        }
        while !(b.len() as u64).is_multiple_of(self.alignment) {
            b.push(0);
        }
        b.extend_from_slice(&self.data);
        b
    }

    fn parse(&self) -> Result<GgufFile, GgufError> {
        GgufFile::from_bytes("test.gguf", self.bytes())
    }
}

fn err(img: &Img) -> GgufError {
    match img.parse() {
        Ok(_) => panic!("malformed image parsed"),
        Err(e) => e,
    }
}

#[test]
fn the_valid_image_parses() {
    let f = Img::valid().parse().unwrap();
    assert_eq!(f.tensors().len(), 2);
    assert_eq!(f.tensor_bytes("b").unwrap().1, &[1u8; 32][..]);
}

#[test]
fn every_truncation_is_an_error() {
    let full = Img::valid().bytes();
    for len in 0..full.len() {
        let r = GgufFile::from_bytes("t.gguf", full[..len].to_vec());
        assert!(r.is_err(), "truncated to {len} bytes parsed");
    }
    // Counts that the rest of a short file cannot hold are caught before parsing them.
    let e = GgufFile::from_bytes("t.gguf", full[..30].to_vec()).unwrap_err();
    assert!(matches!(e, GgufError::AbsurdCount { .. }), "{e}");
    // Cut inside the first tensor info (which spans bytes 69..102).
    let e = GgufFile::from_bytes("t.gguf", full[..100].to_vec()).unwrap_err();
    assert!(matches!(e, GgufError::Truncated { ref what, .. } if what.contains("\"a\"")), "{e}");
    let e = GgufFile::from_bytes("t.gguf", full[..full.len() - 1].to_vec()).unwrap_err();
    assert!(matches!(e, GgufError::TensorOutOfBounds { ref name, .. } if name == "b"), "{e}");
}

#[test]
fn bad_magic_and_versions() {
    let mut b = Img::valid().bytes();
    b[..4].copy_from_slice(b"GGML");
    let e = GgufFile::from_bytes("t.gguf", b).unwrap_err();
    assert!(matches!(e, GgufError::BadMagic { found, .. } if &found == b"GGML"), "{e}");
    for v in [1, 4, 0x0300_0000] {
        let e = err(&Img { version: v, ..Img::valid() });
        assert!(matches!(e, GgufError::UnsupportedVersion { found, .. } if found == v), "{e}");
    }
    let e = err(&Img { version: 0x0300_0000, ..Img::valid() });
    assert!(e.to_string().contains("big-endian"), "{e}");
}

#[test]
fn absurd_counts_are_rejected_before_allocating() {
    let e = err(&Img { n_tensors: Some(u64::MAX), ..Img::valid() });
    assert!(matches!(e, GgufError::AbsurdCount { .. }), "{e}");
    let e = err(&Img { n_kv: Some(1 << 60), ..Img::valid() });
    assert!(matches!(e, GgufError::AbsurdCount { .. }), "{e}");
    // An array claiming 2^62 u64 elements.
    let mut arr = 10u32.to_le_bytes().to_vec();
    arr.extend_from_slice(&(1u64 << 62).to_le_bytes());
    let e = err(&Img { kvs: vec![kv("big", 9, &arr)], ..Img::valid() });
    assert!(matches!(e, GgufError::AbsurdCount { ref what, .. } if what.contains("big")), "{e}");
    // A string claiming u64::MAX bytes.
    let mut huge = u64::MAX.to_le_bytes().to_vec();
    huge.extend_from_slice(b"x");
    let e = err(&Img { kvs: vec![kv("s", 8, &huge)], ..Img::valid() });
    assert!(matches!(e, GgufError::Truncated { .. }), "{e}");
    // A tensor whose shape overflows the element count.
    let e = err(&Img { tensors: vec![tensor("x", &[1 << 40, 1 << 40], 0, 0)], ..Img::valid() });
    assert!(matches!(e, GgufError::BadTensor { ref name, .. } if name == "x"), "{e}");
}

#[test]
fn offsets_past_the_end() {
    let e = err(&Img { tensors: vec![tensor("a", &[8], 0, 0), tensor("b", &[8], 0, 1 << 20)], ..Img::valid() });
    assert!(matches!(e, GgufError::TensorOutOfBounds { ref name, .. } if name == "b"), "{e}");
    let e = err(&Img { tensors: vec![tensor("a", &[8], 0, u64::MAX - 31)], ..Img::valid() });
    assert!(matches!(e, GgufError::TensorOutOfBounds { .. }), "{e}");
    let e = err(&Img { tensors: vec![tensor("a", &[8], 0, 4)], ..Img::valid() });
    assert!(matches!(e, GgufError::BadTensor { ref reason, .. } if reason.contains("alignment")), "{e}");
}

#[test]
fn unknown_types() {
    for t in [4u32, 5, 31, 40, 1000] {
        let e = err(&Img { tensors: vec![tensor("a", &[8], t, 0)], ..Img::valid() });
        assert!(matches!(e, GgufError::UnknownTensorType { found, ref name, .. } if found == t && name == "a"), "{e}");
    }
    let e = err(&Img { kvs: vec![kv("k", 13, &[0; 8])], ..Img::valid() });
    assert!(matches!(e, GgufError::UnknownValueType { found: 13, ref key, .. } if key == "k"), "{e}");
    let mut arr = 77u32.to_le_bytes().to_vec();
    arr.extend_from_slice(&1u64.to_le_bytes());
    let e = err(&Img { kvs: vec![kv("k", 9, &arr)], ..Img::valid() });
    assert!(matches!(e, GgufError::UnknownValueType { found: 77, .. }), "{e}");
    let e = err(&Img { kvs: vec![kv("k", 7, &[2])], ..Img::valid() });
    assert!(matches!(e, GgufError::WrongValue { .. }), "bool byte 2: {e}");
}

#[test]
fn duplicate_names() {
    let e = err(&Img { tensors: vec![tensor("a", &[8], 0, 0), tensor("a", &[8], 0, 32)], ..Img::valid() });
    assert!(matches!(e, GgufError::DuplicateTensor { ref name, .. } if name == "a"), "{e}");
    let k = kv("general.architecture", 8, &s("llama"));
    let e = err(&Img { kvs: vec![k.clone(), k], ..Img::valid() });
    assert!(matches!(e, GgufError::DuplicateKey { ref key, .. } if key == "general.architecture"), "{e}");
}

#[test]
fn bad_shapes_alignment_and_nesting() {
    let e = err(&Img { tensors: vec![tensor("a", &[1, 1, 1, 1, 1], 0, 0)], ..Img::valid() });
    assert!(matches!(e, GgufError::BadTensor { ref reason, .. } if reason.contains("5 dimensions")), "{e}");
    let e = err(&Img { tensors: vec![tensor("a", &[], 0, 0)], ..Img::valid() });
    assert!(matches!(e, GgufError::BadTensor { .. }), "{e}");
    // Q4_0 rows must be whole blocks of 32.
    let e = err(&Img { tensors: vec![tensor("a", &[33], 2, 0)], ..Img::valid() });
    assert!(matches!(e, GgufError::BadTensor { ref reason, .. } if reason.contains("block size")), "{e}");
    let e = err(&Img { kvs: vec![kv("general.alignment", 4, &3u32.to_le_bytes())], ..Img::valid() });
    assert!(matches!(e, GgufError::WrongValue { ref key, .. } if key == "general.alignment"), "{e}");
    // Arrays nested 100 deep.
    let mut v = Vec::new();
    for _ in 0..100 {
        v.extend_from_slice(&9u32.to_le_bytes());
        v.extend_from_slice(&1u64.to_le_bytes());
    }
    v.extend_from_slice(&0u32.to_le_bytes());
    v.extend_from_slice(&0u64.to_le_bytes());
    let mut value = Vec::new();
    value.extend_from_slice(&v[..]);
    let e = err(&Img { kvs: vec![kv("deep", 9, &value)], ..Img::valid() });
    assert!(matches!(e, GgufError::NestingTooDeep { .. }), "{e}");
    // Invalid UTF-8 in a key.
    let mut bad = 2u64.to_le_bytes().to_vec();
    bad.extend_from_slice(&[0xff, 0xfe]);
    bad.extend_from_slice(&4u32.to_le_bytes());
    bad.extend_from_slice(&0u32.to_le_bytes());
    let e = err(&Img { kvs: vec![bad], ..Img::valid() });
    assert!(matches!(e, GgufError::InvalidUtf8 { .. }), "{e}");
}

#[test]
fn random_corruption_never_panics() {
    use rand::{Rng, SeedableRng};
    let base = Img::valid().bytes();
    let header_len = base.len() - 64;
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(7);
    let mut n_err = 0;
    for _ in 0..20_000 {
        let mut b = base.clone();
        for _ in 0..rng.random_range(1..4) {
            let i = rng.random_range(0..header_len);
            b[i] = rng.random();
        }
        if GgufFile::from_bytes("fuzz.gguf", b).is_err() {
            n_err += 1;
        }
    }
    assert!(n_err > 1000, "corruption was mostly accepted ({n_err} errors)");
}

#[test]
fn a_missing_file_names_its_path() {
    let e = GgufFile::open("/nonexistent/dir/model.gguf").unwrap_err().to_string();
    assert!(e.contains("/nonexistent/dir/model.gguf") && e.contains("cannot open"), "{e}");
}
