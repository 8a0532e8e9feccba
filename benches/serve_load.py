"""Drives `edgelora serve` with N concurrent streaming completions, each on its own
adapter, and prints aggregate and per-stream decode tokens/s and time to first token
(p50/p99). Standard library only. Used by benches/serve_bench.sh:
    python3 benches/serve_load.py URL ADAPTER[,ADAPTER…] STREAMS REQUESTS_PER_STREAM MAX_TOKENS [edgelora|llama-server]
edgelora selects an adapter by `model` (its name); llama-server (adapters loaded with
--lora in the same order, --lora-init-without-apply) by its per-request `lora` field."""
import http.client
import json
import statistics
import sys
import threading
import time
import urllib.parse

url, adapters, streams, per, max_tokens = sys.argv[1], sys.argv[2].split(","), int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
peer = sys.argv[6] if len(sys.argv) > 6 else "edgelora"
u = urllib.parse.urlparse(url)
ttfts, rates, tokens_total = [], [], [0]
lock = threading.Lock()


def one(stream_ix, k):
    c = http.client.HTTPConnection(u.hostname, u.port, timeout=600)
    req = {"prompt": f"Stream {stream_ix} request {k}: once upon a time", "max_tokens": max_tokens, "stream": True, "temperature": 0}
    a = stream_ix % len(adapters)
    if peer == "llama-server":
        req["lora"] = [{"id": i, "scale": 1.0 if i == a else 0.0} for i in range(len(adapters))]
    else:
        req["model"] = adapters[a]
    body = json.dumps(req)
    t0 = time.perf_counter()
    c.request("POST", "/v1/completions", body, {"Content-Type": "application/json"})
    r = c.getresponse()
    assert r.status == 200, (r.status, r.read())
    first, n = None, 0
    for line in r:
        line = line.strip()
        if not line.startswith(b"data: ") or line == b"data: [DONE]":
            continue
        ev = json.loads(line[6:])
        if ev["choices"] and ev["choices"][0]["text"]:
            n += 1
            if first is None:
                first = time.perf_counter()
    end = time.perf_counter()
    with lock:
        ttfts.append((first or end) - t0)
        if n > 1 and first:
            rates.append((n - 1) / (end - first))
        tokens_total[0] += n


def stream(i):
    for k in range(per):
        one(i, k)


t0 = time.perf_counter()
threads = [threading.Thread(target=stream, args=(i,)) for i in range(streams)]
for t in threads:
    t.start()
for t in threads:
    t.join()
wall = time.perf_counter() - t0
q = sorted(ttfts)
p99 = q[min(len(q) - 1, int(round(0.99 * (len(q) - 1))))]
print(json.dumps({"streams": streams, "requests": len(ttfts), "aggregate_tok_s": tokens_total[0] / wall,
                  "per_stream_decode_tok_s_median": statistics.median(rates) if rates else 0.0,
                  "ttft_p50_s": statistics.median(q), "ttft_p99_s": p99, "wall_s": wall}))
