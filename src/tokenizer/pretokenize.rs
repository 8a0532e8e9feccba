//! Byte-level BPE pre-tokenization: the text is cut into words before merging, by the
//! regular expressions llama.cpp lists for each `tokenizer.ggml.pre`.
//!
//! llama.cpp runs the common expressions through hand-written splitters (GPT-2's,
//! Llama 3's, Qwen2's, Qwen3.5's, newline runs) and the others through `std::regex` over a
//! copy of the text in which every non-ASCII codepoint is collapsed to one byte standing
//! for its class. Both are reproduced here as plain loops over codepoints, without
//! backtracking: each stage takes the segments of the previous one and cuts them further,
//! in time linear in the text. Stages:
//!
//! - [`Stage::Gpt2`]: `'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+`
//! - [`Stage::Llama3`]: `(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+`
//!   (Qwen2: `\p{N}` instead of `\p{N}{1,3}`; Qwen3.5: marks count as letters)
//! - [`Stage::Newlines`]: `[^\n]+|[\n]+`
//! - [`Stage::Class`]: a character class, each match (or each maximal run) a word of its
//!   own (`\p{N}`, `\p{N}+`, `[\p{P}\$\+<=>\^~\|]+`)
//! - [`Stage::AsciiDigits3`]: `[0-9][0-9][0-9]`
//!
//! As in llama.cpp, a segment's end counts as the end of the text for the lookahead
//! `(?!\S)`.

use super::unicode::{self, CATEGORY_MASK, LETTER, MARK, NUMBER, PUNCTUATION, WHITESPACE};

/// A character class of the collapsed `std::regex` expressions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum CharClass {
    /// `\p{N}`: ASCII digits and non-ASCII numbers.
    Number,
    /// `[\p{P}\$\+<=>\^~\|]` (`default`), with the backtick too for `falcon`.
    Punctuation { backtick: bool },
}

impl CharClass {
    fn contains(self, c: char) -> bool {
        let cp = c as u32;
        match self {
            CharClass::Number => {
                if cp < 128 {
                    c.is_ascii_digit()
                } else {
                    collapsed_category(c) == NUMBER
                }
            }
            CharClass::Punctuation { backtick } => {
                if cp < 128 {
                    // ASCII \p{P} plus the listed symbols.
                    matches!(c, '!'..='#' | '%'..='*' | ','..='/' | ':' | ';' | '?' | '@' | '['..=']' | '_' | '{' | '}')
                        || matches!(c, '$' | '+' | '<' | '=' | '>' | '^' | '~' | '|')
                        || (backtick && c == '`')
                } else {
                    collapsed_category(c) == PUNCTUATION
                }
            }
        }
    }
}

/// The class a non-ASCII codepoint collapses to: whitespace first, then its category.
fn collapsed_category(c: char) -> u16 {
    let f = unicode::flags(c);
    if f & WHITESPACE != 0 {
        WHITESPACE
    } else {
        f & CATEGORY_MASK
    }
}

/// One splitting stage.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Stage {
    Gpt2,
    /// Llama 3 (`digits == 3`), Qwen2 (`digits == 1`), Qwen3.5 (`marks`).
    Llama3 { digits: usize, marks: bool },
    Newlines,
    /// Every match of the class is a word; with `runs`, every maximal run is one.
    Class { class: CharClass, runs: bool },
    AsciiDigits3,
}

/// Cuts `cpts` into words: returns the word lengths in codepoints, in order, summing to
/// `cpts.len()`.
pub(crate) fn split(cpts: &[char], stages: &[Stage]) -> Vec<usize> {
    let mut segments = vec![cpts.len()];
    for stage in stages {
        let mut next = Vec::with_capacity(segments.len() * 2);
        let mut start = 0;
        for &len in &segments {
            let seg = &cpts[start..start + len];
            match stage {
                Stage::Gpt2 => split_gpt2(seg, &mut next),
                Stage::Llama3 { digits, marks } => split_llama3(seg, *digits, *marks, &mut next),
                Stage::Newlines => split_newlines(seg, &mut next),
                Stage::Class { class, runs } => split_class(seg, *class, *runs, &mut next),
                Stage::AsciiDigits3 => split_digit_triples(seg, &mut next),
            }
            start += len;
        }
        segments = next;
    }
    segments
}

