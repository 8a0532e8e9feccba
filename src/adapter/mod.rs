//! LoRA adapters in llama.cpp's GGUF-LoRA layout: validation against a base model, and a
//! writer (used by tests and the bench to make adapters with known weights).
//!
//! Layout (DESIGN.md): for a base weight with ggml shape `[in, out]`, `<name>.lora_a` has
//! shape `[in, r]` and `<name>.lora_b` `[r, out]`; ΔW = s·B·A with s = alpha/r from
//! `adapter.lora.alpha`. PEFT I/O, name maps and composition belong to the adapter issue.

mod gguf_lora;

pub use gguf_lora::{check_against_base, random_lora, write_gguf_lora, LoraPair, LoraSummary, LoraDtype, ALL_LINEAR};
