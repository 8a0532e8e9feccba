//! The integration test suite (one binary). Tests that need the default model fail with
//! a message saying how to fetch it; none of them skips.
//!
//! Built without the `llama` feature (`--no-default-features --features native,…`), the
//! suite leaves out what compares against or runs on llama.cpp (modules and tests marked
//! `#[cfg(feature = "llama")]`) and runs the rest on the native engine.
#![cfg_attr(not(feature = "llama"), allow(dead_code, unused_imports, unused_macros))]

mod common;

#[cfg(feature = "llama")]
mod adapters;
mod arch;
mod auto;
mod batch;
mod cli;
mod compute;
mod continual;
mod data_report;
#[cfg(feature = "llama")]
mod engine;
mod eval;
mod faults;
mod ffi;
mod gguf_malformed;
mod gradcheck;
mod gguf_roundtrip;
#[cfg(feature = "llama")]
mod merge;
mod model_checks;
mod train;
mod train_job;
mod native;
#[cfg(feature = "llama")]
mod native_vocab;
mod plots;
mod precision;
mod quant;
#[cfg(feature = "llama")]
mod quant_ref;
mod serve;
mod tokenizer;
