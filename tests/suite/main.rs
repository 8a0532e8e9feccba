//! The integration test suite (one binary). Tests that need the default model fail with
//! a message saying how to fetch it; none of them skips.

mod common;

mod adapters;
mod arch;
mod auto;
mod batch;
mod cli;
mod compute;
mod continual;
mod data_report;
mod engine;
mod eval;
mod faults;
mod ffi;
mod gguf_malformed;
mod gradcheck;
mod gguf_roundtrip;
mod merge;
mod model_checks;
mod train;
mod train_job;
mod native;
mod native_vocab;
mod plots;
mod quant;
mod serve;
mod tokenizer;
