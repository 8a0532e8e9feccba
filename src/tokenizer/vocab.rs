//! Reading a vocabulary from GGUF metadata (`tokenizer.ggml.*`), with llama.cpp's
//! defaults and its corrections to token attributes, so that tokenization and pieces
//! come out as llama.cpp's.
//!
//! Every key is checked: its type, array lengths, token ids against the vocabulary,
//! merges against the tokens. Model types and pre-tokenizers this crate does not
//! implement are refused by name, never replaced by a default.

use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};

use aho_corasick::{AhoCorasick, MatchKind};

use super::error::TokenizerError;
use super::pretokenize::{CharClass, Stage};
use super::unicode;
use crate::gguf::{GgufFile, MetaValue, ValueType};

/// A token's attributes, as llama.cpp's `llama_token_attr` bits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct TokenAttr(pub u32);

impl TokenAttr {
    pub const UNDEFINED: TokenAttr = TokenAttr(0);
    pub const UNKNOWN: TokenAttr = TokenAttr(1 << 0);
    pub const UNUSED: TokenAttr = TokenAttr(1 << 1);
    pub const NORMAL: TokenAttr = TokenAttr(1 << 2);
    /// A special token (BOS, end of turn, …): recognised in text only when asked to.
    pub const CONTROL: TokenAttr = TokenAttr(1 << 3);
    /// Added by the model's authors: always recognised in text.
    pub const USER_DEFINED: TokenAttr = TokenAttr(1 << 4);
    /// A `<0xXX>` byte-fallback token.
    pub const BYTE: TokenAttr = TokenAttr(1 << 5);
    pub const NORMALIZED: TokenAttr = TokenAttr(1 << 6);
    /// Whitespace before the token is dropped when it is recognised in text.
    pub const LSTRIP: TokenAttr = TokenAttr(1 << 7);
    /// Whitespace after the token is dropped when it is recognised in text.
    pub const RSTRIP: TokenAttr = TokenAttr(1 << 8);
    pub const SINGLE_WORD: TokenAttr = TokenAttr(1 << 9);

    /// Whether any bit of `other` is set.
    pub fn intersects(self, other: TokenAttr) -> bool {
        self.0 & other.0 != 0
    }
}

impl std::ops::BitOr for TokenAttr {
    type Output = TokenAttr;
    fn bitor(self, rhs: TokenAttr) -> TokenAttr {
        TokenAttr(self.0 | rhs.0)
    }
}

/// The two tokenizer algorithms.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VocabKind {
    /// SentencePiece-style (`tokenizer.ggml.model = "llama"`): merges by score,
    /// `▁` for spaces, `<0xXX>` byte fallback.
    Spm,
    /// BPE (`"gpt2"`, `"gemma4"`): pre-tokenization, merges by rank; byte-level unless
    /// the pre-tokenizer says otherwise.
    Bpe,
}

pub(crate) const KEY_MODEL: &str = "tokenizer.ggml.model";
pub(crate) const KEY_PRE: &str = "tokenizer.ggml.pre";
const KEY_TOKENS: &str = "tokenizer.ggml.tokens";
const KEY_SCORES: &str = "tokenizer.ggml.scores";
const KEY_TOKEN_TYPE: &str = "tokenizer.ggml.token_type";
const KEY_MERGES: &str = "tokenizer.ggml.merges";
const KEY_CHAT_TEMPLATE: &str = "tokenizer.chat_template";

/// llama.cpp's special token ids (`None` = `LLAMA_TOKEN_NULL`).
#[derive(Debug, Clone, Default)]
pub(crate) struct SpecialIds {
    pub bos: Option<i32>,
    pub eos: Option<i32>,
    pub eot: Option<i32>,
    pub eom: Option<i32>,
    pub unk: Option<i32>,
    pub sep: Option<i32>,
    pub pad: Option<i32>,
    pub mask: Option<i32>,
    pub fim_pre: Option<i32>,
    pub fim_suf: Option<i32>,
    pub fim_mid: Option<i32>,
    pub fim_pad: Option<i32>,
    pub fim_rep: Option<i32>,
    pub fim_sep: Option<i32>,
}

/// A merge of two tokens: its rank (lower merges first) and the token it makes, if the
/// concatenation is one.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Merge {
    pub rank: u32,
    pub result: Option<i32>,
}

