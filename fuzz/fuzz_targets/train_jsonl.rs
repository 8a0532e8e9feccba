//! Training records: each line of the input (lossy UTF-8; blank lines skipped, as
//! `read_jsonl` does) through `parse_record`; an `Ok` record's `eval_pair` too. An `Ok`
//! or an `Err`, never a panic.
#![no_main]

use std::path::Path;

use edgelora::engine::Prompt;
use edgelora::train::data::{parse_record, Record};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let path = Path::new("fuzz.jsonl");
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let Ok(record) = parse_record(line, path, i + 1) else { continue };
        match (&record, record.eval_pair()) {
            (Record::Text(_), pair) => assert!(pair.is_none()),
            (Record::Messages(m), Some((Prompt::Chat(prefix), answer))) => {
                assert!(prefix.len() < m.len());
                assert_eq!(m[prefix.len()].role, "assistant");
                assert_eq!(m[prefix.len()].content, answer);
            }
            (Record::Messages(_), other) => panic!("a messages record (with an assistant turn) gave {other:?}"),
            (_, pair) => assert!(pair.is_some()),
        }
    }
});
