//! Our tokenizer (`edgelora::tokenizer`) against llama.cpp: the reference tokenizations
//! llama.cpp ships with its vocabulary-only GGUFs (`models/fetch-vocabs`), llama.cpp's own
//! tokenizer on the same files (vocab-only loads through the sys crate) and on the default
//! model through our llama.cpp engine, typed errors for vocabularies we refuse, and chat
//! templates.

#[cfg(feature = "llama")]
use std::ffi::CString;
use std::path::{Path, PathBuf};

#[cfg(feature = "llama")]
use edgelora::engine::llama_cpp;
use edgelora::gguf::{GgufFile, GgufWriter, MetaValue, ValueType};
use edgelora::tokenizer::{TokenAttr, Tokenizer, TokenizerError, VocabKind};
#[cfg(feature = "llama")]
use llama_cpp_sys_2 as sys;
use rand::{Rng, SeedableRng};

use crate::common::{model_gguf, model_path, tmpdir};

// ---------------------------------------------------------------------------------------
// Files

fn vocab_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("models").join("vocab")
}

/// A fetched vocabulary file; a missing one fails the test with the command that fetches it.
fn vocab_file(name: &str) -> PathBuf {
    let p = vocab_dir().join(name);
    assert!(p.exists(), "{} is missing: run `models/fetch-vocabs` first", p.display());
    p
}

fn vocab_path(vocab: &str) -> PathBuf {
    vocab_file(&format!("ggml-vocab-{vocab}.gguf"))
}

fn open_tokenizer(path: &Path) -> Tokenizer {
    let gguf = GgufFile::open(path).unwrap_or_else(|e| panic!("{e}"));
    Tokenizer::from_gguf(&gguf).unwrap_or_else(|e| panic!("{e}"))
}

/// The `.inp`/`.out` pairs as llama.cpp's test-tokenizer-0 reads them: texts separated by
/// `\n__ggml_vocab_test__\n`, one line of space-separated ids per text.
fn reference_cases(vocab: &str) -> Vec<(String, Vec<i32>)> {
    let inp = std::fs::read_to_string(vocab_file(&format!("ggml-vocab-{vocab}.gguf.inp"))).expect("read .inp");
    let out = std::fs::read_to_string(vocab_file(&format!("ggml-vocab-{vocab}.gguf.out"))).expect("read .out");
    let sep = "\n__ggml_vocab_test__\n";
    let mut texts = Vec::new();
    let mut pos = 0;
    while pos < inp.len() {
        match inp[pos..].find(sep) {
            Some(i) => {
                texts.push(inp[pos..pos + i].to_string());
                pos += i + sep.len();
            }
            None => {
                texts.push(inp[pos..].to_string());
                break;
            }
        }
    }
    let ids: Vec<Vec<i32>> = out
        .lines()
        .map(|l| l.split_whitespace().map(|t| t.parse().expect("token id in .out")).collect())
        .collect();
    assert_eq!(texts.len(), ids.len(), "{vocab}: .inp and .out disagree on the number of tests");
    texts.into_iter().zip(ids).collect()
}

// ---------------------------------------------------------------------------------------
// llama.cpp's tokenizer on a vocabulary-only load

#[cfg(feature = "llama")]
struct LlamaVocab {
    model: *mut sys::llama_model,
    vocab: *const sys::llama_vocab,
}

#[cfg(feature = "llama")]
impl LlamaVocab {
    fn open(path: &Path) -> LlamaVocab {
        llama_cpp::backend();
        let c = CString::new(path.to_str().expect("UTF-8 path")).expect("no NUL");
        // SAFETY: plain-data defaults; the path is a valid C string for the call.
        let model = unsafe {
            let mut params = sys::llama_model_default_params();
            params.vocab_only = true;
            params.n_gpu_layers = 0;
            sys::llama_model_load_from_file(c.as_ptr(), params)
        };
        assert!(!model.is_null(), "llama.cpp could not load {} vocab-only", path.display());
        // SAFETY: valid model; the vocab lives as long as it.
        let vocab = unsafe { sys::llama_model_get_vocab(model) };
        LlamaVocab { model, vocab }
    }

    fn n_tokens(&self) -> i32 {
        // SAFETY: valid vocab.
        unsafe { sys::llama_vocab_n_tokens(self.vocab) }
    }

    fn tokenize(&self, text: &str, add_special: bool, parse_special: bool) -> Vec<i32> {
        let mut out = vec![0i32; text.len() + 8];
        for _ in 0..2 {
            // SAFETY: text valid for its length, `out` writable for its length.
            let n = unsafe {
                sys::llama_tokenize(self.vocab, text.as_ptr().cast(), text.len() as i32, out.as_mut_ptr(), out.len() as i32, add_special, parse_special)
            };
            if n >= 0 {
                out.truncate(n as usize);
                return out;
            }
            out.resize(n.unsigned_abs() as usize, 0);
        }
        panic!("llama_tokenize failed on {text:?}");
    }

    fn piece(&self, token: i32, special: bool) -> Vec<u8> {
        let mut buf = vec![0u8; 256];
        for _ in 0..2 {
            // SAFETY: buffer writable for its length; the token is inside the vocabulary.
            let n = unsafe { sys::llama_token_to_piece(self.vocab, token, buf.as_mut_ptr().cast(), buf.len() as i32, 0, special) };
            if n >= 0 {
                buf.truncate(n as usize);
                return buf;
            }
            buf.resize(n.unsigned_abs() as usize, 0);
        }
        panic!("llama_token_to_piece failed on {token}");
    }

    fn detokenize(&self, tokens: &[i32], remove_special: bool, unparse_special: bool) -> Vec<u8> {
        let mut buf = vec![0u8; tokens.len() * 16 + 64];
        for _ in 0..2 {
            // SAFETY: tokens valid for their length (all inside the vocabulary); buffer writable.
            let n = unsafe {
                sys::llama_detokenize(self.vocab, tokens.as_ptr(), tokens.len() as i32, buf.as_mut_ptr().cast(), buf.len() as i32, remove_special, unparse_special)
            };
            if n >= 0 {
                buf.truncate(n as usize);
                return buf;
            }
            buf.resize(n.unsigned_abs() as usize, 0);
        }
        panic!("llama_detokenize failed");
    }