/// A loaded vocabulary; everything tokenization and detokenization need.
pub(crate) struct Vocab {
    pub kind: VocabKind,
    pub model: String,
    pub pre: String,
    pub texts: Vec<Box<str>>,
    pub scores: Vec<f32>,
    pub attrs: Vec<TokenAttr>,
    pub by_text: HashMap<Box<str>, i32>,
    pub merges: HashMap<(i32, i32), Merge>,
    pub stages: Vec<Stage>,
    pub byte_encode: bool,
    /// Gemma 4's rule: a word made only of newlines is one token when the vocabulary has it.
    pub newline_words: bool,
    pub ids: SpecialIds,
    pub add_bos: bool,
    pub add_eos: bool,
    pub add_space_prefix: bool,
    pub ignore_merges: bool,
    pub clean_spaces: bool,
    pub escape_whitespaces: bool,
    pub eog: BTreeSet<i32>,
    /// Tokens recognised in text (control, user-defined, unknown), longest first.
    pub special_order: Vec<i32>,
    /// Finds every occurrence of `special_order`'s texts (pattern i = `special_order[i]`).
    pub special_finder: Option<AhoCorasick>,
    /// Each token's bytes with special tokens rendered.
    pub pieces: Vec<Box<[u8]>>,
    /// For each byte, its fallback token (`<0xXX>`, or the byte itself for SPM; its GPT-2
    /// stand-in for byte-level BPE).
    pub byte_tokens: [Option<i32>; 256],
    pub chat_template: Option<String>,
    pub linefeed: Option<i32>,
}

/// What a `tokenizer.ggml.pre` value means to llama.cpp.
struct PreSpec {
    stages: Vec<Stage>,
    clean_spaces: bool,
    ignore_merges: bool,
    add_bos: bool,
    no_bos: bool,
    escape_whitespaces: bool,
    byte_encode: bool,
    newline_words: bool,
}

const DIGIT: Stage = Stage::Class { class: CharClass::Number, runs: false };

fn pre_spec(pre: &str) -> Result<PreSpec, &'static str> {
    let gpt2 = vec![Stage::Gpt2];
    let smollm = vec![DIGIT, Stage::Gpt2];
    let llama3 = vec![Stage::Llama3 { digits: 3, marks: false }];
    let qwen2 = vec![Stage::Llama3 { digits: 1, marks: false }];
    let mut spec = PreSpec {
        stages: Vec::new(),
        clean_spaces: true,
        ignore_merges: false,
        add_bos: false,
        no_bos: false,
        escape_whitespaces: false,
        byte_encode: true,
        newline_words: false,
    };
    let keep_spaces = |s: &mut PreSpec| s.clean_spaces = false;
    match pre {
        "" | "default" => {
            spec.stages = vec![
                Stage::Class { class: CharClass::Punctuation { backtick: false }, runs: true },
                Stage::Gpt2,
                Stage::Class { class: CharClass::Number, runs: true },
                Stage::AsciiDigits3,
            ]
        }
        "llama3" | "llama-v3" | "llama-bpe" | "falcon3" | "falcon-h1" | "pixtral" | "midm-2.0" | "lfm2" | "jina-v5-nano" => {
            spec.stages = llama3;
            spec.ignore_merges = true;
            spec.add_bos = true;
        }
        "dbrx" | "smaug-bpe" => spec.stages = llama3,
        "chatglm-bpe" => {
            spec.stages = llama3;
            spec.no_bos = true;
        }
        "glm4" | "glm5" => {
            spec.stages = llama3;
            spec.no_bos = true;
            spec.ignore_merges = true;
        }
        "falcon" => {
            spec.stages = vec![
                Stage::Class { class: CharClass::Punctuation { backtick: true }, runs: true },
                Stage::Gpt2,
                Stage::AsciiDigits3,
            ]
        }
        "gpt-2" | "phi-2" | "jina-es" | "jina-de" | "gigachat" | "jina-v2-es" | "jina-v2-de" | "a.x-4.0" | "mellum"
        | "modern-bert" | "mpt" | "olmo" | "jais" | "exaone4" => spec.stages = gpt2,
        "trillion" | "granite-docling" => {
            spec.stages = gpt2;
            keep_spaces(&mut spec);
        }
        "starcoder" | "refact" | "codeshell" | "exaone" | "minerva-7b" | "mellum2" => spec.stages = smollm,
        "command-r" | "smollm" => {
            spec.stages = smollm;
            keep_spaces(&mut spec);
        }
        "qwen2" | "deepseek-r1-qwen" | "kormo" | "f2llmv2" | "hunyuan" | "grok-2" | "solar-open" => {
            spec.stages = qwen2;
            keep_spaces(&mut spec);
        }
        "stablelm2" | "megrez" => spec.stages = qwen2,
        "qwen35" => {
            spec.stages = vec![Stage::Llama3 { digits: 1, marks: true }];
            keep_spaces(&mut spec);
        }
        "laguna" => {
            spec.stages = vec![Stage::Newlines, Stage::Llama3 { digits: 1, marks: false }];
            keep_spaces(&mut spec);
        }
        "gemma4" | "granite-embed-multi-311m" => {
            spec.stages = vec![Stage::Newlines];
            spec.escape_whitespaces = true;
            spec.byte_encode = false;
            spec.newline_words = true;
        }
        "minicpm5" | "deepseek-llm" | "deepseek-coder" | "deepseek-v3" | "spark2_5" | "youtu" | "jais-2" | "mmbert"
        | "sarvam-moe" | "jina-v1-en" | "jina-v2-code" | "roberta-bpe" | "whitespace" | "poro-chat" | "viking"
        | "tekken" | "bloom" | "gpt3-finnish" | "exaone-moe" | "chameleon" | "gpt-4o" | "llama4" | "kanana2"
        | "talkie" | "granite-embed-multi-97m" | "tiny_aya" | "cohere2moe" | "superbpe" | "bailingmoe"
        | "bailingmoe2" | "llada-moe" | "seed-coder" | "hunyuan-dense" | "hy_v4" | "joyai-llm" | "kimi-k2"
        | "ufakzeka" | "afmoe" | "minimax-m2" => {
            return Err("llama.cpp knows this pre-tokenizer but edgelora's tokenizer does not implement it")
        }
        _ => return Err("unknown pre-tokenizer"),
    }
    Ok(spec)
}

