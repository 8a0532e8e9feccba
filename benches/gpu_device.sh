#!/usr/bin/env bash
# The wgpu path on whatever GPU this machine has, in one run (for a machine with a real
# GPU; on lavapipe the figures only show that the path works): the adapter wgpu picks,
# native-engine prompt/decode speed on the GPU and on the CPU (1 thread and all cores),
# with and without a rank-16 all-linear adapter, and merge time on GPU vs CPU.
# Expects a release build (cargo build --release) and models/fetch.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/edgelora-target}"
export XDG_RUNTIME_DIR="${XDG_RUNTIME_DIR:-$(mktemp -d)}"
E="$CARGO_TARGET_DIR/release/edgelora"
P="${PROMPT_TOKENS:-128}"; N="${GEN_TOKENS:-32}"
echo "== native engine, GPU (whole forward on wgpu)"
"$E" bench --backend native --device gpu -p "$P" -n "$N" --reps 3
echo "== native engine, CPU, all cores"
"$E" bench --backend native -p "$P" -n "$N" --reps 3
echo "== llama.cpp backend, CPU, all cores"
"$E" bench --backend llama -p "$P" -n "$N" --reps 3
echo "== merge (rank-16 all-linear), GPU then CPU"
"$E" bench merge --device gpu --quantizer ggml --reps 3
"$E" bench merge --device cpu --quantizer ggml --reps 3
