//! Codepoint classes as llama.cpp's pre-tokenizers see them, and GPT-2's byte ↔ character
//! mapping.
//!
//! llama.cpp classifies a codepoint by its Unicode general category (letter, mark,
//! number, punctuation, symbol, separator, control; unassigned codepoints are
//! "undefined"), from the Unicode 15.1 character database, plus the White_Space list.
//! The categories here come from `regex-syntax`'s tables (Unicode 16), restricted to the
//! codepoints assigned by 15.1 (`Age=15.1`), so that a character new in 16.0 stays
//! "undefined" as it is in llama.cpp.

use std::sync::OnceLock;

use regex_syntax::hir::{Class, HirKind};

pub(crate) const UNDEFINED: u16 = 0x0001;
pub(crate) const NUMBER: u16 = 0x0002;
pub(crate) const LETTER: u16 = 0x0004;
pub(crate) const SEPARATOR: u16 = 0x0008;
pub(crate) const MARK: u16 = 0x0010;
pub(crate) const PUNCTUATION: u16 = 0x0020;
pub(crate) const SYMBOL: u16 = 0x0040;
pub(crate) const CONTROL: u16 = 0x0080;
/// The general-category bits (exactly one is set for every codepoint).
pub(crate) const CATEGORY_MASK: u16 = 0x00FF;
pub(crate) const WHITESPACE: u16 = 0x0100;

/// Unicode's White_Space property (PropList.txt), as llama.cpp lists it.
const WHITE_SPACE: &[u32] = &[
    0x09, 0x0A, 0x0B, 0x0C, 0x0D, 0x20, 0x85, 0xA0, 0x1680, 0x2000, 0x2001, 0x2002, 0x2003, 0x2004,
    0x2005, 0x2006, 0x2007, 0x2008, 0x2009, 0x200A, 0x2028, 0x2029, 0x202F, 0x205F, 0x3000,
];

const N_CODEPOINTS: usize = 0x11_0000;

struct Table {
    ascii: [u16; 128],
    /// Start codepoint of each run of equal flags, ascending; `flags[i]` holds for
    /// `starts[i]..starts[i + 1]`.
    starts: Vec<u32>,
    flags: Vec<u16>,
}

fn table() -> &'static Table {
    static TABLE: OnceLock<Table> = OnceLock::new();
    TABLE.get_or_init(build_table)
}

/// The codepoint ranges of a Unicode class written in regex syntax.
fn class_ranges(pattern: &str) -> Vec<(u32, u32)> {
    let hir = regex_syntax::ParserBuilder::new()
        .unicode(true)
        .build()
        .parse(pattern)
        // The patterns are constants of this file, all parsed whenever a BPE vocabulary
        // tokenizes (every tokenizer test does).
        .unwrap_or_else(|e| panic!("built-in Unicode class {pattern}: {e}"));
    match hir.kind() {
        HirKind::Class(Class::Unicode(c)) => c.ranges().iter().map(|r| (r.start() as u32, r.end() as u32)).collect(),
        other => panic!("built-in Unicode class {pattern} parsed as {other:?}"),
    }
}

fn build_table() -> Table {
    let mut all = vec![UNDEFINED; N_CODEPOINTS];
    let categories = [
        (r"\p{L}", LETTER),
        (r"\p{M}", MARK),
        (r"\p{N}", NUMBER),
        (r"\p{P}", PUNCTUATION),
        (r"\p{S}", SYMBOL),
        (r"\p{Z}", SEPARATOR),
        (r"[\p{Cc}\p{Cf}\p{Co}]", CONTROL),
    ];
    for (pattern, flag) in categories {
        for (lo, hi) in class_ranges(pattern) {
            all[lo as usize..=hi as usize].fill(flag);
        }
    }
    // Surrogates are "Cs" (control) in the database; they never occur in a `str`.
    all[0xD800..=0xDFFF].fill(CONTROL);
    // Characters assigned after Unicode 15.1 are unassigned for llama.cpp.
    let mut assigned = vec![false; N_CODEPOINTS];
    for (lo, hi) in class_ranges(r"\p{Age=15.1}") {
        assigned[lo as usize..=hi as usize].fill(true);
    }
    for (cp, flag) in all.iter_mut().enumerate() {
        if !assigned[cp] && !(0xD800..=0xDFFF).contains(&cp) {
            *flag = UNDEFINED;
        }
    }
    for &cp in WHITE_SPACE {
        all[cp as usize] |= WHITESPACE;
    }

    let mut ascii = [0u16; 128];
    ascii.copy_from_slice(&all[..128]);
    let mut starts = Vec::new();
    let mut flags = Vec::new();
    for (cp, &f) in all.iter().enumerate() {
        if flags.last() != Some(&f) {
            starts.push(cp as u32);
            flags.push(f);
        }
    }
    Table { ascii, starts, flags }
}

/// The class flags of `c` (one category bit, plus [`WHITESPACE`]).
#[inline]
pub(crate) fn flags(c: char) -> u16 {
    let t = table();
    let cp = c as u32;
    if cp < 128 {
        return t.ascii[cp as usize];
    }
    let i = t.starts.partition_point(|&s| s <= cp);
    // `starts[0] == 0`, so `i >= 1`.
    t.flags[i - 1]
}

/// GPT-2's printable stand-in for each byte: printable Latin-1 bytes stand for
/// themselves, the others for U+0100 onwards in byte order.
pub(crate) fn byte_to_char_table() -> &'static [char; 256] {
    static MAP: OnceLock<[char; 256]> = OnceLock::new();
    MAP.get_or_init(|| {
        let printable = |b: u32| (0x21..=0x7E).contains(&b) || (0xA1..=0xAC).contains(&b) || (0xAE..=0xFF).contains(&b);
        let mut map = ['\0'; 256];
        let mut next = 0x100u32;
        for b in 0..256u32 {
            let cp = if printable(b) {
                b
            } else {
                next += 1;
                next - 1
            };
            map[b as usize] = char::from_u32(cp).unwrap_or('\u{FFFD}');
        }
        map
    })
}

/// The byte a GPT-2 stand-in character encodes, if it is one.
pub(crate) fn char_to_byte(c: char) -> Option<u8> {
    static REV: OnceLock<Vec<Option<u8>>> = OnceLock::new();
    let rev = REV.get_or_init(|| {
        let mut rev = vec![None; 0x144];
        for (b, &c) in byte_to_char_table().iter().enumerate() {
            rev[c as usize] = Some(b as u8);
        }
        rev
    });
    rev.get(c as usize).copied().flatten()
}