    fn attr(&self, token: i32) -> u32 {
        // SAFETY: valid vocab, token inside it.
        unsafe { sys::llama_vocab_get_attr(self.vocab, token) as u32 }
    }

    fn is_eog(&self, token: i32) -> bool {
        // SAFETY: valid vocab.
        unsafe { sys::llama_vocab_is_eog(self.vocab, token) }
    }

    fn specials(&self) -> (i32, i32, i32, bool, bool) {
        // SAFETY: valid vocab.
        unsafe {
            (
                sys::llama_vocab_bos(self.vocab),
                sys::llama_vocab_eos(self.vocab),
                sys::llama_vocab_eot(self.vocab),
                sys::llama_vocab_get_add_bos(self.vocab),
                sys::llama_vocab_get_add_eos(self.vocab),
            )
        }
    }
}

#[cfg(feature = "llama")]
impl Drop for LlamaVocab {
    fn drop(&mut self) {
        // SAFETY: the model was loaded here and is freed once.
        unsafe { sys::llama_model_free(self.model) };
    }
}

// ---------------------------------------------------------------------------------------
// Corpus

/// Texts that exercise every branch of the pre-tokenizers and the SPM merger.
fn corpus() -> Vec<String> {
    let mut t: Vec<String> = [
        "",
        " ",
        "  ",
        "   ",
        "\t",
        "\n",
        "\n\n",
        "\n\n\n",
        "\r\n",
        "\r\n\r\n",
        " \r\n \t \n  ",
        "\t\n",
        "Hello world",
        " Hello world",
        "Hello World!",
        "  Hello",
        "    Hello\n    Hello",
        "Hello, y'all! How are you 😁 ?我想在apple工作1314151天～",
        "What's up? I'm fine, you're great; they've gone, he'll come, she'd say, it's 'quoted'.",
        "WHAT'S UP? I'M FINE, YOU'RE GREAT, THEY'VE, HE'LL, SHE'D, IT'S",
        "don't can't won't isn't o'clock rock'n'roll 'tis ' lonely ' '' '''",
        "fn main() {\n    let v: Vec<u32> = (0..10).map(|x| x * 2).collect();\n    println!(\"{v:?}\");\n}\n",
        "def f(x):\n\tif x > 0:\n\t\treturn x ** 2  # square\n\treturn -x\n\n\nclass A:\n    pass\n",
        "{\"key\": [1, 2.5, -3e10, true, null], \"nested\": {\"a\": \"b\"}}",
        "#!/bin/sh\nfor f in *.txt; do echo \"$f\" | tr a-z A-Z >> out.log; done",
        "template<typename T> std::vector<T> v{}; a <<= 2; b->c; x ?: y; `cmd` ~x | y ^ z & w",
        "<html><body class=\"x\"><p>Hi&nbsp;there</p></body></html>",
        "我想在apple工作1314151天～，你好世界！这是一个测试。",
        "日本語のテキスト、カタカナとひらがな。東京タワーは333メートルです。",
        "안녕하세요 세계! 한국어 텍스트입니다.",
        "مرحبا بالعالم، كيف حالك؟ ١٢٣٤٥ والأرقام",
        "नमस्ते दुनिया, आप कैसे हैं? १२३४ संख्या",
        "Съешь же ещё этих мягких французских булок, да выпей чаю. ЁЖИК",
        "Ελληνικά: Γειά σου Κόσμε! ΣΊΣΥΦΟΣ",
        "สวัสดีครับ ภาษาไทย",
        "עברית: שלום עולם",
        "Tiếng Việt có dấu: e\u{0301} a\u{0300} o\u{0302}\u{0303} Nguyễn",
        "🦙.cpp 🚀 (normal) 😶‍🌫️ (multiple emojis concatenated) ✅ (only emoji that has its own token)",
        "👨‍👩‍👧‍👦 family 🏳️‍🌈 rainbow 🇺🇸🇯🇵🇫🇷🇩🇪 flags 👍🏽👍🏿 skin",
        "a                    b",
        "\t\t\tx\t \t y",
        "x   \n   \n\n\t  y",
        "   leading and trailing   ",
        "\u{3000}ideographic\u{00A0}nbsp\u{2003}em\u{2028}ls\u{0085}nel",
        "\r\r\n\n\r \r",
        "3",
        "33",
        "333",
        "3333",
        "33333",
        "333333333",
        "12345678901234567890",
        "1,234,567.89 and 0.001 and -42 and 1e-9",
        "٣٤٥٦ ²³ ½ ¾ Ⅻ ①②",
        "v1.2.3-rc4 x86_64 2024-01-31T12:00:00Z",
        "HeLLo WoRLD camelCaseIdentifier snake_case_name SCREAMING_CASE",
        "!!!???...,,,;;;:::",
        "--==>><<~~||^^$$%%&&**++",
        "`backticks` and ~tilde~ and (parentheses) [brackets] {braces}",
        "https://example.com/path?q=1&x=2#frag user@example.org",
        "\u{FFFD} replacement \u{0000}nul\u{0001}\u{007F} controls",
        "\u{200B}zero\u{200D}width\u{FEFF}bom",
        "new in Unicode 16: \u{1C89} \u{10D40}; noncharacter \u{FDD0}; private \u{E000}\u{F0000}",
        "e\u{0301}\u{0302}\u{0303} combining marks ̀ alone",
        "ied 4 ½ months",
        "Äpfel",
        "<|im_start|> <|im_end <s> </s <unk> [INST] <<SYS>>",
        "\n =",
        "' era",
        " (",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    t.push("a".repeat(500));
    t.push("ab".repeat(300));
    t.push(" ".repeat(1000));
    t.push(format!("{}x{}", "\t".repeat(64), " \n".repeat(64)));
    t.push("9".repeat(100));
    t.push("🦙".repeat(40));
    t
}

/// One text per token that llama.cpp recognises in text (control, user-defined,
/// unknown), embedding it at the start, between words, next to spaces and at the end.
fn special_texts(tok: &Tokenizer) -> Vec<String> {
    let recognised = TokenAttr::CONTROL | TokenAttr::USER_DEFINED | TokenAttr::UNKNOWN;
    (0..tok.n_vocab() as i32)
        .filter(|&t| tok.token_attr(t).intersects(recognised))
        .map(|t| {
            let s = tok.token_text(t).unwrap();
            format!("{s}Hello {s} world{s}\n {s}  x{s}")
        })
        .collect()
}

/// Random texts from a pool of characters and fragments that stress the splitters.
fn random_texts(tok: &Tokenizer, n: usize, seed: u64) -> Vec<String> {
    let mut pool: Vec<String> = [
        "a", "b", "Z", "é", "ß", "中", "文", "日", "ア", "한", "ب", "न", "्", "я", "1", "2", "٣", "½", " ", " ", " ", "  ", "\t",
        "\n", "\r", "\r\n", "\u{3000}", "\u{A0}", "'", "'s", "'LL", "'re", "!", ".", ",", "?", "-", "_", "$", "+", "<", ">", "|",
        "`", "~", "^", "(", ")", "{", "}", "[", "]", "\"", "#", "@", "%", "&", "*", "/", "\\", ":", ";", "=", "😀", "👍🏽",
        "\u{200D}", "\u{0301}", "🇫🇷", "\u{FFFD}", "\u{1C89}", "\u{E000}", "\u{0}", "▁", "Ġ",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let recognised = TokenAttr::CONTROL | TokenAttr::USER_DEFINED;
    pool.extend((0..tok.n_vocab() as i32).filter(|&t| tok.token_attr(t).intersects(recognised)).take(40).map(|t| tok.token_text(t).unwrap().to_string()));
    let mut r = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    (0..n)
        .map(|_| {
            let len = r.random_range(0..40);
            (0..len).map(|_| pool[r.random_range(0..pool.len())].as_str()).collect()
        })
        .collect()
}

// ---------------------------------------------------------------------------------------
// Comparisons

/// Our tokens, pieces and detokenization equal llama.cpp's on every text, with every
/// combination of flags. Returns the number of (text, flags) cases compared.
#[cfg(feature = "llama")]
fn compare_texts(ours: &Tokenizer, theirs: &LlamaVocab, label: &str, texts: &[String]) -> usize {
    let mut failures = Vec::new();
    let mut n = 0;
    for text in texts {
        for (add_special, parse_special) in [(false, false), (false, true), (true, false), (true, true)] {
            n += 1;
            let want = theirs.tokenize(text, add_special, parse_special);
            let got = match ours.encode(text, add_special, parse_special) {
                Ok(t) => t,
                Err(e) => {
                    failures.push(format!("{text:?} add={add_special} parse={parse_special}: error {e}"));
                    continue;
                }
            };
            if got != want {
                failures.push(format!("{text:?} add={add_special} parse={parse_special}:\n   ours {got:?}\n  llama {want:?}"));
                continue;
            }
            // decode = the pieces with special tokens rendered, as the engine's detokenize.
            let pieces: Vec<u8> = want.iter().flat_map(|&t| theirs.piece(t, true)).collect();
            let decoded = ours.decode(&got);
            if decoded != String::from_utf8_lossy(&pieces) {
                failures.push(format!("{text:?}: decode {decoded:?} != llama.cpp's pieces {:?}", String::from_utf8_lossy(&pieces)));
            }
            for (rs, us) in [(false, false), (true, true), (false, true), (true, false)] {
                let a = ours.detokenize(&got, rs, us);
                let b = theirs.detokenize(&want, rs, us);
                if a != b {
                    failures.push(format!(
                        "{text:?} detokenize(remove_special={rs}, unparse_special={us}): ours {:?} llama {:?}",
                        String::from_utf8_lossy(&a),
                        String::from_utf8_lossy(&b)
                    ));
                }
            }
        }
    }
    assert!(failures.is_empty(), "{label}: {} of {n} cases differ from llama.cpp:\n{}", failures.len(), failures.iter().take(12).cloned().collect::<Vec<_>>().join("\n"));
    n
}

/// Per-token facts: attributes, pieces with and without special rendering, end of
/// generation; and the special ids and flags.
#[cfg(feature = "llama")]
fn compare_vocab(ours: &Tokenizer, theirs: &LlamaVocab, label: &str) {
    assert_eq!(ours.n_vocab() as i32, theirs.n_tokens(), "{label}: vocabulary size");
    let mut failures = Vec::new();
    for t in 0..theirs.n_tokens() {
        if ours.token_attr(t).0 != theirs.attr(t) {
            failures.push(format!("token {t} {:?}: attr ours {:#x} llama {:#x}", ours.token_text(t), ours.token_attr(t).0, theirs.attr(t)));
        }
        for special in [true, false] {
            if ours.token_bytes(t, special) != theirs.piece(t, special).as_slice() {
                failures.push(format!("token {t} {:?}: piece(special={special}) ours {:?} llama {:?}", ours.token_text(t), ours.token_bytes(t, special), theirs.piece(t, special)));
            }
        }
        if ours.is_eog(t) != theirs.is_eog(t) {
            failures.push(format!("token {t} {:?}: is_eog ours {} llama {}", ours.token_text(t), ours.is_eog(t), theirs.is_eog(t)));
        }
    }
    assert!(failures.is_empty(), "{label}: {} token facts differ:\n{}", failures.len(), failures.iter().take(12).cloned().collect::<Vec<_>>().join("\n"));
    let (bos, eos, eot, add_bos, add_eos) = theirs.specials();
    let id = |t: Option<i32>| t.unwrap_or(-1);
    assert_eq!((id(ours.bos()), id(ours.eos()), add_bos, add_eos), (bos, eos, ours.add_bos(), ours.add_eos()), "{label}: BOS/EOS ids and flags");
    if eot >= 0 {
        assert!(ours.is_eog(eot), "{label}: llama.cpp's EOT {eot} is not end-of-generation for us");
    }
}

/// Every comparison on one vocabulary file; returns the number of cases compared.
#[cfg(feature = "llama")]
fn parity(path: &Path, label: &str) -> usize {
    let ours = open_tokenizer(path);
    let theirs = LlamaVocab::open(path);
    compare_vocab(&ours, &theirs, label);
    let mut texts = corpus();
    texts.extend(special_texts(&ours));
    texts.extend(random_texts(&ours, 200, 7));
    let n = compare_texts(&ours, &theirs, label, &texts);
    eprintln!("{label}: {} texts, {n} (text, flags) cases equal to llama.cpp", texts.len());
    n
}

// ---------------------------------------------------------------------------------------
// 1. llama.cpp's reference tokenizations

/// Our encode (add_special = false, parse_special = false, as test-tokenizer-0) equals
/// every line of the vocabulary's `.out`.
fn reference(vocab: &str, expected_kind: VocabKind) {
    let tok = open_tokenizer(&vocab_path(vocab));
    assert_eq!(tok.kind(), expected_kind, "{vocab}");
    let cases = reference_cases(vocab);
    assert!(cases.len() >= 40, "{vocab}: only {} reference cases", cases.len());
    let mut failures = Vec::new();
    for (text, want) in &cases {
        match tok.encode(text, false, false) {
            Ok(got) if &got == want => {}
            Ok(got) => failures.push(format!("{text:?}\n   ours {got:?}\n   .out {want:?}")),
            Err(e) => failures.push(format!("{text:?}: {e}")),
        }
    }
    assert!(failures.is_empty(), "{vocab}: {} of {} reference tokenizations differ:\n{}", failures.len(), cases.len(), failures.join("\n"));
    eprintln!("{vocab}: {} reference tokenizations equal", cases.len());
}

macro_rules! reference_tests {
    ($($name:ident: $vocab:literal, $kind:ident;)*) => {$(
        #[test]
        fn $name() {
            reference($vocab, VocabKind::$kind);
        }
    )*};
}

reference_tests! {
    reference_gpt_2: "gpt-2", Bpe;
    reference_mpt: "mpt", Bpe;
    reference_llama_bpe: "llama-bpe", Bpe;
    reference_qwen2: "qwen2", Bpe;
    reference_qwen35: "qwen35", Bpe;
    reference_starcoder: "starcoder", Bpe;
    reference_refact: "refact", Bpe;
    reference_command_r: "command-r", Bpe;
    reference_falcon: "falcon", Bpe;
    reference_gemma_4: "gemma-4", Bpe;
    reference_llama_spm: "llama-spm", Spm;
    reference_phi_3: "phi-3", Spm;
}

// ---------------------------------------------------------------------------------------
// 2. llama.cpp's own tokenizer on the same files

macro_rules! parity_tests {
    ($($name:ident: $vocab:literal;)*) => {$(
        #[test]
        fn $name() {
            let n = parity(&vocab_path($vocab), $vocab);
            assert!(n >= 4 * 60, "{}: only {n} cases", $vocab);
        }
    )*};
}

#[cfg(feature = "llama")]
parity_tests! {
    llama_cpp_parity_gpt_2: "gpt-2";
    llama_cpp_parity_mpt: "mpt";
    llama_cpp_parity_llama_bpe: "llama-bpe";
    llama_cpp_parity_qwen2: "qwen2";
    llama_cpp_parity_qwen35: "qwen35";
    llama_cpp_parity_starcoder: "starcoder";
    llama_cpp_parity_refact: "refact";
    llama_cpp_parity_command_r: "command-r";
    llama_cpp_parity_falcon: "falcon";
    llama_cpp_parity_gemma_4: "gemma-4";
    llama_cpp_parity_llama_spm: "llama-spm";
    llama_cpp_parity_phi_3: "phi-3";
}

/// A copy of a vocabulary file with metadata changed (`None` removes the key).
fn variant(src: &Path, dst: &Path, changes: &[(&str, Option<MetaValue>)]) {
    let g = GgufFile::open(src).unwrap();
    let mut meta: Vec<(String, MetaValue)> =
        g.metadata().iter().filter(|(k, _)| !changes.iter().any(|(c, _)| c == k)).cloned().collect();
    for (k, v) in changes {
        if let Some(v) = v {
            meta.push((k.to_string(), v.clone()));
        }
    }
    assert!(g.tensors().is_empty(), "vocab files have no tensors");
    GgufWriter::create(dst, &meta, &[]).unwrap().finish().unwrap();
}

/// Flags and pre-tokenizers no shipped vocabulary uses, on copies of real ones: the
/// `default` BPE pre-tokenizer (four regexes), a SentencePiece vocabulary without the
/// leading space (as Gemma 3's), one that adds EOS, Llama 3's splitter on Qwen2's merges
/// (`dbrx`: no ignore_merges), newline runs before Qwen2's (`laguna`).
#[test]
#[cfg(feature = "llama")]
fn llama_cpp_parity_variants() {
    let dir = tmpdir();
    let s = |v: &str| Some(MetaValue::String(v.into()));
    let cases: Vec<(&str, &str, Vec<(&str, Option<MetaValue>)>)> = vec![
        ("gpt-2", "pre-default", vec![("tokenizer.ggml.pre", s("default"))]),
        ("gpt-2", "pre-missing", vec![("tokenizer.ggml.pre", None)]),
        ("llama-spm", "no-space-prefix", vec![("tokenizer.ggml.add_space_prefix", Some(MetaValue::Bool(false)))]),
        ("llama-spm", "add-eos", vec![("tokenizer.ggml.add_eos_token", Some(MetaValue::Bool(true)))]),
        ("qwen2", "dbrx", vec![("tokenizer.ggml.pre", s("dbrx"))]),
        ("qwen2", "laguna", vec![("tokenizer.ggml.pre", s("laguna"))]),
        ("llama-bpe", "eos", vec![("tokenizer.ggml.add_eos_token", Some(MetaValue::Bool(true)))]),
    ];
    let mut total = 0;
    for (src, label, changes) in cases {
        let dst = dir.path().join(format!("{src}-{label}.gguf"));
        variant(&vocab_path(src), &dst, &changes);
        total += parity(&dst, &format!("{src} ({label})"));
    }
    assert!(total > 7 * 4 * 60);
}

/// The default model through our llama.cpp engine: tokens, pieces and detokenization.
#[test]
#[cfg(feature = "llama")]
fn llama_cpp_engine_parity_default_model() {
    let ours = Tokenizer::from_gguf(model_gguf()).unwrap();
    assert_eq!((ours.model(), ours.pre(), ours.kind()), ("gpt2", "smollm", VocabKind::Bpe));
    let model = llama_cpp::Model::load(&model_path(), true).unwrap();
    assert_eq!(ours.n_vocab(), model.n_vocab());
    for t in 0..ours.n_vocab() as i32 {
        assert_eq!(ours.token_bytes(t, true), model.token_bytes(t, true).as_slice(), "piece of {t}");
        assert_eq!(ours.token_bytes(t, false), model.token_bytes(t, false).as_slice(), "piece of {t} (special not rendered)");
        assert_eq!(ours.is_eog(t), model.is_eog(t), "is_eog({t})");
    }
    assert_eq!(ours.eos(), model.eos_token());
    let mut texts = corpus();
    texts.extend(special_texts(&ours));
    texts.extend(random_texts(&ours, 300, 11));
    let mut n = 0;
    for text in &texts {
        for (add, parse) in [(false, false), (false, true), (true, false), (true, true)] {
            let want = model.tokenize(text, add, parse).unwrap();
            let got = ours.encode(text, add, parse).unwrap();
            assert_eq!(got, want, "{text:?} add_special={add} parse_special={parse}");
            let pieces: Vec<u8> = want.iter().flat_map(|&t| model.token_bytes(t, true)).collect();
            assert_eq!(ours.decode(&got), String::from_utf8_lossy(&pieces), "decode of {text:?}");
            n += 1;
        }
        // Byte-level BPE without clean-up: text → tokens → text is the identity.
        assert_eq!(ours.decode(&ours.encode(text, false, true).unwrap()), *text);
    }
    assert!(n >= 4 * 60);
    eprintln!("default model: {} texts, {n} (text, flags) cases equal to llama.cpp", texts.len());
}

/// Pathological inputs: long whitespace runs, long words, many special tokens, equal to
/// llama.cpp (these finish in well under a second; a quadratic splitter would not).
#[test]
#[cfg(feature = "llama")]
fn pathological_inputs_match_llama_cpp() {
    let ours_smol = Tokenizer::from_gguf(model_gguf()).unwrap();
    let model = llama_cpp::Model::load(&model_path(), true).unwrap();
    let mut texts = vec![
        " ".repeat(100_000),
        "\n".repeat(50_000),
        format!("a{}b", " ".repeat(100_000)),
        " \t\r\n".repeat(25_000),
        "x".repeat(100_000),
        "é".repeat(50_000),
        "中".repeat(50_000),
        "7".repeat(100_000),
        "<|im_start|>".repeat(10_000),
        "<|im_start|> ".repeat(10_000),
        "<|im_start".repeat(10_000),
        "'s".repeat(50_000),
        "!?".repeat(50_000),
        "👨‍👩‍👧‍👦".repeat(10_000),
    ];
    // Every special token of the vocabulary, many times.
    let all: String = special_texts(&ours_smol).concat();
    texts.push(all.repeat(200));
    for text in &texts {
        for parse in [false, true] {
            let got = ours_smol.encode(text, true, parse).unwrap();
            let want = model.tokenize(text, true, parse).unwrap();
            assert!(got == want, "SmolLM2: {} bytes starting {:?} (parse_special={parse}) differ from llama.cpp", text.len(), &text[..40.min(text.len())]);
        }
    }
    // SentencePiece: one long word, one long run of spaces.
    let spm = open_tokenizer(&vocab_path("llama-spm"));
    let spm_llama = LlamaVocab::open(&vocab_path("llama-spm"));
    for text in ["a".repeat(100_000), " ".repeat(100_000), "ab ".repeat(30_000), "中文".repeat(20_000)] {
        assert!(spm.encode(&text, true, true).unwrap() == spm_llama.tokenize(&text, true, true), "SPM: {} bytes of {:?}", text.len(), &text[..6]);
    }
    // A megabyte of whitespace and one of letters: linear time, no stack exhaustion.
    let big = " ".repeat(1 << 20);
    assert_eq!(ours_smol.decode(&ours_smol.encode(&big, false, false).unwrap()), big);
    let big = "ab".repeat(1 << 19);
    assert_eq!(ours_smol.decode(&ours_smol.encode(&big, false, false).unwrap()), big);
}

// ---------------------------------------------------------------------------------------
// 3. Typed errors

fn strings(items: &[&str]) -> MetaValue {
    MetaValue::Array(ValueType::String, items.iter().map(|s| MetaValue::String(s.to_string())).collect())
}

/// A small byte-level BPE vocabulary with `changes` applied (`None` removes a key).
fn tiny_bpe(path: &Path, changes: &[(&str, Option<MetaValue>)]) -> GgufFile {
    let mut meta: Vec<(String, MetaValue)> = vec![
        ("general.architecture".into(), MetaValue::String("llama".into())),
        ("tokenizer.ggml.model".into(), MetaValue::String("gpt2".into())),
        ("tokenizer.ggml.pre".into(), MetaValue::String("gpt-2".into())),
        ("tokenizer.ggml.tokens".into(), strings(&["a", "b", "ab", "Ġ", "Ġab", "<|end|>"])),
        ("tokenizer.ggml.token_type".into(), MetaValue::Array(ValueType::I32, [1, 1, 1, 1, 1, 3].iter().map(|&t| MetaValue::I32(t)).collect())),
        ("tokenizer.ggml.merges".into(), strings(&["a b", "Ġ ab"])),
        ("tokenizer.ggml.eos_token_id".into(), MetaValue::U32(5)),
    ];
    for (k, v) in changes {
        meta.retain(|(key, _)| key != k);
        if let Some(v) = v {
            meta.push((k.to_string(), v.clone()));
        }
    }
    GgufWriter::create(path, &meta, &[]).unwrap().finish().unwrap();
    GgufFile::open(path).unwrap()
}

#[test]
fn tiny_vocab_tokenizes() {
    let dir = tmpdir();
    let tok = Tokenizer::from_gguf(&tiny_bpe(&dir.path().join("ok.gguf"), &[])).unwrap();
    assert_eq!(tok.encode("ab ab", false, false).unwrap(), vec![2, 4]);
    assert_eq!(tok.encode("ab<|end|>", false, true).unwrap(), vec![2, 5]);
    assert_eq!(tok.decode(&[2, 4, 5]), "ab ab<|end|>");
    assert!(tok.is_eog(5));
    // The vocabulary has no BOS (gpt2's default 11 is outside it), and does not add one.
    assert_eq!(tok.bos(), None);
    assert_eq!(tok.encode("ab", true, false).unwrap(), vec![2]);
}

#[test]
fn unknown_pre_tokenizer_is_refused_naming_the_key() {
    let dir = tmpdir();
    let g = tiny_bpe(&dir.path().join("pre.gguf"), &[("tokenizer.ggml.pre", Some(MetaValue::String("no-such-pre".into())))]);
    let e = Tokenizer::from_gguf(&g).unwrap_err();
    assert!(matches!(&e, TokenizerError::UnsupportedPreTokenizer { key, value, .. } if key == "tokenizer.ggml.pre" && value == "no-such-pre"), "{e:?}");
    let msg = e.to_string();
    assert!(msg.contains("tokenizer.ggml.pre") && msg.contains("no-such-pre") && msg.contains("unknown"), "{msg}");
    // Known to llama.cpp but not implemented here: refused too, saying so.
    let g = tiny_bpe(&dir.path().join("pre2.gguf"), &[("tokenizer.ggml.pre", Some(MetaValue::String("deepseek-coder".into())))]);
    let msg = Tokenizer::from_gguf(&g).unwrap_err().to_string();
    assert!(msg.contains("deepseek-coder") && msg.contains("does not implement"), "{msg}");
}

#[test]
fn unknown_model_type_is_refused_naming_the_key() {
    let dir = tmpdir();
    let g = tiny_bpe(&dir.path().join("model.gguf"), &[("tokenizer.ggml.model", Some(MetaValue::String("wordpiece9".into())))]);
    let e = Tokenizer::from_gguf(&g).unwrap_err();
    assert!(matches!(&e, TokenizerError::UnsupportedModel { key, value, .. } if key == "tokenizer.ggml.model" && value == "wordpiece9"), "{e:?}");
    assert!(e.to_string().contains("tokenizer.ggml.model"));
    // Through the crate's error type as well.
    let e: edgelora::Error = e.into();
    assert!(e.chain().contains("wordpiece9"));
    // Missing altogether.
    let g = tiny_bpe(&dir.path().join("nomodel.gguf"), &[("tokenizer.ggml.model", None)]);
    assert!(matches!(Tokenizer::from_gguf(&g).unwrap_err(), TokenizerError::MissingKey { key, .. } if key == "tokenizer.ggml.model"));
}

#[test]
fn real_vocabularies_we_do_not_implement_are_refused() {
    let e = Tokenizer::from_gguf(&GgufFile::open(vocab_path("deepseek-coder")).unwrap()).unwrap_err();
    assert!(matches!(&e, TokenizerError::UnsupportedPreTokenizer { value, .. } if value == "deepseek-coder"), "{e}");
    let e = Tokenizer::from_gguf(&GgufFile::open(vocab_path("bert-bge")).unwrap()).unwrap_err();
    assert!(matches!(&e, TokenizerError::UnsupportedModel { value, .. } if value == "bert"), "{e}");
}

#[test]
fn malformed_vocabularies_are_refused_naming_the_key() {
    let dir = tmpdir();
    let mut n = 0;
    let mut check = |changes: &[(&str, Option<MetaValue>)], key: &str, what: &str| {
        n += 1;
        let g = tiny_bpe(&dir.path().join(format!("bad{n}.gguf")), changes);
        let e = Tokenizer::from_gguf(&g).expect_err(what);
        let msg = e.to_string();
        assert!(msg.contains(key), "{what}: {msg} does not name {key}");
        e
    };
    let e = check(&[("tokenizer.ggml.merges", Some(strings(&["a b", "a zz"])))], "tokenizer.ggml.merges", "merge naming a missing token");
    assert!(matches!(e, TokenizerError::BadEntry { index: 1, .. }), "{e:?}");
    check(&[("tokenizer.ggml.merges", Some(strings(&["ab"])))], "tokenizer.ggml.merges", "merge without a space");
    check(&[("tokenizer.ggml.merges", None)], "tokenizer.ggml.merges", "no merges");
    check(&[("tokenizer.ggml.merges", Some(MetaValue::Array(ValueType::U32, vec![MetaValue::U32(1)])))], "tokenizer.ggml.merges", "merges of integers");
    check(&[("tokenizer.ggml.tokens", Some(MetaValue::Array(ValueType::U32, vec![MetaValue::U32(1)])))], "tokenizer.ggml.tokens", "tokens of integers");
    check(&[("tokenizer.ggml.tokens", Some(strings(&["a", "b", "ab", "Ġ", "Ġab", "a"])))], "tokenizer.ggml.tokens", "duplicate token");
    check(&[("tokenizer.ggml.tokens", None)], "tokenizer.ggml.tokens", "no tokens");
    check(&[("tokenizer.ggml.token_type", Some(MetaValue::Array(ValueType::I32, vec![MetaValue::I32(1)])))], "tokenizer.ggml.token_type", "token types too short");
    check(&[("tokenizer.ggml.token_type", Some(MetaValue::Array(ValueType::F32, vec![MetaValue::F32(1.0); 6])))], "tokenizer.ggml.token_type", "token types of floats");
    check(&[("tokenizer.ggml.scores", Some(MetaValue::Array(ValueType::F32, vec![MetaValue::F32(0.0); 2])))], "tokenizer.ggml.scores", "scores too short");
    let e = check(&[("tokenizer.ggml.bos_token_id", Some(MetaValue::U32(6)))], "tokenizer.ggml.bos_token_id", "BOS outside the vocabulary");
    assert!(matches!(e, TokenizerError::TokenIdOutOfRange { id: 6, n_vocab: 6, .. }), "{e:?}");
    check(&[("tokenizer.ggml.eos_token_id", Some(MetaValue::I32(-1)))], "tokenizer.ggml.eos_token_id", "negative EOS");
    check(&[("tokenizer.ggml.add_bos_token", Some(MetaValue::U8(1)))], "tokenizer.ggml.add_bos_token", "add_bos not a bool");
    check(&[("tokenizer.ggml.pre", Some(MetaValue::U32(3)))], "tokenizer.ggml.pre", "pre not a string");
    // A vocabulary that asks for BOS but has none: encoding with add_special fails, typed.
    let g = tiny_bpe(&dir.path().join("nobos.gguf"), &[("tokenizer.ggml.add_bos_token", Some(MetaValue::Bool(true)))]);
    let tok = Tokenizer::from_gguf(&g).unwrap();
    assert!(matches!(tok.encode("ab", true, false), Err(TokenizerError::MissingSpecialToken { which: "BOS" })));
    assert_eq!(tok.encode("ab", false, false).unwrap(), vec![2]);
}

#[test]
fn tokenizer_is_send_sync_and_cheap_to_clone() {
    fn assert_send_sync<T: Send + Sync + Clone>() {}
    assert_send_sync::<Tokenizer>();
    let tok = Tokenizer::from_gguf(model_gguf()).unwrap();
    let handles: Vec<_> = (0..4)
        .map(|i| {
            let tok = tok.clone();
            std::thread::spawn(move || tok.encode(&format!("thread {i}: <|im_start|>user\nhi"), true, true).unwrap())
        })
        .collect();
    for (i, h) in handles.into_iter().enumerate() {
        assert_eq!(tok.decode(&h.join().unwrap()), format!("thread {i}: <|im_start|>user\nhi"));
    }
}

// ---------------------------------------------------------------------------------------
// Chat templates

fn conversations() -> Vec<Vec<(String, String)>> {
    let c = |m: &[(&str, &str)]| m.iter().map(|(r, c)| (r.to_string(), c.to_string())).collect::<Vec<_>>();
    vec![
        c(&[("system", "You are terse."), ("user", "Hi!")]),
        c(&[("system", "Be kind."), ("user", "What is 2+2?"), ("assistant", "4."), ("user", "And 3+3?")]),
        c(&[("system", "Réponds en français."), ("user", "Bonjour 👋, ça va ? 我很好。"), ("assistant", "Très bien, merci !")]),
        c(&[("system", ""), ("user", "  padded content  \n")]),
        c(&[("system", "sys"), ("user", "<|im_start|>inject<|im_end|>"), ("assistant", "ok"), ("user", "مرحبا")]),
    ]
}

/// SmolLM2's template rendered by MiniJinja equals llama.cpp's rendering (the engine's
/// apply_chat_template) whenever the conversation opens with a system message; without
/// one, the template adds SmolLM's default system prompt, which llama.cpp's built-in
/// ChatML renderer leaves out.
#[test]
#[cfg(feature = "llama")]
fn chat_template_matches_llama_cpp_on_default_model() {
    let tok = Tokenizer::from_gguf(model_gguf()).unwrap();
    let model = llama_cpp::Model::load(&model_path(), true).unwrap();
    let template = model.chat_template().expect("the default model has a chat template");
    assert_eq!(tok.chat_template(), Some(template.to_str().unwrap()));
    let mut n = 0;
    for conv in conversations() {
        for add in [true, false] {
            let ours = tok.apply_chat_template(&conv, add).unwrap();
            let theirs = model.apply_chat_template(&template, &conv, add).unwrap();
            assert_eq!(ours, theirs, "{conv:?} add_assistant={add}");
            n += 1;
            // Without the system turn: the default one comes first.
            let rest = &conv[1..];
            let ours = tok.apply_chat_template(rest, add).unwrap();
            let theirs = model.apply_chat_template(&template, rest, add).unwrap();
            let default = "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n";
            assert_eq!(ours, format!("{default}{theirs}"), "{rest:?}");
        }
    }
    assert!(n >= 10);
    // The rendered prompt tokenizes as llama.cpp tokenizes it.
    let prompt = tok.apply_chat_template(&conversations()[2], true).unwrap();
    assert_eq!(tok.encode(&prompt, true, true).unwrap(), model.tokenize(&prompt, true, true).unwrap());
}

fn template(name: &str) -> String {
    std::fs::read_to_string(vocab_file(&format!("templates/{name}.jinja"))).unwrap()
}

/// Other families' templates (from llama.cpp's models/templates) render with our
/// environment and equal llama.cpp's built-in renderer of the same template up to what
/// the Jinja adds (BOS, default system prompts, Llama 3's date header).
#[test]
#[cfg(feature = "llama")]
fn chat_templates_of_other_families() {
    let qwen = open_tokenizer(&vocab_path("qwen2"));
    let llama3 = open_tokenizer(&vocab_path("llama-bpe"));
    let phi3 = open_tokenizer(&vocab_path("phi-3"));
    let gemma = open_tokenizer(&vocab_path("llama-spm"));
    let model = llama_cpp::Model::load(&model_path(), true).unwrap();
    let builtin = |tmpl: &str, conv: &[(String, String)], add: bool| model.apply_chat_template(&CString::new(tmpl).unwrap(), conv, add).unwrap();
    let date = regex::Regex::new(r"Today Date: \d\d [A-Z][a-z][a-z] \d{4}\n\n").unwrap();
    for conv in conversations() {
        let add = true;
        // Qwen2.5: ChatML; a conversation without system turn gets Qwen's default one.
        let t = template("Qwen-Qwen2.5-7B-Instruct");
        assert_eq!(qwen.apply_chat_template_with(&t, &conv, add).unwrap(), builtin(&t, &conv, add));
        let no_sys = &conv[1..];
        assert_eq!(
            qwen.apply_chat_template_with(&t, no_sys, add).unwrap(),
            format!("<|im_start|>system\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant.<|im_end|>\n{}", builtin(&t, no_sys, add))
        );
        // Phi-3.5 (a system turn with empty content is dropped by the Jinja).
        let t = template("microsoft-Phi-3.5-mini-instruct");
        let ours = phi3.apply_chat_template_with(&t, &conv, add).unwrap();
        if conv[0].1.is_empty() {
            assert_eq!(ours, builtin(&t, no_sys, add));
        } else {
            assert_eq!(ours, builtin(&t, &conv, add));
        }
        // Llama 3.1 / 3.2: BOS, then a system turn with the knowledge-cutoff and date header.
        for name in ["meta-llama-Llama-3.1-8B-Instruct", "meta-llama-Llama-3.2-3B-Instruct"] {
            let t = template(name);
            let ours = llama3.apply_chat_template_with(&t, &conv, add).unwrap();
            let ours = date.replace(&ours, "").into_owned();
            let theirs = builtin(&t, &conv, add);
            let sys = format!("<|start_header_id|>system<|end_header_id|>\n\n{}<|eot_id|>", conv[0].1.trim());
            let want = format!("<|begin_of_text|>{}", theirs.replacen(&sys, &sys.replace("\n\n", "\n\nCutting Knowledge Date: December 2023\n"), 1));
            assert_eq!(ours, want, "{name}");
        }
        // Gemma 2: BOS first; system turns are refused by the template (a typed error).
        let t = template("google-gemma-2-2b-it");
        let e = gemma.apply_chat_template_with(&t, &conv, add).unwrap_err();
        assert!(e.to_string().contains("System role not supported"), "{e}");
        assert_eq!(gemma.apply_chat_template_with(&t, no_sys, add).unwrap(), format!("<s>{}", builtin(&t, no_sys, add)));
    }
}

/// Gemma 3's template (system text folded into the first user turn, `is string` tests,
/// slicing, `trim`), written out here as Gemma 3 ships it.
#[test]
fn chat_template_gemma3_style() {
    let gemma3 = "{{ bos_token }}\n{%- if messages[0]['role'] == 'system' -%}\n    {%- if messages[0]['content'] is string -%}\n        {%- set first_user_prefix = messages[0]['content'] + '\n\n' -%}\n    {%- else -%}\n        {%- set first_user_prefix = messages[0]['content'][0]['text'] + '\n\n' -%}\n    {%- endif -%}\n    {%- set loop_messages = messages[1:] -%}\n{%- else -%}\n    {%- set first_user_prefix = \"\" -%}\n    {%- set loop_messages = messages -%}\n{%- endif -%}\n{%- for message in loop_messages -%}\n    {%- if (message['role'] == 'user') != (loop.index0 % 2 == 0) -%}\n        {{ raise_exception(\"Conversation roles must alternate user/assistant/user/assistant/...\") }}\n    {%- endif -%}\n    {%- if (message['role'] == 'assistant') -%}\n        {%- set role = \"model\" -%}\n    {%- else -%}\n        {%- set role = message['role'] -%}\n    {%- endif -%}\n    {{ '<start_of_turn>' + role + '\n' + (first_user_prefix if loop.first else \"\") }}\n    {%- if message['content'] is string -%}\n        {{ message['content'] | trim }}\n    {%- elif message['content'] is iterable -%}\n        {%- for item in message['content'] -%}\n            {%- if item['type'] == 'image' -%}\n                {{ '<start_of_image>' }}\n            {%- elif item['type'] == 'text' -%}\n                {{ item['text'] | trim }}\n            {%- endif -%}\n        {%- endfor -%}\n    {%- else -%}\n        {{ raise_exception(\"Invalid content type\") }}\n    {%- endif -%}\n    {{ '<end_of_turn>\n' }}\n{%- endfor -%}\n{%- if add_generation_prompt -%}\n    {{'<start_of_turn>model\n'}}\n{%- endif -%}\n";
    let tok = open_tokenizer(&vocab_path("llama-spm"));
    let conv = [("system", "Be brief."), ("user", " Hi 👋 "), ("assistant", "Hello."), ("user", "Bye")];
    let got = tok.apply_chat_template_with(gemma3, &conv, true).unwrap();
    assert_eq!(
        got,
        "<s><start_of_turn>user\nBe brief.\n\nHi 👋<end_of_turn>\n<start_of_turn>model\nHello.<end_of_turn>\n<start_of_turn>user\nBye<end_of_turn>\n<start_of_turn>model\n"
    );
    let e = tok.apply_chat_template_with(gemma3, &[("user", "a"), ("user", "b")], true).unwrap_err();
    assert!(e.to_string().contains("must alternate"), "{e}");
}

#[test]
fn broken_chat_templates_are_typed_errors() {
    let tok = Tokenizer::from_gguf(model_gguf()).unwrap();
    let conv = [("user", "hi")];
    for (tmpl, what) in [
        ("{% for m in messages %}{{ m.content }", "syntax error"),
        ("{{ raise_exception('nope') }}", "nope"),
        ("{% for i in range(100000) %}{% for j in range(100000) %}{{ '' }}{% endfor %}{% endfor %}", "fuel"),
        ("{{ messages[5].content.upper() }}", "undefined"),
        ("{{ 1 / 0 }}", "division"),
    ] {
        let e = tok.apply_chat_template_with(tmpl, &conv, true).expect_err(what);
        assert!(matches!(e, TokenizerError::ChatTemplate { .. }), "{what}: {e:?}");
    }
    // Python string methods, loop controls and strftime_now are available.
    let out = tok
        .apply_chat_template_with(
            "{% for m in messages %}{% if loop.index > 1 %}{% break %}{% endif %}{{ m.content.strip().upper() }}{% endfor %}|{{ strftime_now('%Y') | length }}",
            &[("user", "  hi "), ("user", "skipped")],
            false,
        )
        .unwrap();
    assert_eq!(out, "HI|4");
    let gpt2 = open_tokenizer(&vocab_path("gpt-2"));
    assert!(matches!(gpt2.apply_chat_template(&conv, true), Err(TokenizerError::NoChatTemplate)));
}
