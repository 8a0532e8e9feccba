//! Special tokens written in the text (`<|im_start|>`, user-defined tokens): the text is
//! cut into raw fragments and special tokens before the tokenizer proper sees it.
//!
//! llama.cpp's `tokenizer_st_partition` takes the special tokens longest first and, for
//! each, splits every remaining raw fragment at the token's leftmost non-overlapping
//! occurrences (dropping whitespace next to a token with `LSTRIP`/`RSTRIP`). Control and
//! unknown tokens take part only with `parse_special`; user-defined ones always do.
//!
//! The same order is kept here, but one Aho-Corasick pass first finds which special
//! tokens occur at all and where their first and last occurrences lie, so that only
//! those tokens, over only that span, are searched: the cost is the text's length plus,
//! per token that occurs, the span it occurs in.

use std::ops::Range;

use super::vocab::{TokenAttr, Vocab};

/// A piece of the text: raw bytes to tokenize, or a special token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Fragment {
    Text(Range<usize>),
    Token(i32),
}

/// C's `isspace` in the "C" locale.
fn c_space(b: u8) -> bool {
    matches!(b, b' ' | b'\t' | b'\n' | 0x0B | 0x0C | b'\r')
}

pub(crate) fn partition(v: &Vocab, text: &str, parse_special: bool) -> Vec<Fragment> {
    if text.is_empty() {
        return Vec::new();
    }
    let mut frags = vec![Fragment::Text(0..text.len())];
    let Some(finder) = &v.special_finder else {
        return frags;
    };
    let skipped = TokenAttr::CONTROL | TokenAttr::UNKNOWN;
    // For each special token (by its index in `special_order`): first start, last end.
    let mut spans: Vec<Option<(usize, usize)>> = vec![None; v.special_order.len()];
    let mut any = false;
    for m in finder.find_overlapping_iter(text) {
        let k = m.pattern().as_usize();
        let span = &mut spans[k];
        *span = Some(match *span {
            None => (m.start(), m.end()),
            Some((s, e)) => (s.min(m.start()), e.max(m.end())),
        });
        any = true;
    }
    if !any {
        return frags;
    }
    let bytes = text.as_bytes();
    for (k, span) in spans.iter().enumerate() {
        let Some((lo, hi)) = *span else { continue };
        let id = v.special_order[k];
        let attr = v.attr(id);
        if !parse_special && attr.intersects(skipped) {
            continue;
        }
        let pattern = &*v.texts[id as usize];
        let (lstrip, rstrip) = (attr.intersects(TokenAttr::LSTRIP), attr.intersects(TokenAttr::RSTRIP));
        let mut next = Vec::with_capacity(frags.len() + 2);
        for frag in frags {
            let r = match frag {
                Fragment::Text(r) if r.start < hi && r.end > lo => r,
                other => {
                    next.push(other);
                    continue;
                }
            };
            let mut cur = r.start;
            let mut from = r.start.max(lo);
            while from < r.end {
                let Some(found) = text[from..r.end].find(pattern) else { break };
                let at = from + found;
                let mut left_end = at;
                if lstrip {
                    while left_end > cur && c_space(bytes[left_end - 1]) {
                        left_end -= 1;
                    }
                }
                if left_end > cur {
                    next.push(Fragment::Text(cur..left_end));
                }
                next.push(Fragment::Token(id));
                let mut right = at + pattern.len();
                if rstrip {
                    while right < r.end && c_space(bytes[right]) {
                        right += 1;
                    }
                }
                cur = right;
                from = right;
            }
            if cur < r.end {
                next.push(Fragment::Text(cur..r.end));
            }
        }
        frags = next;
    }
    frags
}
