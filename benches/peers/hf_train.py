#!/usr/bin/env python3
"""The peer of `crates/torch/examples/train_bench.rs`: transformers' GPT2LMHeadModel trained
the same way (random init, random tokens, loss + backward + AdamW step), timed the same
way (wall clock over --steps after --warmup steps, the device synchronised at both ends),
printing the same JSON line (`tokens_per_s`, `peak_gpu_mem_mb`, ...), one per batch size.

  benches/peers/hf_train.py [--device auto|cpu|cuda] [--model gpt2|tiny|L,H,E]
      [--batch 16[,32,...]] [--seq 1024] [--steps 10] [--warmup 3]
      [--precision fp32|bf16] [--threads N] [--compile]

CPU (fp32 by default): `torch.optim.AdamW(lr=1e-4, weight_decay=0.01)`, eager, SDPA.
CUDA (bf16 by default): TF32 matmuls allowed, bf16 autocast over fp32 weights, fused AdamW;
`--compile` wraps the model in `torch.compile` (default mode). `peak_gpu_mem_mb` is what
nvidia-smi says this process holds after the timed steps (CUDA context and the caching
allocator included), as train_bench reads it; each batch size starts from a fresh model
with the allocator's cache emptied.

  benches/peers/hf_train.py --device cpu --model 2,2,64 --batch 2 --seq 32 --steps 2 --warmup 1
"""
import argparse
import os
import subprocess
import time

import torch
import transformers

import common


def gpu_memory_mb():
    try:
        out = subprocess.run(
            ["nvidia-smi", "--query-compute-apps=pid,used_memory", "--format=csv,noheader,nounits"],
            capture_output=True, text=True, check=True,
        ).stdout
    except (OSError, subprocess.CalledProcessError):
        return None
    for line in out.splitlines():
        pid, _, mem = line.partition(",")
        if pid.strip() == str(os.getpid()):
            return float(mem)
    return None


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", default="auto")
    ap.add_argument("--model", default="gpt2")
    ap.add_argument("--batch", default="16", help="one or more, comma-separated")
    ap.add_argument("--seq", type=int, default=1024)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--precision", choices=["fp32", "bf16"])
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--compile", action="store_true")
    a = ap.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    dev = common.device(a.device)
    cuda = dev.type == "cuda"
    precision = a.precision or ("bf16" if cuda else "fp32")
    if cuda:
        torch.backends.cuda.matmul.allow_tf32 = True
    common.describe(dev)
    cfg = common.config(a.model)

    for batch in common.ints(a.batch):
        if cuda:
            torch.cuda.empty_cache()
        torch.manual_seed(0)
        model = transformers.GPT2LMHeadModel(cfg).to(dev).train()
        params = sum(p.numel() for p in model.parameters())
        opt = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0.01, fused=cuda)
        run = torch.compile(model) if a.compile else model
        x = torch.randint(0, cfg.vocab_size, (batch, a.seq), device=dev)
        for i in range(a.warmup + a.steps):
            if i == a.warmup:
                common.sync(dev)
                start = time.time()
            with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=precision == "bf16"):
                loss = run(input_ids=x, labels=x).loss
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
        common.sync(dev)
        secs = time.time() - start
        common.emit(
            device=str(dev),
            precision=precision,
            compiled=a.compile,
            params=params,
            batch=batch,
            seq=a.seq,
            steps=a.steps,
            tokens_per_s=round(batch * a.seq * a.steps / secs),
            peak_gpu_mem_mb=gpu_memory_mb() if cuda else None,
            final_loss=loss.item(),
        )
        del model, run, opt, x, loss


if __name__ == "__main__":
    main()
