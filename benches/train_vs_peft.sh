#!/usr/bin/env bash
# Side by side: `edgelora train` vs PyTorch + PEFT (fp32, the same model dequantized by
# transformers from the GGUF) on the credit data: same examples, batch, length cap, steps,
# threads, rank/alpha/targets, optimizer and schedule. Reports training tokens/s
# (non-padding tokens through forward + backward per second, first step excluded) and peak
# RSS of each, then the ratios. Runs the two alternately, REPS times each.
#
#   benches/train_vs_peft.sh [STEPS] [REPS]    (env: PYTHON with torch+transformers+peft+gguf,
#                                              THREADS, BATCH, TARGETS, EXTRA for edgelora flags)
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/edgelora-target}"
E="$CARGO_TARGET_DIR/release/edgelora"
M=models/SmolLM2-135M-Instruct.Q4_1.gguf
PY="${PYTHON:-python3}"
STEPS="${1:-20}"; REPS="${2:-1}"; THREADS="${THREADS:-2}"; BATCH="${BATCH:-8}"; TARGETS="${TARGETS:-q_proj,v_proj}"
if ! "$PY" -c "import torch, transformers, peft, gguf" 2>/dev/null; then
  echo "skipped: $PY lacks torch/transformers/peft/gguf (set PYTHON to an interpreter that has them)"; exit 0
fi
work=$(mktemp -d); trap 'rm -rf "$work"' EXIT
cargo run --release -q --example credit_data -- "$work" 2000 10 10 7 2>/dev/null
for rep in $(seq "$REPS"); do
  /usr/bin/time -f "%M" -o "$work/e.rss" "$E" train --model "$M" --data "$work/train.jsonl" --out "$work/a.gguf" \
    --steps "$STEPS" --batch "$BATCH" -t "$THREADS" --targets "$TARGETS" --save-every 0 ${EXTRA:-} >/dev/null 2>&1
  e_tps=$(tail -n +2 "$work/a.gguf.metrics.jsonl" | "$PY" -c "import sys,json; r=[json.loads(l) for l in sys.stdin if '\"loss\"' in l]; print(sum(x['tokens'] for x in r)/sum(x['secs'] for x in r))")
  e_tok=$("$PY" -c "import json; r=[json.loads(l) for l in open('$work/a.gguf.metrics.jsonl') if '\"loss\"' in l]; print(sum(x['tokens'] for x in r)/len(r))")
  e_rss=$(( $(cat "$work/e.rss") / 1024 ))
  p=$("$PY" benches/peft_train.py --gguf "$M" --data "$work/train.jsonl" --steps "$STEPS" --batch "$BATCH" --threads "$THREADS" --targets "$TARGETS" 2>/dev/null | tail -1)
  p_tps=$(echo "$p" | "$PY" -c "import sys,json; print(json.load(sys.stdin)['tokens_per_s'])")
  p_tok=$(echo "$p" | "$PY" -c "import sys,json; print(json.load(sys.stdin)['mean_tokens_per_step'])")
  p_rss=$(echo "$p" | "$PY" -c "import sys,json; print(int(json.load(sys.stdin)['peak_rss_mib']))")
  printf 'rep %s  edgelora: %.1f tok/s, %s MiB peak (%.0f tokens/step)   peft: %.1f tok/s, %s MiB peak (%.0f tokens/step)   speed %.2fx  memory %.2fx\n' \
    "$rep" "$e_tps" "$e_rss" "$e_tok" "$p_tps" "$p_rss" "$p_tok" "$(echo "$e_tps / $p_tps" | bc -l)" "$(echo "$e_rss / $p_rss" | bc -l)"
done
