#!/usr/bin/env python3
"""PyTorch + PEFT reference for `edgelora train`: LoRA on the same model (transformers
loads the GGUF and dequantizes every tensor to fp32), the same JSONL data rendered with
the model's chat template, loss only on the response, same batch, length cap, steps,
optimizer (AdamW), schedule (cosine, warm-up ratio) and clipping. Prints one JSON object:
training tokens/s (non-padding tokens through forward + backward per second, steps after
the first) and peak RSS.

Needs torch, transformers, peft, gguf (e.g. the venv in tests/python/README.md).
Usage: peft_train.py --gguf MODEL.gguf --data train.jsonl [--steps 30 --batch 8 --threads 2 ...]
"""
import argparse
import json
import math
import os
import random
import resource
import time


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--gguf", required=True)
    ap.add_argument("--data", required=True)
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rank", type=int, default=16)
    ap.add_argument("--alpha", type=float, default=32)
    ap.add_argument("--targets", default="q_proj,v_proj")
    ap.add_argument("--lr", type=float, default=3e-4)
    ap.add_argument("--warmup-ratio", type=float, default=0.03)
    ap.add_argument("--max-len", type=int, default=512)
    ap.add_argument("--seed", type=int, default=42)
    ap.add_argument("--grad-checkpoint", action="store_true")
    a = ap.parse_args()

    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer, get_cosine_schedule_with_warmup

    torch.set_num_threads(a.threads)
    torch.manual_seed(a.seed)
    d, f = os.path.split(os.path.abspath(a.gguf))
    tok = AutoTokenizer.from_pretrained(d, gguf_file=f)
    model = AutoModelForCausalLM.from_pretrained(d, gguf_file=f, torch_dtype=torch.float32)
    targets = [m for m in a.targets.split(",")] if a.targets != "all-linear" else "all-linear"
    model = get_peft_model(model, LoraConfig(r=a.rank, lora_alpha=a.alpha, target_modules=targets, lora_dropout=0.0, bias="none", task_type="CAUSAL_LM"))
    if a.grad_checkpoint:
        model.gradient_checkpointing_enable()
        model.enable_input_require_grads()
    model.train()

    examples = []
    for line in open(a.data):
        if not line.strip():
            continue
        r = json.loads(line)
        user = r["instruction"] + ("\n\n" + r["input"] if r.get("input") else "")
        # The model's own chat template (the GGUF's Jinja, as edgelora renders it: for
        # SmolLM2 it adds the default system turn), so both see the same tokens.
        text = tok.apply_chat_template([{"role": "user", "content": user}], tokenize=False, add_generation_prompt=True)
        prompt = tok(text, add_special_tokens=False)["input_ids"]
        full = prompt + tok(f"{r['output']}<|im_end|>\n", add_special_tokens=False)["input_ids"]
        full = full[: a.max_len]
        labels = [-100] * min(len(prompt), len(full)) + full[len(prompt):]
        examples.append((full, labels))

    rng = random.Random(a.seed)
    order = []
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=a.lr, weight_decay=0.0)
    sched = get_cosine_schedule_with_warmup(opt, math.ceil(a.warmup_ratio * a.steps), a.steps)
    pad = tok.pad_token_id if tok.pad_token_id is not None else 0
    times, tokens, losses = [], [], []
    for step in range(a.steps):
        if len(order) < a.batch:
            idx = list(range(len(examples)))
            rng.shuffle(idx)
            order += idx
        batch = [examples[i] for i in order[: a.batch]]
        order = order[a.batch:]
        n = max(len(x) for x, _ in batch)
        ids = torch.tensor([x + [pad] * (n - len(x)) for x, _ in batch])
        lab = torch.tensor([y + [-100] * (n - len(y)) for _, y in batch])
        att = torch.tensor([[1] * len(x) + [0] * (n - len(x)) for x, _ in batch])
        t0 = time.perf_counter()
        out = model(input_ids=ids, attention_mask=att, labels=lab)
        out.loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        times.append(time.perf_counter() - t0)
        # the tokens edgelora counts: each sequence's inputs (length − 1), no padding
        tokens.append(sum(len(x) - 1 for x, _ in batch))
        losses.append(out.loss.item())
    steady = slice(1, None) if a.steps > 1 else slice(None)
    print(json.dumps({
        "tool": "pytorch+peft",
        "torch": torch.__version__,
        "threads": a.threads,
        "steps": a.steps,
        "batch": a.batch,
        "tokens_per_s": sum(tokens[steady]) / sum(times[steady]),
        "mean_tokens_per_step": sum(tokens) / len(tokens),
        "first_loss": losses[0],
        "last_loss": losses[-1],
        "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }))


if __name__ == "__main__":
    main()