/// Lengths of consecutive pieces of one segment, each ending where the previous ended.
struct Pieces<'a> {
    out: &'a mut Vec<usize>,
    last_end: usize,
}

impl Pieces<'_> {
    /// Ends a piece at `end`; an empty one is not recorded.
    fn cut(&mut self, end: usize) {
        if end > self.last_end {
            self.out.push(end - self.last_end);
        }
        self.last_end = end;
    }
}

/// The segment seen through llama.cpp's bounds: past the end there is no codepoint and
/// no class.
/// How far a whitespace run of `n_ws` at `pos` reaches, as `\s+(?!\S)|\s+`: all but
/// the last whitespace before a non-space, the whole run at the end, or one character when
/// there is none.
fn whitespace_step(seg: &Seg, pos: usize, n_ws: usize) -> usize {
    if n_ws > 1 && seg.cpt(pos + n_ws).is_some() {
        n_ws - 1
    } else {
        n_ws.max(1)
    }
}

struct Seg<'a>(&'a [char]);

impl Seg<'_> {
    fn cpt(&self, i: usize) -> Option<char> {
        self.0.get(i).copied()
    }
    fn flags(&self, i: usize) -> u16 {
        self.0.get(i).map_or(0, |&c| unicode::flags(c))
    }
    fn is(&self, i: usize, bit: u16) -> bool {
        self.flags(i) & bit != 0
    }
    fn is_rn(&self, i: usize) -> bool {
        matches!(self.cpt(i), Some('\r' | '\n'))
    }
    fn whitespace_run(&self, from: usize) -> usize {
        self.0[from.min(self.0.len())..].iter().take_while(|&&c| unicode::flags(c) & WHITESPACE != 0).count()
    }
}

/// `'s|'t|'re|'ve|'m|'ll|'d` at `pos`: the length of the contraction, if one starts here.
fn contraction(seg: &Seg<'_>, pos: usize, ignore_case: bool) -> Option<usize> {
    if seg.cpt(pos) != Some('\'') {
        return None;
    }
    let low = |c: Option<char>| c.map(|c| if ignore_case { c.to_ascii_lowercase() } else { c });
    let c1 = low(seg.cpt(pos + 1))?;
    if matches!(c1, 's' | 't' | 'm' | 'd') {
        return Some(2);
    }
    let c2 = low(seg.cpt(pos + 2))?;
    matches!((c1, c2), ('r', 'e') | ('v', 'e') | ('l', 'l')).then_some(3)
}

fn split_gpt2(cpts: &[char], out: &mut Vec<usize>) {
    let seg = Seg(cpts);
    let end = cpts.len();
    let mut p = Pieces { out, last_end: 0 };
    let mut pos = 0;
    let other = |f: u16| f != 0 && f & (WHITESPACE | LETTER | NUMBER) == 0;
    while pos < end {
        if let Some(n) = contraction(&seg, pos, false) {
            pos += n;
            p.cut(pos);
            continue;
        }
        let space = seg.cpt(pos) == Some(' ');
        let f2 = if space { seg.flags(pos + 1) } else { seg.flags(pos) };
        // ` ?\p{L}+`, ` ?\p{N}+`, ` ?[^\s\p{L}\p{N}]+`
        let in_run = |f: u16| {
            if f2 & LETTER != 0 {
                f & LETTER != 0
            } else if f2 & NUMBER != 0 {
                f & NUMBER != 0
            } else {
                other(f)
            }
        };
        if f2 & (LETTER | NUMBER) != 0 || other(f2) {
            pos += usize::from(space);
            while in_run(seg.flags(pos)) {
                pos += 1;
            }
            p.cut(pos);
            continue;
        }
        let n_ws = seg.whitespace_run(pos);
        pos += whitespace_step(&seg, pos, n_ws);
        p.cut(pos);
    }
}

