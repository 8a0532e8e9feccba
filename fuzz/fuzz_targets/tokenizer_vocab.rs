//! Tokenizer vocabularies: a GGUF image from the input (see
//! `edgelora_fuzz::split_vocab`: a flags byte, a text, then the image) → `GgufFile` →
//! `Tokenizer::from_gguf`; an accepted vocabulary encodes the input's text (flags pick
//! `add_special`/`parse_special`), decodes and detokenizes the tokens, answers every
//! getter, and renders its chat template (Jinja, as both engines render it) with the text
//! as a message. An `Err` is fine anywhere; a panic is
//! not, every token encode returns is inside the vocabulary, and ids outside it have no
//! text.
#![no_main]

use edgelora::gguf::GgufFile;
use edgelora::tokenizer::Tokenizer;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let (flags, text, image) = edgelora_fuzz::split_vocab(data);
    let bit = |i: u8| flags & (1 << i) != 0;
    let Ok(f) = GgufFile::from_bytes("fuzz-vocab.gguf", image.to_vec()) else { return };
    let Ok(tok) = Tokenizer::from_gguf(&f) else { return };
    let n = tok.n_vocab();
    assert!(n > 0, "an accepted vocabulary has tokens");
    let in_vocab = |t: i32| t >= 0 && (t as usize) < n;
    let text = String::from_utf8_lossy(text);
    if let Ok(ids) = tok.encode(&text, bit(0), bit(1)) {
        assert!(ids.iter().all(|&t| in_vocab(t)), "encode returned a token outside 0..{n}: {ids:?}");
        std::hint::black_box(tok.decode(&ids));
        std::hint::black_box(tok.detokenize(&ids, bit(2), bit(3)));
        for &t in &ids {
            std::hint::black_box((tok.token_bytes(t, bit(3)), tok.piece(t), tok.is_eog(t), tok.token_attr(t), tok.token_text(t), tok.token_score(t)));
        }
    }
    let mut outside = vec![-1, i32::MIN, i32::MAX];
    outside.extend(i32::try_from(n).ok());
    for &t in &outside {
        assert!(tok.token_bytes(t, true).is_empty() && tok.token_text(t).is_none() && !tok.is_eog(t), "id {t} outside the vocabulary has text");
    }
    assert_eq!(tok.decode(&outside), "");
    std::hint::black_box(tok.detokenize(&outside, bit(2), bit(3)));
    for id in [tok.bos(), tok.eos(), tok.eot(), tok.unk(), tok.pad(), tok.linefeed()].into_iter().flatten().chain(tok.eog_tokens()) {
        assert!(in_vocab(id), "special token {id} outside 0..{n}");
    }
    std::hint::black_box((tok.kind(), tok.model(), tok.pre(), tok.add_bos(), tok.add_eos(), tok.token_id(&text)));
    if let Some(template) = tok.chat_template() {
        let pairs = [("system", "Be brief."), ("user", text.as_ref())];
        let _ = tok.apply_chat_template(&pairs, bit(4));
        let _ = tok.apply_chat_template(&pairs[1..], !bit(4));
        std::hint::black_box(template);
    }
});
