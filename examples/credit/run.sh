#!/usr/bin/env bash
# The worked example: a synthetic credit-approval task (applicant fields → approve/reject
# by a fixed rule). Generates the data, scores the base model on the held-out test set,
# trains a LoRA adapter on the device (CPU, the base stays Q4_1), scores it again in the
# llama.cpp backend and the native engine, and prints wall time, tokens/s and peak RSS.
#
#   examples/credit/run.sh [OUT_DIR] [extra `edgelora train` flags…]
#   TRAIN_FLAGS replaces the default training settings (--epochs 2 --targets all-linear --lr 1e-3).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/edgelora-target}"
OUT="${1:-/tmp/edgelora-credit}"; shift || true
cargo build --release -q --bin edgelora --example credit_data
E="$CARGO_TARGET_DIR/release/edgelora"
M=models/SmolLM2-135M-Instruct.Q4_1.gguf
[[ -f "$M" ]] || models/fetch
mkdir -p "$OUT"
"$CARGO_TARGET_DIR/release/examples/credit_data" "$OUT" 2000 200 200 7
score() { "$E" eval --model "$M" --data "$OUT/test.jsonl" --metric first-word --max-tokens 4 "$@" | python3 -c "import sys,json; d=json.load(sys.stdin); print(f\"{d['correct']}/{d['n']} = {100*d['accuracy']:.1f}%\")"; }
echo "base model, held-out accuracy: $(score)"
/usr/bin/time -f "train: wall %e s, peak RSS %M KiB" "$E" train --model "$M" --data "$OUT/train.jsonl" --eval "$OUT/valid.jsonl" \
  --out "$OUT/credit.gguf" --peft-out "$OUT/credit-peft" ${TRAIN_FLAGS:---epochs 2 --targets all-linear --lr 1e-3} "$@" | tee "$OUT/train-summary.json"
echo "adapter, held-out accuracy (llama.cpp backend): $(score --adapter "$OUT/credit.gguf")"
echo "adapter, held-out accuracy (native engine):     $(score --adapter "$OUT/credit.gguf" --backend native)"