fn split_llama3(cpts: &[char], digits: usize, marks: bool, out: &mut Vec<usize>) {
    let seg = Seg(cpts);
    let end = cpts.len();
    let mut p = Pieces { out, last_end: 0 };
    let mut pos = 0;
    let letterish = if marks { LETTER | MARK } else { LETTER };
    let not_other = WHITESPACE | letterish | NUMBER;
    while pos < end {
        if let Some(n) = contraction(&seg, pos, true) {
            pos += n;
            p.cut(pos);
            continue;
        }
        let c = cpts[pos];
        let f = seg.flags(pos);
        // `[^\r\n\p{L}\p{N}]?\p{L}+`
        if !(c == '\r' || c == '\n' || f & NUMBER != 0) && (f & letterish != 0 || seg.is(pos + 1, letterish)) {
            pos += 1;
            while seg.is(pos, letterish) {
                pos += 1;
            }
            p.cut(pos);
            continue;
        }
        // `\p{N}{1,3}` / `\p{N}`
        if f & NUMBER != 0 {
            let mut group_start = pos;
            while seg.is(pos, NUMBER) {
                pos += 1;
                if pos - group_start >= digits {
                    p.cut(pos);
                    group_start = pos;
                }
            }
            p.cut(pos);
            continue;
        }
        // ` ?[^\s\p{L}\p{N}]+[\r\n]*` (llama.cpp tests the class of the character after
        // an optional space, and only that the current one exists).
        let space = c == ' ';
        let f2 = if space { seg.flags(pos + 1) } else { f };
        if f2 & not_other == 0 {
            pos += usize::from(space);
            while seg.flags(pos) != 0 && seg.flags(pos) & not_other == 0 {
                pos += 1;
            }
            while seg.is_rn(pos) {
                pos += 1;
            }
            p.cut(pos);
            continue;
        }
        let n_ws = seg.whitespace_run(pos);
        let last_rn = (0..n_ws).rev().find(|&k| seg.is_rn(pos + k));
        if let Some(k) = last_rn {
            // `\s*[\r\n]+`: up to the last line break of the run.
            pos += k + 1;
        } else {
            pos += whitespace_step(&seg, pos, n_ws);
        }
        p.cut(pos);
    }
}

fn split_newlines(cpts: &[char], out: &mut Vec<usize>) {
    let mut pos = 0;
    while pos < cpts.len() {
        let newline = cpts[pos] == '\n';
        let start = pos;
        while pos < cpts.len() && (cpts[pos] == '\n') == newline {
            pos += 1;
        }
        out.push(pos - start);
    }
}

fn split_class(cpts: &[char], class: CharClass, runs: bool, out: &mut Vec<usize>) {
    let mut p = Pieces { out, last_end: 0 };
    let mut pos = 0;
    while pos < cpts.len() {
        if class.contains(cpts[pos]) {
            p.cut(pos);
            pos += 1;
            if runs {
                while pos < cpts.len() && class.contains(cpts[pos]) {
                    pos += 1;
                }
            }
            p.cut(pos);
        } else {
            pos += 1;
        }
    }
    p.cut(cpts.len());
}

fn split_digit_triples(cpts: &[char], out: &mut Vec<usize>) {
    let mut p = Pieces { out, last_end: 0 };
    let mut pos = 0;
    while pos + 3 <= cpts.len() {
        if cpts[pos..pos + 3].iter().all(char::is_ascii_digit) {
            p.cut(pos);
            pos += 3;
            p.cut(pos);
        } else {
            pos += 1;
        }
    }
    p.cut(cpts.len());
}
