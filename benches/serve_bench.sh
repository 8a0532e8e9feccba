#!/usr/bin/env bash
# Serving throughput of `edgelora serve`: N concurrent streams (1, 4, 8), each on its own
# synthetic rank-16 all-linear adapter, streaming completions over HTTP on 127.0.0.1;
# aggregate and per-stream decode tokens/s, time to first token p50/p99.
#
#   benches/serve_bench.sh [THREADS] [BACKEND] [MAX_TOKENS] [REQUESTS_PER_STREAM]
#
# Requests run one at a time on the engine today (no mixed-adapter batching yet), so
# aggregate throughput stays near one stream's while TTFT grows with the streams.
# Not measured here: the same load against llama.cpp's llama-server.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
threads="${1:-2}"; backend="${2:-llama}"; max_tokens="${3:-32}"; per="${4:-2}"
cargo build --release --bin edgelora >&2
bin="${CARGO_TARGET_DIR:-target}/release/edgelora"
dir="$(mktemp -d)"; trap 'kill "${pid:-0}" 2>/dev/null || true; rm -rf "$dir"' EXIT
args=()
names=()
for i in 0 1 2 3 4 5 6 7; do
  "$bin" adapter synth --rank 16 --targets all-linear --seed "$i" --out "$dir/a$i.gguf" >/dev/null 2>&1
  args+=(--adapter "a$i=$dir/a$i.gguf"); names+=("a$i")
done
"$bin" serve --port 0 -t "$threads" --backend "$backend" --max-queue 64 "${args[@]}" 2>"$dir/serve.log" &
pid=$!
for _ in $(seq 1 600); do grep -q "listening on" "$dir/serve.log" && break; sleep 0.1; done
url="$(grep -o 'http://[0-9.:]*' "$dir/serve.log" | head -1)"
[[ -n "$url" ]] || { cat "$dir/serve.log" >&2; exit 1; }
echo "edgelora serve ($backend, $threads threads), $max_tokens tokens per request, $per requests per stream"
printf '%-8s %10s %14s %10s %10s\n' streams agg_tok/s stream_tok/s ttft_p50 ttft_p99
for n in 1 4 8; do
  python3 benches/serve_load.py "$url" "$(IFS=,; echo "${names[*]}")" "$n" "$per" "$max_tokens" | python3 -c '
import json, sys
d = json.loads(sys.stdin.read())
print("%-8d %10.1f %14.1f %9.2fs %9.2fs" % (d["streams"], d["aggregate_tok_s"], d["per_stream_decode_tok_s_median"], d["ttft_p50_s"], d["ttft_p99_s"]))'
done