/// Reads the typed metadata with errors naming the file and key.
struct Meta<'a> {
    gguf: &'a GgufFile,
}

impl<'a> Meta<'a> {
    fn path(&self) -> PathBuf {
        self.gguf.path().to_path_buf()
    }

    fn wrong(&self, key: &str, expected: &str, found: &MetaValue) -> TokenizerError {
        TokenizerError::WrongType {
            path: self.path(),
            key: key.into(),
            expected: expected.into(),
            found: format!("{} {}", found.value_type().name(), found.summary()),
        }
    }

    fn string(&self, key: &str) -> Result<Option<&'a str>, TokenizerError> {
        match self.gguf.get(key) {
            None => Ok(None),
            Some(MetaValue::String(s)) => Ok(Some(s)),
            Some(v) => Err(self.wrong(key, "a string", v)),
        }
    }

    fn boolean(&self, key: &str) -> Result<Option<bool>, TokenizerError> {
        match self.gguf.get(key) {
            None => Ok(None),
            Some(MetaValue::Bool(b)) => Ok(Some(*b)),
            Some(v) => Err(self.wrong(key, "a bool", v)),
        }
    }

    fn uint(&self, key: &str) -> Result<Option<u64>, TokenizerError> {
        match self.gguf.get(key) {
            None => Ok(None),
            Some(v) => v.as_u64().map(Some).ok_or_else(|| self.wrong(key, "a non-negative integer", v)),
        }
    }

    fn array(&self, key: &str, allowed: &[ValueType]) -> Result<Option<&'a [MetaValue]>, TokenizerError> {
        let names: Vec<&str> = allowed.iter().map(|t| t.name()).collect();
        let expected = format!("an array of {}", names.join(" or "));
        match self.gguf.get(key) {
            None => Ok(None),
            Some(MetaValue::Array(t, items)) if allowed.contains(t) => Ok(Some(items)),
            Some(v) => Err(self.wrong(key, &expected, v)),
        }
    }
}

fn entry_error(path: &Path, key: &str, index: usize, reason: String) -> TokenizerError {
    TokenizerError::BadEntry { path: path.to_path_buf(), key: key.into(), index, reason }
}

