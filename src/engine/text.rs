//! Incremental detokenization: token bytes in, UTF-8 text out, with stop strings.
//!
//! A token may end in the middle of a UTF-8 character, and generated text may end in the
//! first part of a stop string: both are held back until the next token decides them, so
//! the caller never sees half a character or any part of a stop string.

/// What one pushed token produced.
#[derive(Debug, Default, PartialEq)]
pub struct Pushed {
    /// Text that is final and can be shown now.
    pub text: String,
    /// A stop string matched: generation ends; `text` stops before it.
    pub stopped: bool,
}

#[derive(Debug, Default)]
pub struct TextStream {
    pending: Vec<u8>,
    text: String,
    emitted: usize,
    stops: Vec<String>,
}

impl TextStream {
    pub fn new(stops: &[String]) -> Self {
        TextStream { stops: stops.iter().filter(|s| !s.is_empty()).cloned().collect(), ..Default::default() }
    }

    /// All final text so far (what has been emitted).
    pub fn emitted_text(&self) -> &str {
        &self.text[..self.emitted]
    }

    pub fn push(&mut self, bytes: &[u8]) -> Pushed {
        self.pending.extend_from_slice(bytes);
        self.decode_pending(false);
        let search_from = floor_boundary(&self.text, self.emitted.saturating_sub(self.max_stop_len()));
        let hit = self
            .stops
            .iter()
            .filter_map(|s| self.text[search_from..].find(s.as_str()).map(|i| search_from + i))
            .min();
        if let Some(at) = hit {
            let at = at.max(self.emitted);
            self.text.truncate(at);
            self.pending.clear();
            return Pushed { text: self.take_upto(at), stopped: true };
        }
        let held = self.held_back();
        Pushed { text: self.take_upto(self.text.len() - held), stopped: false }
    }

    /// Ends the stream: whatever was held back (a possible stop prefix, or bytes of an
    /// incomplete character, shown as U+FFFD) is released.
    pub fn finish(&mut self) -> String {
        self.decode_pending(true);
        self.take_upto(self.text.len())
    }

    fn max_stop_len(&self) -> usize {
        self.stops.iter().map(String::len).max().unwrap_or(0)
    }

    fn take_upto(&mut self, end: usize) -> String {
        let s = self.text[self.emitted..end].to_string();
        self.emitted = end;
        s
    }

    /// Longest suffix of the unemitted text that is a proper prefix of a stop string.
    fn held_back(&self) -> usize {
        let tail = &self.text[self.emitted..];
        let mut held = 0;
        for s in &self.stops {
            for n in (1..s.len().min(tail.len() + 1)).rev() {
                if n <= held {
                    break;
                }
                if tail.is_char_boundary(tail.len() - n) && s.as_bytes().starts_with(&tail.as_bytes()[tail.len() - n..]) {
                    held = n;
                    break;
                }
            }
        }
        held
    }

    fn decode_pending(&mut self, flush: bool) {
        loop {
            match std::str::from_utf8(&self.pending) {
                Ok(s) => {
                    self.text.push_str(s);
                    self.pending.clear();
                    return;
                }
                Err(e) => {
                    let good = e.valid_up_to();
                    // SAFETY-free: the prefix up to valid_up_to is valid UTF-8.
                    self.text.push_str(std::str::from_utf8(&self.pending[..good]).expect("valid prefix"));
                    match e.error_len() {
                        Some(bad) => {
                            self.text.push('\u{FFFD}');
                            self.pending.drain(..good + bad);
                        }
                        None if flush => {
                            self.text.push('\u{FFFD}');
                            self.pending.clear();
                            return;
                        }
                        None => {
                            self.pending.drain(..good);
                            return;
                        }
                    }
                }
            }
        }
    }
}

fn floor_boundary(s: &str, mut i: usize) -> usize {
    while !s.is_char_boundary(i) {
        i -= 1;
    }
    i
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(stops: &[&str], pieces: &[&[u8]]) -> (Vec<String>, bool, String) {
        let stops: Vec<String> = stops.iter().map(|s| s.to_string()).collect();
        let mut t = TextStream::new(&stops);
        let mut out = Vec::new();
        let mut stopped = false;
        for p in pieces {
            let r = t.push(p);
            out.push(r.text);
            if r.stopped {
                stopped = true;
                break;
            }
        }
        let rest = if stopped { String::new() } else { t.finish() };
        (out, stopped, rest)
    }

    #[test]
    fn split_characters_are_held_until_complete() {
        let euro = "€".as_bytes();
        let (out, stopped, rest) = run(&[], &[b"a", &euro[..1], &euro[1..], b"b"]);
        assert_eq!(out, ["a", "", "€", "b"]);
        assert!(!stopped);
        assert_eq!(rest, "");
    }

    #[test]
    fn stop_string_across_tokens_is_never_shown() {
        let (out, stopped, _) = run(&["<end>"], &[b"hi <e", b"n", b"d> more"]);
        assert_eq!(out.concat(), "hi ");
        assert!(stopped);
    }

    #[test]
    fn a_false_start_of_a_stop_string_is_released() {
        let (out, stopped, rest) = run(&["<end>"], &[b"a <e", b"x"]);
        assert_eq!(out, ["a ", "<ex"]);
        assert!(!stopped);
        assert_eq!(rest, "");
    }

    #[test]
    fn finish_releases_held_prefix_and_broken_bytes() {
        let (out, _, rest) = run(&["STOP"], &[b"abc ST", &[0xE2, 0x82]]);
        assert_eq!(out.concat(), "abc ");
        assert_eq!(rest, "ST\u{FFFD}");
    }
}
