"""Talks to `edgelora serve` with the official openai client (run by tests/suite/serve.rs):
    python openai_client.py BASE_URL API_KEY
Prints one JSON object with the texts it got, which the Rust test compares with
`edgelora generate`'s greedy answers."""
import json
import sys

from openai import OpenAI

base_url, key = sys.argv[1], sys.argv[2]
client = OpenAI(base_url=base_url, api_key=key, max_retries=0, timeout=300)
q = "What is the capital of France?"
p = "The capital of France is"
out = {}


def chat(model, stream=False, **extra):
    kw = dict(model=model, messages=[{"role": "user", "content": q}], max_tokens=10, temperature=0)
    if extra:
        kw["extra_body"] = extra
    if not stream:
        r = client.chat.completions.create(**kw)
        assert r.object == "chat.completion" and r.usage.completion_tokens > 0, r
        assert r.choices[0].finish_reason in ("stop", "length"), r
        return r.choices[0].message.content
    text = ""
    for chunk in client.chat.completions.create(stream=True, **kw):
        if chunk.choices and chunk.choices[0].delta.content:
            text += chunk.choices[0].delta.content
    return text


def complete(model, stream=False):
    kw = dict(model=model, prompt=p, max_tokens=8, temperature=0)
    if not stream:
        r = client.completions.create(**kw)
        assert r.object == "text_completion" and r.usage.total_tokens > 0, r
        return r.choices[0].text
    return "".join(c.choices[0].text for c in client.completions.create(stream=True, **kw) if c.choices)


out["models"] = [m.id for m in client.models.list().data]
out["chat_base"] = chat("SmolLM2-135M-Instruct.Q4_1")
out["chat_base_stream"] = chat("SmolLM2-135M-Instruct.Q4_1", stream=True)
out["chat_adapter"] = chat("rs")
out["chat_weighted"] = chat("SmolLM2-135M-Instruct.Q4_1", adapters=[{"name": "seed", "scale": 0.7}, {"name": "rs", "scale": 0.3}])
out["chat_scenario"] = chat("credit")
out["completion_adapter"] = complete("rs")
out["completion_adapter_stream"] = complete("rs", stream=True)
try:
    chat("no-such-model")
    raise SystemExit("an unknown model was accepted")
except Exception as e:  # openai.NotFoundError
    assert getattr(e, "status_code", None) == 404, e
print(json.dumps(out))