impl Vocab {
    pub(crate) fn from_gguf(gguf: &GgufFile) -> Result<Vocab, TokenizerError> {
        let meta = Meta { gguf };
        let path = gguf.path().to_path_buf();

        let model = meta
            .string(KEY_MODEL)?
            .ok_or_else(|| TokenizerError::MissingKey { path: path.clone(), key: KEY_MODEL.into() })?
            .to_string();
        let unsupported = |reason: &str| TokenizerError::UnsupportedModel {
            path: path.clone(),
            key: KEY_MODEL.into(),
            value: model.clone(),
            reason: reason.into(),
        };
        let mut ids = SpecialIds::default();
        let kind = match model.as_str() {
            "llama" => {
                ids.bos = Some(1);
                ids.eos = Some(2);
                ids.unk = Some(0);
                VocabKind::Spm
            }
            "gpt2" => {
                ids.bos = Some(11);
                ids.eos = Some(11);
                VocabKind::Bpe
            }
            "gemma4" => VocabKind::Bpe,
            "no_vocab" | "none" | "bert" | "t5" | "rwkv" | "plamo2" | "hybriddna" | "whitespace" | "test" => {
                return Err(unsupported(
                    "llama.cpp knows this tokenizer model but edgelora's tokenizer implements only \"llama\" (SentencePiece), \"gpt2\" and \"gemma4\" (BPE)",
                ))
            }
            _ => return Err(unsupported("unknown tokenizer model (expected \"llama\", \"gpt2\" or \"gemma4\")")),
        };

        let mut pre = meta.string(KEY_PRE)?.unwrap_or("").to_string();
        if model == "gemma4" {
            pre = "gemma4".into();
        }
        let (mut add_bos, clean_spaces, mut add_space_prefix, spec) = match kind {
            VocabKind::Bpe => {
                let s = pre_spec(&pre).map_err(|reason| TokenizerError::UnsupportedPreTokenizer {
                    path: path.clone(),
                    key: KEY_PRE.into(),
                    value: pre.clone(),
                    reason: reason.into(),
                })?;
                if s.no_bos {
                    ids.bos = None;
                }
                (s.add_bos, s.clean_spaces, false, Some(s))
            }
            // SentencePiece: the pre-tokenizer key plays no part.
            VocabKind::Spm => (true, false, true, None),
        };
        let mut add_eos = false;
        if let Some(v) = meta.boolean("tokenizer.ggml.add_space_prefix")? {
            add_space_prefix = v;
        }

        // Tokens, scores, types.
        let items = meta
            .array(KEY_TOKENS, &[ValueType::String])?
            .ok_or_else(|| TokenizerError::MissingKey { path: path.clone(), key: KEY_TOKENS.into() })?;
        let n = items.len();
        if n == 0 || n > i32::MAX as usize {
            return Err(TokenizerError::BadVocab { path, key: KEY_TOKENS.into(), reason: format!("{n} tokens (expected 1..2^31)") });
        }
        let mut texts: Vec<Box<str>> = Vec::with_capacity(n);
        let mut by_text: HashMap<Box<str>, i32> = HashMap::with_capacity(n);
        for (i, item) in items.iter().enumerate() {
            let s = item.as_str().unwrap_or_default();
            let text: Box<str> = if s.is_empty() { format!("[EMPTY_{i}]").into() } else { s.into() };
            if let Some(prev) = by_text.insert(text.clone(), i as i32) {
                return Err(entry_error(&path, KEY_TOKENS, i, format!("token {text:?} repeats token {prev}")));
            }
            texts.push(text);
        }

        let mut scores = vec![0.0f32; n];
        if let Some(items) = meta.array(KEY_SCORES, &[ValueType::F32, ValueType::I32])? {
            if items.len() < n {
                return Err(TokenizerError::TooShort { path, key: KEY_SCORES.into(), len: items.len(), n_tokens: n });
            }
            for (s, v) in scores.iter_mut().zip(items) {
                *s = match v {
                    MetaValue::F32(f) => *f,
                    MetaValue::I32(i) => *i as f32,
                    _ => 0.0,
                };
            }
        }

        let mut attrs = vec![TokenAttr::NORMAL; n];
        if let Some(items) = meta.array(KEY_TOKEN_TYPE, &[ValueType::I32])? {
            if items.len() < n {
                return Err(TokenizerError::TooShort { path, key: KEY_TOKEN_TYPE.into(), len: items.len(), n_tokens: n });
            }
            for (a, v) in attrs.iter_mut().zip(items) {
                let t = if let MetaValue::I32(t) = v { *t } else { 0 };
                *a = match t {
                    1 => TokenAttr::NORMAL,
                    2 => TokenAttr::UNKNOWN,
                    3 => TokenAttr::CONTROL,
                    4 => TokenAttr::USER_DEFINED,
                    5 => TokenAttr::UNUSED,
                    6 => TokenAttr::BYTE,
                    _ => TokenAttr::UNDEFINED,
                };
            }
        }

        // Merges.
        let mut merges = HashMap::new();
        if kind == VocabKind::Bpe {
            let items = meta
                .array(KEY_MERGES, &[ValueType::String])?
                .ok_or_else(|| TokenizerError::MissingKey { path: path.clone(), key: KEY_MERGES.into() })?;
            merges.reserve(items.len());
            for (i, item) in items.iter().enumerate() {
                let line = item.as_str().unwrap_or_default();
                // llama.cpp splits at the first space after the first byte.
                let split = line.bytes().skip(1).position(|b| b == b' ').map(|p| p + 1);
                let Some(split) = split else {
                    return Err(entry_error(&path, KEY_MERGES, i, format!("{line:?} is not two tokens separated by a space")));
                };
                let (first, second) = (&line[..split], &line[split + 1..]);
                let id = |part: &str| {
                    by_text.get(part).copied().ok_or_else(|| {
                        entry_error(&path, KEY_MERGES, i, format!("merge {line:?} names {part:?}, which is not a token"))
                    })
                };
                let (a, b) = (id(first)?, id(second)?);
                let result = by_text.get(format!("{first}{second}").as_str()).copied();
                merges.entry((a, b)).or_insert(Merge { rank: i as u32, result });
            }
        }

        // Special token ids.
        let n_i32 = n as i32;
        {
            let SpecialIds { bos, eos, eot, eom, unk, sep, pad, mask, fim_pre, fim_suf, fim_mid, fim_pad, fim_rep, fim_sep } = &mut ids;
            let slots: [(&str, &mut Option<i32>); 14] = [
                ("tokenizer.ggml.bos_token_id", bos),
                ("tokenizer.ggml.eos_token_id", eos),
                ("tokenizer.ggml.eot_token_id", eot),
                ("tokenizer.ggml.eom_token_id", eom),
                ("tokenizer.ggml.unknown_token_id", unk),
                ("tokenizer.ggml.seperator_token_id", sep),
                ("tokenizer.ggml.padding_token_id", pad),
                ("tokenizer.ggml.mask_token_id", mask),
                ("tokenizer.ggml.fim_pre_token_id", fim_pre),
                ("tokenizer.ggml.fim_suf_token_id", fim_suf),
                ("tokenizer.ggml.fim_mid_token_id", fim_mid),
                ("tokenizer.ggml.fim_pad_token_id", fim_pad),
                ("tokenizer.ggml.fim_rep_token_id", fim_rep),
                ("tokenizer.ggml.fim_sep_token_id", fim_sep),
            ];
            for (key, slot) in slots {
                // A default outside the vocabulary is dropped, as llama.cpp does.
                if slot.is_some_and(|d| d >= n_i32) {
                    *slot = None;
                }
                if let Some(v) = meta.uint(key)? {
                    if v >= n as u64 {
                        return Err(TokenizerError::TokenIdOutOfRange { path, key: key.into(), id: v, n_vocab: n });
                    }
                    *slot = Some(v as i32);
                }
            }
        }
        // The deprecated names of the FIM ids, read after the others as llama.cpp does.
        for (key, slot) in [
            ("tokenizer.ggml.prefix_token_id", &mut ids.fim_pre),
            ("tokenizer.ggml.suffix_token_id", &mut ids.fim_suf),
            ("tokenizer.ggml.middle_token_id", &mut ids.fim_mid),
        ] {
            if let Some(v) = meta.uint(key)? {
                if v >= n as u64 {
                    return Err(TokenizerError::TokenIdOutOfRange { path, key: key.into(), id: v, n_vocab: n });
                }
                *slot = Some(v as i32);
            }
        }
        if let Some(v) = meta.boolean("tokenizer.ggml.add_bos_token")? {
            add_bos = v;
        }
        if let Some(v) = meta.boolean("tokenizer.ggml.add_eos_token")? {
            add_eos = v;
        }
        if pre == "gemma4" || pre == "granite-embed-multi-311m" {
            // llama.cpp always adds BOS for Gemma 4.
            add_bos = true;
        }

        let mut v = Vocab {
            kind,
            model,
            pre,
            texts,
            scores,
            attrs,
            by_text,
            merges,
            stages: Vec::new(),
            byte_encode: true,
            newline_words: false,
            ids,
            add_bos,
            add_eos,
            add_space_prefix,
            ignore_merges: false,
            clean_spaces,
            escape_whitespaces: false,
            eog: BTreeSet::new(),
            special_order: Vec::new(),
            special_finder: None,
            pieces: Vec::new(),
            byte_tokens: [None; 256],
            chat_template: meta.string(KEY_CHAT_TEMPLATE)?.map(str::to_string),
            linefeed: None,
        };
        if let Some(s) = spec {
            v.stages = s.stages;
            v.ignore_merges = s.ignore_merges;
            v.escape_whitespaces = s.escape_whitespaces;
            v.byte_encode = s.byte_encode;
            v.newline_words = s.newline_words;
        }
        v.fix_attributes();
        v.build_special_finder(&path)?;
        v.byte_tokens = v.find_byte_tokens();
        v.pieces = (0..n).map(|i| v.render_piece(i).into_boxed_slice()).collect();
        let name = meta.string("general.name").ok().flatten().unwrap_or("");
        let arch = meta.string("general.architecture").ok().flatten().unwrap_or("");
        let pre_key = meta.string(KEY_PRE).ok().flatten().unwrap_or("");
        v.strip_attributes(name, pre_key, arch);
        v.linefeed = match v.kind {
            VocabKind::Spm => v.byte_tokens[b'\n' as usize].or(v.ids.pad),
            VocabKind::Bpe => v.encode_plain("\n").ok().and_then(|t| t.first().copied()).or(v.ids.pad),
        };
        Ok(v)
    }

