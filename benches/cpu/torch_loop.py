#!/usr/bin/env python3
"""The plain PyTorch side of the CPU benchmark (`.venv/bin/python`, the libtorch gptpipe
links): GPT-2 written out in eager PyTorch as anyone would (nanoGPT's shape: fused qkv,
`scaled_dot_product_attention(is_causal=True)`, tanh GELU, the head tied to `wte`), the
benchmark's weights loaded from the Hugging Face folder, and the training loop of the
finetune stage: random n_ctx windows of the wrapped CSV, batch 1, 5 accumulated
micro-batches per step, `torch.optim.AdamW(lr=1e-4, weight_decay=0.01)` (PyTorch's default
CPU path).

  torch_loop.py train HF_DIR CSV --steps N [--threads T] [--profile K]
  torch_loop.py generate HF_DIR --batch B --length L [--threads T] [--greedy]

train prints `step N loss` per step (the caller timestamps the lines); `--profile K`
instead runs K steps under `torch.profiler` after 2 warm-up steps and prints the table of
operators by self CPU time. generate is transformers' `generate` (the peer of the
generate rows): `<|startoftext|>` prompt, top_k 40, temperature 0.7 (top_k 1 with
--greedy), KV cache, exactly L new tokens per row, one 8-token warm-up call, then one timed
call; one JSON line.
"""
import argparse
import csv
import json
import math
import os
import random
import sys
import time

import torch
import torch.nn.functional as F
from torch import nn


class Block(nn.Module):
    def __init__(self, e, h):
        super().__init__()
        self.h = h
        self.ln_1 = nn.LayerNorm(e)
        self.c_attn_w = nn.Parameter(torch.empty(e, 3 * e))
        self.c_attn_b = nn.Parameter(torch.empty(3 * e))
        self.attn_proj_w = nn.Parameter(torch.empty(e, e))
        self.attn_proj_b = nn.Parameter(torch.empty(e))
        self.ln_2 = nn.LayerNorm(e)
        self.c_fc_w = nn.Parameter(torch.empty(e, 4 * e))
        self.c_fc_b = nn.Parameter(torch.empty(4 * e))
        self.mlp_proj_w = nn.Parameter(torch.empty(4 * e, e))
        self.mlp_proj_b = nn.Parameter(torch.empty(e))

    def forward(self, x):
        b, t, e = x.shape
        qkv = torch.addmm(self.c_attn_b, self.ln_1(x).view(-1, e), self.c_attn_w).view(b, t, 3 * e)
        q, k, v = (z.view(b, t, self.h, e // self.h).transpose(1, 2) for z in qkv.split(e, 2))
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        y = y.transpose(1, 2).reshape(b * t, e)
        x = x + torch.addmm(self.attn_proj_b, y, self.attn_proj_w).view(b, t, e)
        m = F.gelu(torch.addmm(self.c_fc_b, self.ln_2(x).view(-1, e), self.c_fc_w), approximate="tanh")
        return x + torch.addmm(self.mlp_proj_b, m, self.mlp_proj_w).view(b, t, e)


class GPT2(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        e = cfg["n_embd"]
        self.wte = nn.Parameter(torch.empty(cfg["vocab_size"], e))
        self.wpe = nn.Parameter(torch.empty(cfg["n_positions"], e))
        self.blocks = nn.ModuleList(Block(e, cfg["n_head"]) for _ in range(cfg["n_layer"]))
        self.ln_f = nn.LayerNorm(e)

    def forward(self, idx):
        b, t = idx.shape
        x = self.wte[idx] + self.wpe[:t]
        for block in self.blocks:
            x = block(x)
        logits = self.ln_f(x) @ self.wte.t()
        return F.cross_entropy(logits[:, :-1].reshape(-1, logits.size(-1)), idx[:, 1:].reshape(-1))

    def load_hf(self, path):
        from safetensors.torch import load_file

        w = load_file(path)
        names = {
            "ln_1.weight": "ln_1.weight", "ln_1.bias": "ln_1.bias",
            "attn.c_attn.weight": "c_attn_w", "attn.c_attn.bias": "c_attn_b",
            "attn.c_proj.weight": "attn_proj_w", "attn.c_proj.bias": "attn_proj_b",
            "ln_2.weight": "ln_2.weight", "ln_2.bias": "ln_2.bias",
            "mlp.c_fc.weight": "c_fc_w", "mlp.c_fc.bias": "c_fc_b",
            "mlp.c_proj.weight": "mlp_proj_w", "mlp.c_proj.bias": "mlp_proj_b",
        }
        state = {"wte": w["transformer.wte.weight"], "wpe": w["transformer.wpe.weight"],
                 "ln_f.weight": w["transformer.ln_f.weight"], "ln_f.bias": w["transformer.ln_f.bias"]}
        for i in range(len(self.blocks)):
            for hf, ours in names.items():
                state[f"blocks.{i}.{ours}"] = w[f"transformer.h.{i}.{hf}"]
        self.load_state_dict(state)


def tokens_of_csv(hf_dir, path):
    """The CSV wrapped as gpt-2-simple wraps it, encoded with GPT-2's tokenizer."""
    from transformers import GPT2TokenizerFast

    with open(path, encoding="utf8", errors="ignore") as fp:
        fp.readline()
        text = "".join("<|startoftext|>" + row[0] + "<|endoftext|>\n" for row in csv.reader(fp) if row)
    tok = GPT2TokenizerFast.from_pretrained(hf_dir)
    return torch.tensor(tok(text)["input_ids"], dtype=torch.long)


def train(a):
    with open(os.path.join(a.hf_dir, "config.json")) as f:
        cfg = json.load(f)
    model = GPT2(cfg)
    model.load_hf(os.path.join(a.hf_dir, "model.safetensors"))
    model.train()
    data = tokens_of_csv(a.hf_dir, a.csv)
    n_ctx = min(cfg["n_positions"], len(data))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0.01)
    rng = random.Random(0)
    accum, batch = 5, 1

    def step():
        opt.zero_grad(set_to_none=True)
        total = 0.0
        for _ in range(accum):
            starts = [rng.randint(0, len(data) - n_ctx) for _ in range(batch)]
            x = torch.stack([data[s:s + n_ctx] for s in starts])
            loss = model(x)
            (loss / accum).backward()
            total += loss.item()
        opt.step()
        return total / accum

    print("start", flush=True)
    if a.profile:
        from torch.profiler import ProfilerActivity, profile

        for _ in range(2):
            step()
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            t = time.time()
            for _ in range(a.profile):
                step()
            secs = time.time() - t
        print(f"{a.profile} steps in {secs:.3f} s ({a.profile / secs:.3f} steps/s)")
        print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=30))
        return
    for i in range(1, a.steps + 1):
        loss = step()
        print(f"step {i} loss {loss:.4f}", flush=True)


