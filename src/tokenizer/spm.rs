//! SentencePiece-style merging (llama.cpp's SPM tokenizer): symbols start as single
//! characters; the adjacent pair whose concatenation is the token with the highest score
//! (the leftmost among equals) is merged until no pair forms a token. What is left and is
//! not a token falls back to `<0xXX>` byte tokens.

use std::cmp::Ordering;
use std::collections::BinaryHeap;

use super::error::TokenizerError;
use super::vocab::Vocab;

struct Symbol {
    start: usize,
    len: usize,
    prev: Option<usize>,
    next: Option<usize>,
}

struct Candidate {
    score: f32,
    left: usize,
    right: usize,
    size: usize,
}

impl PartialEq for Candidate {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}
impl Eq for Candidate {}
impl PartialOrd for Candidate {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Candidate {
    /// Greater = popped first: the higher score, then the leftmost.
    fn cmp(&self, other: &Self) -> Ordering {
        self.score.total_cmp(&other.score).then(other.left.cmp(&self.left))
    }
}

/// Appends the tokens of `text` (spaces already escaped to `▁`).
pub(crate) fn encode(v: &Vocab, text: &str, out: &mut Vec<i32>) -> Result<(), TokenizerError> {
    let mut symbols: Vec<Symbol> = Vec::with_capacity(text.len());
    for (start, c) in text.char_indices() {
        let len = c.len_utf8();
        let i = symbols.len();
        symbols.push(Symbol { start, len, prev: i.checked_sub(1), next: (start + len < text.len()).then_some(i + 1) });
    }
    let candidate = |symbols: &[Symbol], left: usize, right: usize| {
        let (l, r) = (&symbols[left], &symbols[right]);
        let piece = &text[l.start..r.start + r.len];
        let id = v.lookup(piece)?;
        Some(Candidate { score: v.scores[id as usize], left, right, size: piece.len() })
    };
    let mut heap = BinaryHeap::new();
    for i in 1..symbols.len() {
        heap.extend(candidate(&symbols, i - 1, i));
    }
    while let Some(c) = heap.pop() {
        let (l, r) = (&symbols[c.left], &symbols[c.right]);
        if l.len == 0 || r.len == 0 || l.len + r.len != c.size {
            continue;
        }
        let next = r.next;
        symbols[c.left].len += symbols[c.right].len;
        symbols[c.right].len = 0;
        symbols[c.left].next = next;
        if let Some(n) = next {
            symbols[n].prev = Some(c.left);
        }
        if let Some(p) = symbols[c.left].prev {
            heap.extend(candidate(&symbols, p, c.left));
        }
        if let Some(n) = next {
            heap.extend(candidate(&symbols, c.left, n));
        }
    }

    let mut cur = (!symbols.is_empty()).then_some(0);
    while let Some(i) = cur {
        let s = &symbols[i];
        let piece = &text[s.start..s.start + s.len];
        match v.lookup(piece) {
            Some(id) => out.push(id),
            None => {
                // Every merged symbol is a token, so this is one character.
                for &b in piece.as_bytes() {
                    out.push(v.byte_tokens[b as usize].ok_or(TokenizerError::NoByteToken { byte: b })?);
                }
            }
        }
        cur = s.next;
    }
    Ok(())
}
