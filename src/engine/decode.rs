//! The decoding loop both backends share: sample, detokenize, stream, stop.

use super::runtime::{CancelFlag, GenerateRequest, Generation, StopReason};
use super::sampler::Sampler;
use super::text::TextStream;
use crate::error::Result;

/// What the loop needs from a backend.
pub(super) struct Vocab<'a> {
    pub is_eog: &'a dyn Fn(i32) -> bool,
    /// The bytes of a generated token.
    pub piece: &'a dyn Fn(i32) -> Vec<u8>,
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
    let cancelled = || req.cancel.as_ref().is_some_and(CancelFlag::is_cancelled);
    let mut stream = TextStream::new(&req.stop);
    gen.stop_reason = loop {
        if gen.tokens.len() >= req.max_tokens {
            break StopReason::MaxTokens;
        }
        if cancelled() {
            break StopReason::Cancelled;
        }
        let token = sampler.sample(&logits);
        if !req.ignore_eog && (vocab.is_eog)(token) {
            break StopReason::EndOfGeneration;
        }
        gen.tokens.push(token);
        let pushed = stream.push(&(vocab.piece)(token));
        if !pushed.text.is_empty() && !on_text(&pushed.text) {
            break StopReason::Cancelled;
        }
        if pushed.stopped {
            break StopReason::StopString;
        }
        if gen.tokens.len() >= req.max_tokens {
            break StopReason::MaxTokens;
        }
        match step(token)? {
            Some(next) => logits = next,
            None => break StopReason::ContextFull,
        }
    };
    if gen.stop_reason != StopReason::StopString {
        let rest = stream.finish();
        if !rest.is_empty() {
            on_text(&rest);
        }
    }
    gen.text = stream.emitted_text().to_string();
    Ok(())
}
