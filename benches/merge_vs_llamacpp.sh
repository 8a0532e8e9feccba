#!/usr/bin/env bash
# Side by side: edgelora merge vs llama.cpp's route (llama-export-lora to F16, then
# llama-quantize back to Q4_1) for a rank-16 all-linear adapter on the default model,
# and the KL of each merged model to the adapter applied on the fly.
# llama.cpp's tools come from benches/llamacpp_tools.sh.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/edgelora-target}"
E="$CARGO_TARGET_DIR/release/edgelora"
M=models/SmolLM2-135M-Instruct.Q4_1.gguf
source benches/llamacpp_tools.sh
work=$(mktemp -d); trap 'rm -rf "$work"' EXIT
"$E" adapter synth --model "$M" --out "$work/r16.gguf" --rank 16 --dtype f16 2>/dev/null
now() { date +%s.%N; }
for i in 1 2 3; do
  s=$(now); "$T/llama-export-lora" -m "$M" --lora "$work/r16.gguf" -o "$work/lc-f16.gguf" -t "$(nproc)" >/dev/null 2>&1
  "$T/llama-quantize" --allow-requantize "$work/lc-f16.gguf" "$work/lc-q41.gguf" Q4_1 "$(nproc)" >/dev/null 2>&1; e=$(now)
  echo "llama.cpp route (export-lora + quantize): $(echo "$e - $s" | bc) s"
  for q in ggml refit; do
    s=$(now); "$E" merge -m "$M" -a "$work/r16.gguf" --out "$work/e-$q.gguf" --quantizer "$q" 2>/dev/null; e=$(now)
    echo "edgelora merge ($q quantizer): $(echo "$e - $s" | bc) s"
  done
done
