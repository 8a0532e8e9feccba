//! BPE merging of one pre-tokenized word: symbols start as single characters; the
//! adjacent pair with the lowest merge rank (the leftmost among equals) is merged until
//! no pair has a merge. A min-heap of candidate pairs makes it O(n log n) in the word's
//! length; stale candidates are recognised by their sides' lengths.

use std::cmp::Reverse;
use std::collections::BinaryHeap;

use super::vocab::Vocab;

struct Symbol {
    start: usize,
    len: usize,
    id: Option<i32>,
    prev: Option<usize>,
    next: Option<usize>,
}

/// Appends the tokens of `word` (already byte-encoded when the vocabulary is byte-level).
pub(crate) fn encode_word(v: &Vocab, word: &str, out: &mut Vec<i32>) {
    if word.is_empty() {
        return;
    }
    let whole = || v.lookup(word);
    if v.ignore_merges || (v.newline_words && word.bytes().all(|b| b == b'\n')) {
        if let Some(id) = whole() {
            out.push(id);
            return;
        }
    }

    let mut symbols: Vec<Symbol> = Vec::with_capacity(word.len());
    for (start, c) in word.char_indices() {
        let len = c.len_utf8();
        let i = symbols.len();
        symbols.push(Symbol {
            start,
            len,
            id: v.lookup(&word[start..start + len]),
            prev: i.checked_sub(1),
            next: (start + len < word.len()).then_some(i + 1),
        });
    }

    // (rank, left, right, left len, right len): the heap pops the lowest rank, then the
    // leftmost pair.
    let mut heap: BinaryHeap<Reverse<(u32, usize, usize, usize, usize)>> = BinaryHeap::new();
    let candidate = |symbols: &[Symbol], left: usize, right: usize| {
        let (l, r) = (&symbols[left], &symbols[right]);
        let m = v.merges.get(&(l.id?, r.id?))?;
        Some(Reverse((m.rank, left, right, l.len, r.len)))
    };
    for i in 1..symbols.len() {
        heap.extend(candidate(&symbols, i - 1, i));
    }
    while let Some(Reverse((_, left, right, left_len, right_len))) = heap.pop() {
        if symbols[left].len != left_len || symbols[right].len != right_len || left_len == 0 || right_len == 0 {
            continue;
        }
        let (l_id, r_id) = match (symbols[left].id, symbols[right].id) {
            (Some(a), Some(b)) => (a, b),
            _ => continue,
        };
        let result = v.merges.get(&(l_id, r_id)).and_then(|m| m.result);
        let next = symbols[right].next;
        symbols[left].len += right_len;
        symbols[left].id = result;
        symbols[left].next = next;
        symbols[right].len = 0;
        if let Some(n) = next {
            symbols[n].prev = Some(left);
        }
        if let Some(p) = symbols[left].prev {
            heap.extend(candidate(&symbols, p, left));
        }
        if let Some(n) = next {
            heap.extend(candidate(&symbols, left, n));
        }
    }

    let mut cur = Some(0);
    while let Some(i) = cur {
        let s = &symbols[i];
        match s.id {
            Some(id) => out.push(id),
            None => {
                // Not a token: llama.cpp falls back to one token per byte, skipping bytes
                // that have none.
                for &b in &word.as_bytes()[s.start..s.start + s.len] {
                    let t = if v.byte_encode {
                        (b < 0x80).then(|| v.lookup(&(b as char).to_string())).flatten()
                    } else {
                        v.byte_tokens[b as usize]
                    };
                    out.extend(t);
                }
            }
        }
        cur = s.next;
    }
}
