#!/usr/bin/env bash
# Merge quality side by side: each fixture adapter (tests/fixtures/seed_r16_qv,
# rslora_r8_all) merged into the default Q4_1 model by edgelora (gptq with its default
# sampled calibration, refit and ggml quantizers) and by llama.cpp's route (llama-export-lora to F16, then llama-quantize to
# Q4_1); for each fixture prompt, the KL of the merged model's last-position distribution
# to the adapter applied on the fly, and whether the top-1 token is the same. All logits
# come from one backend: BACKEND=llama (default; llama.cpp) or native (edgelora's f32
# engine). Needs python3 (standard library only).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/edgelora-target}"
E="$CARGO_TARGET_DIR/release/edgelora"
BACKEND="${BACKEND:-llama}"
M=models/SmolLM2-135M-Instruct.Q4_1.gguf
source benches/llamacpp_tools.sh
work=$(mktemp -d); trap 'rm -rf "$work"' EXIT
prompts=$(python3 -c 'import json; [print(p["name"], ",".join(map(str, p["input_ids"]))) for p in json.load(open("tests/fixtures/reference.json"))["prompts"]]')
logits() { # model out [adapter]
  local model=$1 out=$2; shift 2
  while read -r name ids; do "$E" logits -m "$model" "$@" --backend "$BACKEND" --tokens "$ids" --top 1 --out "$out.$name" >/dev/null 2>&1; done <<< "$prompts"
}
for a in seed_r16_qv rslora_r8_all; do
  "$E" adapter convert "tests/fixtures/$a" "$work/$a.gguf" -m "$M" --dtype f16 >/dev/null 2>&1
  logits "$M" "$work/fly" -a "$work/$a.gguf"
  for q in gptq refit ggml; do
    "$E" merge -m "$M" -a "tests/fixtures/$a" --out "$work/$q.gguf" --quantizer "$q" 2>/dev/null
    logits "$work/$q.gguf" "$work/$q"
  done
  "$T/llama-export-lora" -m "$M" --lora "$work/$a.gguf" -o "$work/lc-f16.gguf" >/dev/null 2>&1
  "$T/llama-quantize" --allow-requantize "$work/lc-f16.gguf" "$work/llamacpp.gguf" Q4_1 >/dev/null 2>&1
  logits "$work/llamacpp.gguf" "$work/llamacpp"
  python3 - "$work" "$a" <<'PY'
import json, math, struct, sys
work, adapter = sys.argv[1], sys.argv[2]
names = [p["name"] for p in json.load(open("tests/fixtures/reference.json"))["prompts"]]
def read(path):
    data = open(path, "rb").read()
    return struct.unpack(f"<{len(data) // 4}f", data)
def logsoftmax(v):
    m = max(v); s = math.log(sum(math.exp(x - m) for x in v)) + m
    return [x - s for x in v]
for q in ["gptq", "refit", "ggml", "llamacpp"]:
    kls, same = [], 0
    for n in names:
        p, r = logsoftmax(read(f"{work}/fly.{n}")), logsoftmax(read(f"{work}/{q}.{n}"))
        kls.append(sum(math.exp(a) * (a - b) for a, b in zip(p, r)))
        same += max(range(len(p)), key=p.__getitem__) == max(range(len(r)), key=r.__getitem__)
    print(f"{adapter:14} {q:9} KL to on-the-fly " + " ".join(f"{k:.4f}" for k in kls) + f"  (mean {sum(kls) / len(kls):.4f}), same top-1 {same}/{len(names)}")
PY
done