    pub(crate) fn n_tokens(&self) -> usize {
        self.texts.len()
    }

    pub(crate) fn attr(&self, id: i32) -> TokenAttr {
        usize::try_from(id).ok().and_then(|i| self.attrs.get(i)).copied().unwrap_or_default()
    }

    pub(crate) fn lookup(&self, text: &str) -> Option<i32> {
        self.by_text.get(text).copied()
    }

    fn add_attr(&mut self, id: i32, a: TokenAttr) {
        self.attrs[id as usize] = self.attrs[id as usize] | a;
    }

    /// The first token (lowest id) whose text is one of `texts`.
    fn first_of(&self, texts: &[&str]) -> Option<i32> {
        texts.iter().filter_map(|t| self.lookup(t)).min()
    }

    /// llama.cpp's corrections of the attributes and its end-of-generation set, decided
    /// from token texts.
    fn fix_attributes(&mut self) {
        // Roles found by text when the metadata does not name them; the token becomes
        // a control token.
        let eot_texts = [
            "<|eot_id|>", "<|im_end|>", "<|end|>", "<end_of_turn>", "<|endoftext|>", "<|end_of_text|>", "<EOT>",
            "_<EOT>", "[EOT]", "<｜end▁of▁sentence｜>", "<end_of_utterance>",
        ];
        let roles: [(&[&str], fn(&mut SpecialIds) -> &mut Option<i32>); 8] = [
            (&eot_texts, |s| &mut s.eot),
            (&["<|eom_id|>"], |s| &mut s.eom),
            (
                &["<|fim_prefix|>", "<fim-prefix>", "<fim_prefix>", "<｜fim▁begin｜>", "<PRE>", "▁<PRE>", "<|code_prefix|>", "<|prefix|>"],
                |s| &mut s.fim_pre,
            ),
            (
                &["<|fim_suffix|>", "<fim-suffix>", "<fim_suffix>", "<｜fim▁hole｜>", "<SUF>", "▁<SUF>", "<|code_suffix|>", "<|suffix|>"],
                |s| &mut s.fim_suf,
            ),
            (
                &["<|fim_middle|>", "<fim-middle>", "<fim_middle>", "<｜fim▁end｜>", "<MID>", "▁<MID>", "<|code_middle|>", "<|middle|>"],
                |s| &mut s.fim_mid,
            ),
            (&["<|fim_pad|>", "<fim-pad>", "<fim_pad>", "<PAD>", "[PAD]"], |s| &mut s.fim_pad),
            (&["<|fim_repo|>", "<|repo_name|>", "<fim-repo>", "<REPO>", "<reponame>"], |s| &mut s.fim_rep),
            (&["<|file_sep|>"], |s| &mut s.fim_sep),
        ];
        for (texts, slot) in roles {
            if slot(&mut self.ids).is_none() {
                if let Some(id) = self.first_of(texts) {
                    *slot(&mut self.ids) = Some(id);
                    self.add_attr(id, TokenAttr::CONTROL);
                }
            }
        }

        // Control tokens whose text says "unused".
        for i in 0..self.texts.len() {
            if self.attrs[i].intersects(TokenAttr::CONTROL) && self.texts[i].contains("unused") {
                self.attrs[i] = self.attrs[i] | TokenAttr::UNUSED;
            }
        }

        let mut eog = BTreeSet::new();
        eog.extend(self.ids.fim_pad);
        eog.extend(self.ids.fim_rep);
        eog.extend(self.ids.fim_sep);
        let eog_texts = [
            "<|eot_id|>", "<|im_end|>", "<|end|>", "<|return|>", "<|call|>", "<|flush|>", "<|calls|>", "<end_of_turn>",
            "<|endoftext|>", "</s>", "<|eom_id|>", "<EOT>", "_<EOT>", "[EOT]", "[EOS]", "<|end_of_text|>",
            "<end_of_utterance>", "<eos>", "<turn|>", "<|tool_response>", "<｜end▁of▁sentence｜>", "[e~[",
        ];
        for t in eog_texts {
            if let Some(id) = self.lookup(t) {
                eog.insert(id);
                self.add_attr(id, TokenAttr::CONTROL);
            }
        }
        // gpt-oss: always rendered.
        for t in ["<|channel|>", "<|message|>", "<|start|>", "<|constrain|>"] {
            if let Some(id) = self.lookup(t) {
                self.attrs[id as usize] = TokenAttr::USER_DEFINED;
            }
        }
        eog.extend(self.ids.eos);
        eog.extend(self.ids.eot);
        eog.extend(self.ids.eom);

        // o200k_harmony / solar-open: "<|end|>" ends a message, not the generation.
        let in_eog = |v: &Vocab, eog: &BTreeSet<i32>, t: &str| v.lookup(t).is_some_and(|id| eog.contains(&id));
        if let Some(end) = self.lookup("<|end|>").filter(|id| eog.contains(id)) {
            let call = in_eog(self, &eog, "<|call|>") || in_eog(self, &eog, "<|calls|>");
            if (in_eog(self, &eog, "<|return|>") && call) || (call && in_eog(self, &eog, "<|flush|>")) {
                eog.remove(&end);
                self.attrs[end as usize] = TokenAttr::USER_DEFINED;
            }
        }
        // Gemma 4 / PLaMo: "</s>" is an ordinary token.
        if let Some(s_id) = self.lookup("</s>").filter(|id| eog.contains(id)) {
            if in_eog(self, &eog, "<|tool_response>") || in_eog(self, &eog, "<|plamo:eos|>") {
                eog.remove(&s_id);
                self.attrs[s_id as usize] = TokenAttr::NORMAL;
            }
        }
        self.eog = eog;

        let recognised = TokenAttr::CONTROL | TokenAttr::USER_DEFINED | TokenAttr::UNKNOWN;
        let mut order: Vec<i32> =
            (0..self.texts.len() as i32).filter(|&i| self.attrs[i as usize].intersects(recognised)).collect();
        order.sort_by(|&a, &b| self.texts[b as usize].len().cmp(&self.texts[a as usize].len()).then(a.cmp(&b)));
        self.special_order = order;
    }

