//! Chat rendering and tokenization on the llama.cpp backend: messages built from the input
//! (see `edgelora_fuzz::chat_messages`: fields split on U+0001, role/content pairs, at
//! most 8 messages; content may hold special-token text such as `<|im_start|>`) are
//! rendered with the default model's Jinja chat template (edgelora's renderer, as on both
//! backends) and tokenized by llama.cpp's tokenizer (`Runtime::tokenize`);
//! the tokens are detokenized again. An `Err` is fine (NUL byte, empty prompt); a panic
//! or an abort is not, and every token returned is inside the vocabulary.
#![no_main]

use std::sync::OnceLock;

use edgelora::engine::{Prompt, Runtime, RuntimeOptions};
use libfuzzer_sys::fuzz_target;

fn runtime() -> &'static Runtime {
    static RT: OnceLock<Runtime> = OnceLock::new();
    RT.get_or_init(|| {
        let path = edgelora_fuzz::default_model_path();
        let options = RuntimeOptions { threads: 1, n_ctx: 64, n_batch: 64, ..Default::default() };
        Runtime::load(&path, options).unwrap_or_else(|e| panic!("fuzz setup: cannot load {} ({e})", path.display()))
    })
}

fuzz_target!(
    init: {
        runtime();
    },
    |data: &[u8]| {
        let rt = runtime();
        let messages = edgelora_fuzz::chat_messages(data);
        let _ = rt.render_chat_with(&messages, false);
        if let Ok(tokens) = rt.tokenize(&Prompt::Chat(messages)) {
            assert!(!tokens.is_empty());
            assert!(tokens.iter().all(|&t| t >= 0 && (t as usize) < rt.n_vocab()));
            std::hint::black_box(rt.detokenize(&tokens));
        }
    }
);
