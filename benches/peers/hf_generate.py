#!/usr/bin/env python3
"""The peer of our generation benches (`crates/torch/benches/generate.rs`,
`crates/onnx/benches/generate.rs`): transformers' `generate` with the same settings, timed
the same way, printing one JSON line per (batch, new tokens) with `tokens_per_s`.

  benches/peers/hf_generate.py [--model-dir DIR | --model gpt2|tiny|L,H,E]
      [--device auto|cpu|cuda] [--dtype fp32|bf16] [--batch 1,20] [--new 64 | --new 256,1000]
      [--threads N]

Settings (crates/generate/benches/common/mod.rs): an 8-token prompt, sampling with
top_k = 40 and temperature = 0.7, the KV cache on, exactly --new tokens per row; one
16-token run first as warm-up; tokens/s = batch x new / wall time of the whole `generate`
call (prompt included; the device synchronised at both ends). The model is the folder
saved by `save_pretrained` (--model-dir; what the CPU benches pass) or a random one
(seed 0). Weights are fp32 on the CPU and bf16 on CUDA unless --dtype says otherwise.
--new is one value for every batch or one per batch (`--batch 1,20 --new 256,1000`).

  benches/peers/hf_generate.py --device cpu --model 2,2,64 --batch 1,4 --new 8
"""
import argparse
import time

import torch
import transformers

import common


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model-dir")
    ap.add_argument("--model", default="gpt2")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--dtype", choices=["fp32", "bf16"])
    ap.add_argument("--batch", default="1,20")
    ap.add_argument("--new", default="64")
    ap.add_argument("--threads", type=int, default=0)
    a = ap.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    dev = common.device(a.device)
    dtype = a.dtype or ("bf16" if dev.type == "cuda" else "fp32")
    batches, news = common.ints(a.batch), common.ints(a.new)
    if len(news) == 1:
        news *= len(batches)
    if len(news) != len(batches):
        ap.error("--new takes one value, or one per --batch")
    common.describe(dev)
    if a.model_dir:
        model = transformers.GPT2LMHeadModel.from_pretrained(a.model_dir)
    else:
        torch.manual_seed(0)
        model = transformers.GPT2LMHeadModel(common.config(a.model))
    model = model.to(dev, torch.bfloat16 if dtype == "bf16" else torch.float32).eval()

    for batch, new in zip(batches, news):
        x = torch.tensor([[(i * 977 + 13) % 50257 for i in range(8)]] * batch, device=dev)
        kw = dict(do_sample=True, top_k=40, temperature=0.7, pad_token_id=0,
                  attention_mask=torch.ones_like(x))
        with torch.no_grad():
            model.generate(x, max_new_tokens=16, min_new_tokens=16, **kw)
            common.sync(dev)
            start = time.time()
            model.generate(x, max_new_tokens=new, min_new_tokens=new, **kw)
            common.sync(dev)
        secs = time.time() - start
        common.emit(device=str(dev), dtype=dtype, batch=batch, new=new,
                    tokens_per_s=round(batch * new / secs, 1))


if __name__ == "__main__":
    main()
