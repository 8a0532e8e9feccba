"""Loads a PEFT folder written by `edgelora train --peft-out` into transformers + PEFT
(on the same GGUF, dequantized to fp32 by transformers) and answers a JSONL test set
greedily; compares the first word of each answer with edgelora's (`edgelora eval
--answers` JSON) and with the expected output.

Not part of the Rust suite (needs torch, transformers, peft, gguf). Usage:
    python tests/python/check_trained_peft.py MODEL.gguf PEFT_DIR test.jsonl EDGELORA_EVAL.json
Prints accuracy and agreement; exits 1 if agreement is below 100%.
"""
import json
import os
import sys

import torch
from peft import PeftModel
from transformers import AutoModelForCausalLM, AutoTokenizer


def first_word(s):
    w = s.split()
    return w[0].strip(".,!?:;\"'").lower() if w else ""


def main():
    model_path, peft_dir, data, ours = sys.argv[1:5]
    d, f = os.path.split(os.path.abspath(model_path))
    tok = AutoTokenizer.from_pretrained(d, gguf_file=f)
    base = AutoModelForCausalLM.from_pretrained(d, gguf_file=f, torch_dtype=torch.float32)
    model = PeftModel.from_pretrained(base, peft_dir).eval()
    edgelora = {a["line"]: a["answer"] for a in json.load(open(ours))["answers"]}
    n = agree = correct = 0
    for i, line in enumerate(open(data), 1):
        if not line.strip():
            continue
        r = json.loads(line)
        user = r["instruction"] + ("\n\n" + r["input"] if r.get("input") else "")
        # ChatML as edgelora renders it (llama.cpp's template: no default system turn)
        ids = tok(f"<|im_start|>user\n{user}<|im_end|>\n<|im_start|>assistant\n", add_special_tokens=False, return_tensors="pt")["input_ids"]
        with torch.no_grad():
            out = model.generate(ids, max_new_tokens=4, do_sample=False)
        text = tok.decode(out[0, ids.shape[1]:], skip_special_tokens=True)
        n += 1
        agree += first_word(text) == first_word(edgelora[i])
        correct += first_word(text) == first_word(r["output"])
    print(json.dumps({"n": n, "peft_accuracy": correct / n, "agreement_with_edgelora": agree / n}))
    sys.exit(0 if agree == n else 1)


if __name__ == "__main__":
    main()
