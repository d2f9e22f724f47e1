#!/usr/bin/env python3
"""The peer of `gptpipe serve` in `benches/serve_load.sh`: a server built the way
gpt-2-cloud-run (minimaxir/gpt-2-cloud-run, its `app.py`) is, with transformers in place of
gpt-2-simple: a Starlette app under uvicorn, `GET`/`POST /` with the parameters `length`,
`temperature`, `top_k`, `top_p`, `prefix` (its first 500 characters), `include_prefix`
(`truncate` is read and ignored: the bench asks for none), answering `{"text": ...}`, and
`HEAD /` answering `{"text": ""}`. One request generates at a time (a global lock: the app
calls gpt-2-simple synchronously, and Cloud Run runs it with concurrency 1); the model runs
in a worker thread so the event loop keeps accepting connections while it waits.
`GET /health` (ours) answers once the model is loaded.

  PYTHONPATH=.bench-tools/py .venv/bin/python benches/peers/cloud_run_peer.py \
      --model-dir bench-data/serve/tiny [--host 127.0.0.1] [--port 8090] [--threads N]

Generation: transformers' `generate` with `do_sample=True`, the request's temperature and
top_k (0 = off, as in gpt-2-simple) and top_p (0 = off), the KV cache on, and
`max_new_tokens = min_new_tokens = length`, so every request makes exactly `length`
tokens (as gpt-2-simple does without `truncate`). An empty prefix starts from
`<|endoftext|>`, as gpt-2-simple's does. fp32 weights on the CPU; PyTorch's default
threads unless --threads. Counts go to `GET /stats` (requests, generated tokens).
"""
import argparse
import asyncio
import os
import sys

import torch
import transformers
import uvicorn
from starlette.applications import Starlette
from starlette.responses import JSONResponse
from starlette.routing import Route

sys.path.insert(0, os.path.dirname(__file__))
import common  # noqa: E402,F401  (quiet transformers)
from tiny_model import tokenizer  # noqa: E402

EOT = 50256
HEADERS = {"Access-Control-Allow-Origin": "*"}


def build(model_dir, threads, device):
    if threads:
        torch.set_num_threads(threads)
    model = transformers.GPT2LMHeadModel.from_pretrained(model_dir).eval().to(device)
    tok = tokenizer(model_dir)
    lock = asyncio.Lock()
    stats = {"requests": 0, "tokens": 0}

    def generate(params):
        length = int(params.get("length", 1023))
        temperature = float(params.get("temperature", 0.7))
        top_k = int(params.get("top_k", 0))
        top_p = float(params.get("top_p", 0))
        prefix = str(params.get("prefix", ""))[:500]
        include_prefix = str(params.get("include_prefix", True)).lower() == "true"
        ids = tok.encode(prefix).ids if prefix else [EOT]
        x = torch.tensor([ids], device=device)
        kw = dict(do_sample=True, temperature=temperature, top_k=top_k,
                  top_p=top_p if top_p > 0 else 1.0, pad_token_id=EOT,
                  attention_mask=torch.ones_like(x))
        with torch.no_grad():
            out = model.generate(x, max_new_tokens=length, min_new_tokens=length, **kw)
        new = out[0, len(ids):].tolist()
        stats["requests"] += 1
        stats["tokens"] += len(new)
        text = tok.decode(new, skip_special_tokens=False)
        return (prefix + text) if include_prefix else text

    async def homepage(request):
        if request.method == "HEAD":
            return JSONResponse({"text": ""}, headers=HEADERS)
        if request.method == "GET":
            params = dict(request.query_params)
        else:
            params = await request.json()
        async with lock:
            text = await asyncio.to_thread(generate, params)
        return JSONResponse({"text": text}, headers=HEADERS)

    async def health(_request):
        return JSONResponse({"status": "ready"})

    async def stats_route(_request):
        return JSONResponse(stats)

    return Starlette(routes=[
        Route("/", homepage, methods=["GET", "POST", "HEAD"]),
        Route("/health", health),
        Route("/stats", stats_route),
    ])


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model-dir", required=True)
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=8090)
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--device", default="cpu", help="torch device: cpu, cuda")
    a = ap.parse_args()
    app = build(a.model_dir, a.threads, a.device)
    print(f"peer: transformers {transformers.__version__}, torch {torch.__version__}, "
          f"{torch.get_num_threads()} CPU threads, device {a.device}", file=sys.stderr, flush=True)
    uvicorn.run(app, host=a.host, port=a.port, log_level="warning", access_log=False)


if __name__ == "__main__":
    main()
