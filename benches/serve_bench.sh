#!/usr/bin/env bash
# Serving throughput: N concurrent streams (1, 4, 8, 16), each on its own synthetic rank-16
# all-linear adapter, streaming completions over HTTP on 127.0.0.1; aggregate and
# per-stream decode tokens/s, time to first token p50/p99. Side by side in one run:
#   edgelora serve --backend native  (continuous batching, a different adapter per row)
#   edgelora serve --backend llama   (llama.cpp, one request at a time)
#   and, when named in SERVERS:
#   native-int8                      (--backend native --lora-int8: int8 factor copies)
#   native-gpu                       (--backend native --device gpu: batched on wgpu)
#   llama-server                     (llama.cpp's server, same commit as the crate, built
#                                     by benches/llamacpp_tools.sh; --lora per adapter,
#                                     -np 16 slots; requests with different adapters are
#                                     not batched together there)
#
#   benches/serve_bench.sh [THREADS] [MAX_TOKENS] [REQUESTS_PER_STREAM] [SERVERS]
#   (defaults: 2 32 2 "native llama llama-server")
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
threads="${1:-2}"; max_tokens="${2:-32}"; per="${3:-2}"; servers="${4:-native llama llama-server}"
cargo build --release --bin edgelora >&2
bin="${CARGO_TARGET_DIR:-target}/release/edgelora"
model=models/SmolLM2-135M-Instruct.Q4_1.gguf
dir="$(mktemp -d)"; pid=""
# (never `kill 0`: that would signal this script's whole process group)
trap '[[ -n "$pid" ]] && kill "$pid" 2>/dev/null; rm -rf "$dir"' EXIT
args=(); lora=(); names=()
for i in $(seq 0 15); do
  "$bin" adapter synth --rank 16 --targets all-linear --seed "$i" --out "$dir/a$i.gguf" >/dev/null 2>&1
  args+=(--adapter "a$i=$dir/a$i.gguf"); lora+=(--lora "$dir/a$i.gguf"); names+=("a$i")
done
if [[ " $servers " == *" llama-server "* ]]; then
  LLAMA_TOOLS_SERVER=1 source benches/llamacpp_tools.sh
fi
wait_url() {
  for _ in $(seq 1 1200); do
    url="$(grep -o 'http://[0-9.]*:[0-9]*' "$1" | head -1 || true)"
    [[ -n "$url" ]] && return 0
    sleep 0.1
  done
  cat "$1" >&2; exit 1
}
echo "serve bench: $model, $threads thread(s), $max_tokens tokens per request, $per requests per stream, a rank-16 all-linear adapter per stream"
printf '%-44s %8s %10s %14s %10s %10s\n' server streams agg_tok/s stream_tok/s ttft_p50 ttft_p99
declare -A agg
for s in $servers; do
  : > "$dir/serve.log"
  case "$s" in
    native|llama|native-int8|native-gpu)
      extra=(); backend="$s"
      case "$s" in
        native-int8) backend=native; extra=(--lora-int8) ;;
        native-gpu) backend=native; extra=(--device gpu) ;;
      esac
      "$bin" serve --port 0 -t "$threads" --backend "$backend" "${extra[@]}" --max-queue 64 --max-batch 16 --model "$model" "${args[@]}" 2>"$dir/serve.log" & pid=$!
      label="edgelora serve --backend $backend ${extra[*]}"; mode=edgelora ;;
    llama-server)
      port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
      "$T/llama-server" --host 127.0.0.1 --port "$port" -m "$model" -t "$threads" -np 16 -c 8192 "${lora[@]}" --lora-init-without-apply >"$dir/serve.log" 2>&1 & pid=$!
      for _ in $(seq 1 600); do grep -q "server is listening" "$dir/serve.log" && break; sleep 0.1; done
      echo "listening on http://127.0.0.1:$port" >> "$dir/serve.log"
      label="llama-server (-np 16)"; mode=llama-server ;;
  esac
  wait_url "$dir/serve.log"
  for n in 1 4 8 16; do
    line="$(python3 benches/serve_load.py "$url" "$(IFS=,; echo "${names[*]}")" "$n" "$per" "$max_tokens" "$mode")"
    python3 -c '
import json, sys
d = json.loads(sys.argv[2])
print("%-44s %8d %10.1f %14.1f %9.2fs %9.2fs" % (sys.argv[1], d["streams"], d["aggregate_tok_s"], d["per_stream_decode_tok_s_median"], d["ttft_p50_s"], d["ttft_p99_s"]))' "$label" "$line"
    agg["$s/$n"]="$(python3 -c 'import json,sys; print(json.loads(sys.argv[1])["aggregate_tok_s"])' "$line")"
  done
  kill "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true; pid=
done
ratio() { python3 -c 'import sys; print("%.2f" % (float(sys.argv[1]) / float(sys.argv[2])))' "$1" "$2"; }
if [[ -n "${agg[native/8]:-}" ]]; then
  echo "native, 8 streams vs 1 stream (aggregate): $(ratio "${agg[native/8]}" "${agg[native/1]}")x"
  [[ -n "${agg[llama-server/8]:-}" ]] && echo "native vs llama-server, 8 streams (aggregate): $(ratio "${agg[native/8]}" "${agg[llama-server/8]}")x"
  [[ -n "${agg[llama/8]:-}" ]] && echo "native vs edgelora --backend llama, 8 streams (aggregate): $(ratio "${agg[native/8]}" "${agg[llama/8]}")x"
fi
for v in native-int8 native-gpu; do
  if [[ -n "${agg[$v/8]:-}" ]]; then
    echo "$v, 8 streams vs its 1 stream (aggregate): $(ratio "${agg[$v/8]}" "${agg[$v/1]}")x"
    [[ -n "${agg[native/1]:-}" ]] && echo "$v, 8 streams vs native's 1 stream (aggregate): $(ratio "${agg[$v/8]}" "${agg[native/1]}")x"
    [[ -n "${agg[llama-server/8]:-}" ]] && echo "$v vs llama-server, 8 streams (aggregate): $(ratio "${agg[$v/8]}" "${agg[llama-server/8]}")x"
  fi
done
