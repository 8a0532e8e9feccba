"""Loads PEFT folders written by edgelora into transformers + PEFT and compares their
last-position logits with the fixtures' transformers references.

Not part of the Rust suite (it needs torch, transformers, peft, gguf). Usage:
    python tests/python/check_peft_export.py MODEL.gguf CONFIG=PEFT_DIR [CONFIG=PEFT_DIR ...]
where CONFIG is a reference configuration (seed_r16_qv, rslora_r8_all). Prints KL and
top-1 agreement per prompt; exits 1 if a top-1 differs or KL > 1e-4.
"""
import json
import math
import os
import sys

import torch
from peft import PeftModel
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM

here = os.path.dirname(os.path.abspath(__file__))
fixtures = os.path.join(here, "..", "fixtures")


def main():
    model_path = sys.argv[1]
    pairs = [a.split("=", 1) for a in sys.argv[2:]]
    ref = json.load(open(os.path.join(fixtures, "reference.json")))
    ref_logits = load_file(os.path.join(fixtures, "reference.safetensors"))
    torch.manual_seed(0)
    failed = False
    for config, peft_dir in pairs:
        base = AutoModelForCausalLM.from_pretrained(
            os.path.dirname(os.path.abspath(model_path)), gguf_file=os.path.basename(model_path), torch_dtype=torch.float32
        )
        model = PeftModel.from_pretrained(base, peft_dir).eval()
        for p in ref["prompts"]:
            ids = torch.tensor([p["input_ids"]])
            with torch.no_grad():
                got = model(ids).logits[0, -1].double()
            want = ref_logits[f"logits.{config}.{p['name']}"].double()
            lp, lq = torch.log_softmax(want, 0), torch.log_softmax(got, 0)
            kl = float((lp.exp() * (lp - lq)).sum())
            top1 = int(want.argmax()) == int(got.argmax())
            print(f"{config} via {peft_dir} / {p['name']}: KL {kl:.2e}, top-1 {'same' if top1 else 'DIFFERENT'}")
            failed |= (not top1) or kl > 1e-4 or math.isnan(kl)
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
