#!/usr/bin/env bash
# Merge quality over every position: each fixture adapter (tests/fixtures/seed_r16_qv,
# rslora_r8_all) merged into the default Q4_1 model with the gptq and refit quantizers,
# then the mean KL of the merged model's next-token distributions to the adapter on the fly
# over every position of (a) benches/data/heldout_tokens.txt (667 tokens in 15 sequences of
# chat turns and text paragraphs, none of them calibration or fixture text) and (b) the
# three fixture prompts (tests/fixtures/reference.json, 101 positions) — steadier than
# benches/merge_kl.sh's three last positions. Native f32 engine on the CPU both sides.
# Needs python3 (standard library only).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/edgelora-target}"
cargo build --release --quiet --bin edgelora --example kl_positions
E="$CARGO_TARGET_DIR/release/edgelora"
K="$CARGO_TARGET_DIR/release/examples/kl_positions"
M=models/SmolLM2-135M-Instruct.Q4_1.gguf
work=$(mktemp -d); trap 'rm -rf "$work"' EXIT
python3 -c 'import json; [print(",".join(map(str, p["input_ids"]))) for p in json.load(open("tests/fixtures/reference.json"))["prompts"]]' > "$work/fixture_tokens.txt"
for a in seed_r16_qv rslora_r8_all; do
  for q in gptq refit; do
    "$E" merge -m "$M" -a "tests/fixtures/$a" --out "$work/$a-$q.gguf" --quantizer "$q" 2>/dev/null
  done
  for t in benches/data/heldout_tokens.txt "$work/fixture_tokens.txt"; do
    echo "# $a, $(basename "$t")"
    "$K" "$M" "tests/fixtures/$a" "$t" "$work/$a-gptq.gguf" "$work/$a-refit.gguf" | sed "s|$work/||"
  done
done