    /// llama.cpp's whitespace-stripping attributes, set by model name.
    fn strip_attributes(&mut self, name: &str, pre: &str, arch: &str) {
        let name = name.to_ascii_lowercase();
        let any = |s: &str, subs: &[&str]| subs.iter().any(|x| s.contains(x));
        if any(pre, &["jina-v2-de", "jina-v2-es", "jina-v2-code", "mmbert"]) || any(arch, &["nomic-bert-moe", "jina-bert-v3"]) {
            if let Some(id) = self.lookup("<mask>") {
                self.add_attr(id, TokenAttr::LSTRIP);
            }
        } else if any(&name, &["phi-3", "phi3"]) {
            for id in self.special_order.clone() {
                self.add_attr(id, TokenAttr::RSTRIP);
            }
            if let Some(id) = self.lookup("</s>") {
                self.add_attr(id, TokenAttr::RSTRIP);
            }
            for t in ["<unk>", "<s>", "<|endoftext|>"] {
                if let Some(id) = self.lookup(t) {
                    self.attrs[id as usize] = TokenAttr(self.attrs[id as usize].0 & !TokenAttr::RSTRIP.0);
                }
            }
        } else if any(&name, &["modern-bert"]) {
            if let Some(id) = self.lookup("[MASK]") {
                self.add_attr(id, TokenAttr::LSTRIP);
            }
        }
    }

