#!/usr/bin/env bash
# Training memory: the TrainJob's estimate before step 1 vs the measured peak RSS
# (VmHWM) of a fresh process per configuration (examples/train_memory.rs).
#
#   benches/train_memory.sh [MODEL] [THREADS]
#
# Prints one row per configuration: rank, targets, batch, tokens per example,
# checkpointing, estimate MiB, peak RSS MiB, estimate/measured.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
model="${1:-models/SmolLM2-135M-Instruct.Q4_1.gguf}"
threads="${2:-1}"
cargo build --release --example train_memory >&2
bin="${CARGO_TARGET_DIR:-target}/release/examples/train_memory"
printf '%-5s %-15s %-5s %-6s %-5s %9s %9s %6s\n' rank targets batch tokens ckpt est_MiB rss_MiB ratio
for cfg in "16 q_proj,v_proj 8 128 0" "16 all-linear 8 256 0" "16 all-linear 4 64 0" "8 all-linear 4 512 1" "16 all-linear 8 256 1"; do
  "$bin" "$model" $cfg 2 "$threads" 2>/dev/null | python3 -c '
import json, sys
d = json.loads(sys.stdin.read())
print("%-5d %-15s %-5d %-6d %-5s %9.0f %9.0f %6.3f" % (d["rank"], d["targets"], d["batch"], d["tokens"], d["checkpoint"], d["estimate_mb"], d["peak_rss_mb"], d["ratio"]))'
done
