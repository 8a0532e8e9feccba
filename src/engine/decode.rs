//! The decoding both backends and the batcher share: sample, detokenize, stream, stop.
//! [`Decoder`] takes one step per call (the batcher interleaves many sequences);
//! [`decode_loop`] drives one sequence to the end.

use super::request::{CancelFlag, GenerateRequest, Generation, StopReason};
use super::sampler::Sampler;
use super::text::TextStream;
use crate::error::Result;

/// What decoding needs from a backend.
pub(super) struct Vocab<'a> {
    pub is_eog: &'a dyn Fn(i32) -> bool,
    /// The bytes of a generated token.
    pub piece: &'a dyn Fn(i32) -> Vec<u8>,
}

/// One sequence's decoding state: its stop strings' text stream.
pub(super) struct Decoder {
    stream: TextStream,
}

impl Decoder {
    pub fn new(req: &GenerateRequest) -> Decoder {
        Decoder { stream: TextStream::new(&req.stop) }
    }

    /// Samples the next token from `logits` (the last fed position). Returns the token to
    /// feed next, or `None` when generation stopped (`gen.stop_reason` says why; call
    /// [`finish`](Self::finish)). `on_text` gets the text piece by piece (false cancels).
    pub fn next(&mut self, req: &GenerateRequest, sampler: &mut Sampler, logits: &[f32], gen: &mut Generation, vocab: &Vocab, on_text: &mut dyn FnMut(&str) -> bool) -> Option<i32> {
        let stop = |gen: &mut Generation, r| {
            gen.stop_reason = r;
            None
        };
        if gen.tokens.len() >= req.max_tokens {
            return stop(gen, StopReason::MaxTokens);
        }
        if req.cancel.as_ref().is_some_and(CancelFlag::is_cancelled) {
            return stop(gen, StopReason::Cancelled);
        }
        let token = crate::model::profile::time(|| "sampling".into(), || sampler.sample(logits));
        if !req.ignore_eog && (vocab.is_eog)(token) {
            return stop(gen, StopReason::EndOfGeneration);
        }
        gen.tokens.push(token);
        let pushed = crate::model::profile::time(|| "detokenize".into(), || self.stream.push(&(vocab.piece)(token)));
        if !pushed.text.is_empty() && !on_text(&pushed.text) {
            return stop(gen, StopReason::Cancelled);
        }
        if pushed.stopped {
            return stop(gen, StopReason::StopString);
        }
        if gen.tokens.len() >= req.max_tokens {
            return stop(gen, StopReason::MaxTokens);
        }
        Some(token)
    }

    /// Flushes the text held back for stop strings (unless one matched) and fills `gen.text`.
    pub fn finish(mut self, gen: &mut Generation, on_text: &mut dyn FnMut(&str) -> bool) {
        if gen.stop_reason != StopReason::StopString {
            let rest = self.stream.finish();
            if !rest.is_empty() {
                on_text(&rest);
            }
        }
        gen.text = self.stream.emitted_text().to_string();
    }
}

/// Samples from `logits` (the prompt's last position) until a stop condition, feeding
/// each kept token to `step`, which returns the next logits or `None` when the context
/// is full. Fills `gen`'s tokens, text and stop reason; `on_text` gets the final text
/// piece by piece (false cancels).
pub(super) fn decode_loop(
    req: &GenerateRequest,
    sampler: &mut Sampler,
    mut logits: Vec<f32>,
    gen: &mut Generation,
    vocab: Vocab,
    on_text: &mut dyn FnMut(&str) -> bool,
    step: &mut dyn FnMut(i32) -> Result<Option<Vec<f32>>>,
) -> Result<()> {
    let mut decoder = Decoder::new(req);
    while let Some(token) = decoder.next(req, sampler, &logits, gen, &vocab, on_text) {
        match step(token)? {
            Some(next) => logits = next,
            None => {
                gen.stop_reason = StopReason::ContextFull;
                break;
            }
        }
    }
    decoder.finish(gen, on_text);
    Ok(())
}
