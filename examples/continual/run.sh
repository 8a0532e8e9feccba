#!/usr/bin/env bash
# The seed document's loop after deployment, on the credit example: train v1 on the bank's
# policy; the policy changes (also reject a debt-to-income ratio ≥ 40%) and the new
# decisions come back as feedback; continue v1 into v2 on that feedback with a replayed
# share of the old records whose label did not change; then judge v1 and v2 on the new
# policy's held-out set and on the unchanged old-policy records (forgetting), compare them
# (paired bootstrap, McNemar) and draw the plots. See examples/continual/README.md.
#
#   examples/continual/run.sh [OUT_DIR]
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/edgelora-target}"
OUT="${1:-/tmp/edgelora-continual}"
cargo build --release -q --bin edgelora --example credit_data
E="$CARGO_TARGET_DIR/release/edgelora"
M=models/SmolLM2-135M-Instruct.Q4_1.gguf
[[ -f "$M" ]] || models/fetch
mkdir -p "$OUT"
G="$CARGO_TARGET_DIR/release/examples/credit_data"
"$G" "$OUT/old" 1000 100 200 7 40    # policy v1's data (and each record's v2 label)
"$G" "$OUT/new" 512 100 200 8 40     # applications decided under v2: the feedback

acc() { python3 -c "import sys,json; d=json.load(sys.stdin); print(f\"{d['correct']}/{d['n']} = {100*d['accuracy']:.1f}%  macro-F1 {d['macro_f1']:.3f}\")"; }
score() { "$E" eval --model "$M" --metric classification --labels approve,reject "$@" | acc; }
timed() { /usr/bin/time -f "$1: wall %e s, peak RSS %M KiB" "${@:2}"; }

echo "== round 1: v1 on the old policy (1000 records, 2 epochs, all-linear r16, lr 1e-3)"
timed "v1 training" "$E" train --model "$M" --data "$OUT/old/train.jsonl" --eval "$OUT/old/valid.jsonl" --out "$OUT/v1.gguf" \
  --epochs 2 --targets all-linear --lr 1e-3 --eval-every 50 --plot "$OUT/v1-loss.png" > "$OUT/v1-summary.json"

echo "== round 2: continue v1 into v2 on the feedback (512 new-policy records) + 30% replay of unchanged old records, lr 5e-4"
timed "v2 training (continuation)" "$E" train --model "$M" --data "$OUT/new/train.v2.jsonl" --eval "$OUT/new/valid.v2.jsonl" --out "$OUT/v2.gguf" \
  --init-adapter "$OUT/v1.gguf" --replay "$OUT/old/train.unchanged.jsonl:0.3" --epochs 3 --lr 5e-4 \
  --eval-every 25 --plot "$OUT/v2-loss.png" > "$OUT/v2-summary.json"

echo "== held-out results (classification, llama.cpp backend)"
for v in v1 v2; do
  echo "$v  new policy (test.v2, 200):            $(score --data "$OUT/new/test.v2.jsonl" --adapter "$OUT/$v.gguf")"
  echo "$v  old records, label unchanged:          $(score --data "$OUT/old/test.unchanged.jsonl" --adapter "$OUT/$v.gguf")"
  echo "$v  old policy (test, 200):                $(score --data "$OUT/old/test.jsonl" --adapter "$OUT/$v.gguf")"
done
"$E" eval --model "$M" --metric classification --labels approve,reject --data "$OUT/new/test.v2.jsonl" --adapter "$OUT/v2.gguf" --plot "$OUT/v2-roc.png" > "$OUT/v2-eval.json"

echo "== A/B on the new policy's held-out set: A = v1, B = v2"
"$E" eval --model "$M" --metric classification --labels approve,reject --data "$OUT/new/test.v2.jsonl" \
  --compare "$OUT/v1.gguf" "$OUT/v2.gguf" --plot "$OUT/ab-f1.png" > "$OUT/ab.json"
python3 - "$OUT/ab.json" <<'P'
import json, sys
d = json.load(open(sys.argv[1]))
acc = d["difference"]["accuracy"]
print(f"accuracy A {d['a']['accuracy']:.3f}  B {d['b']['accuracy']:.3f}  B-A {acc['b_minus_a']:+.3f}  95% CI [{acc['ci95'][0]:+.3f}, {acc['ci95'][1]:+.3f}]")
m = d["mcnemar"]
print(f"McNemar: A right only {m['a_only']}, B right only {m['b_only']}, exact p = {m['p_value']:.3g}")
P
echo "== lineage"
"$E" adapter history "$OUT/v2.gguf"
echo "plots: $OUT/v1-loss.png $OUT/v2-loss.png $OUT/v2-roc.png $OUT/ab-f1.png"