def generate(a):
    import transformers

    transformers.logging.set_verbosity_error()
    model = transformers.GPT2LMHeadModel.from_pretrained(a.hf_dir).eval()
    tok = transformers.GPT2TokenizerFast.from_pretrained(a.hf_dir)
    x = torch.tensor([tok("<|startoftext|>")["input_ids"]] * a.batch)
    kw = dict(attention_mask=torch.ones_like(x), pad_token_id=50256)
    kw.update(dict(do_sample=False) if a.greedy else dict(do_sample=True, top_k=40, temperature=0.7))
    with torch.no_grad():
        model.generate(x, max_new_tokens=8, min_new_tokens=8, **kw)
        start = time.time()
        out = model.generate(x, max_new_tokens=a.length, min_new_tokens=a.length, **kw)
        secs = time.time() - start
    res = {"impl": "transformers", "batch": a.batch, "new": a.length, "secs": secs,
           "tokens_per_s": a.batch * a.length / secs}
    if a.greedy:
        res["text"] = tok.decode(out[0])
    print(json.dumps(res), flush=True)


def main():
    ap = argparse.ArgumentParser()
    sub = ap.add_subparsers(dest="cmd", required=True)
    t = sub.add_parser("train")
    t.add_argument("hf_dir")
    t.add_argument("csv")
    t.add_argument("--steps", type=int, default=20)
    t.add_argument("--threads", type=int, default=0)
    t.add_argument("--profile", type=int, default=0)
    g = sub.add_parser("generate")
    g.add_argument("hf_dir")
    g.add_argument("--batch", type=int, default=1)
    g.add_argument("--length", type=int, default=100)
    g.add_argument("--threads", type=int, default=0)
    g.add_argument("--greedy", action="store_true")
    a = ap.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    train(a) if a.cmd == "train" else generate(a)


if __name__ == "__main__":
    sys.exit(main())