    fn build_special_finder(&mut self, path: &Path) -> Result<(), TokenizerError> {
        if self.special_order.is_empty() {
            return Ok(());
        }
        let patterns: Vec<&str> = self.special_order.iter().map(|&id| &*self.texts[id as usize]).collect();
        let finder = AhoCorasick::builder().match_kind(MatchKind::Standard).build(&patterns).map_err(|e| {
            TokenizerError::BadVocab { path: path.to_path_buf(), key: KEY_TOKENS.into(), reason: format!("special tokens: {e}") }
        })?;
        self.special_finder = Some(finder);
        Ok(())
    }

    fn find_byte_tokens(&self) -> [Option<i32>; 256] {
        let mut out = [None; 256];
        for (b, slot) in out.iter_mut().enumerate() {
            *slot = match self.kind {
                VocabKind::Spm => self.lookup(&format!("<0x{b:02X}>")).or_else(|| {
                    // A one-byte token: only ASCII bytes can be one (texts are UTF-8).
                    (b < 0x80).then(|| self.lookup(&(b as u8 as char).to_string())).flatten()
                }),
                VocabKind::Bpe if self.byte_encode => self.lookup(&unicode::byte_to_char_table()[b].to_string()),
                VocabKind::Bpe => self.lookup(&format!("<0x{b:02X}>")),
            };
        }
        out
    }

    /// The byte a `<0xXX>` token stands for, read as llama.cpp does (`strtol` of the two
    /// characters after `<0x`).
    fn byte_of(text: &str) -> u8 {
        let digits = text.as_bytes().get(3..5).unwrap_or_default();
        let mut v = 0u32;
        for &d in digits {
            match (d as char).to_digit(16) {
                Some(x) => v = v * 16 + x,
                None => break,
            }
        }
        v as u8
    }

    /// `llama_token_to_piece(special = true)` of token `i`.
    fn render_piece(&self, i: usize) -> Vec<u8> {
        let attr = self.attrs[i];
        let text = &*self.texts[i];
        if attr.intersects(TokenAttr::UNKNOWN | TokenAttr::CONTROL | TokenAttr::USER_DEFINED) {
            return text.as_bytes().to_vec();
        }
        if attr.intersects(TokenAttr::NORMAL) {
            if self.kind == VocabKind::Spm || self.escape_whitespaces {
                return text.replace('▁', " ").into_bytes();
            }
            let mut out = Vec::with_capacity(text.len());
            for c in text.chars() {
                match unicode::char_to_byte(c) {
                    Some(b) => out.push(b),
                    None => {
                        // llama.cpp's marker for a character that is no GPT-2 byte.
                        out.extend_from_slice(b"[UNK_BYTE_0x");
                        let mut buf = [0u8; 4];
                        for b in c.encode_utf8(&mut buf).bytes() {
                            out.extend_from_slice(format!("{b:02x}").as_bytes());
                        }
                        out.extend_from_slice(text.as_bytes());
                        out.push(b']');
                    }
                }
            }
            return out;
        }
        if attr.intersects(TokenAttr::BYTE) {
            return vec![Self::byte_of(text)];
        }
        Vec::new()
    }
}
