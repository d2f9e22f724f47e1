#!/usr/bin/env python3
"""The peer of benches/data_parallel.py: PyTorch's DistributedDataParallel over gloo on the
CPU (torch.multiprocessing, the torchrun variables set by hand), the model of
benches/cpu/torch_loop.py with random weights, random token windows, AdamW; each rank its
share of the global batch; default threads divided among the ranks (as torchrun does).

  data_parallel_torch.py RANKS STEPS GLOBAL_BATCH CONFIG_JSON

Prints one JSON line: tokens/s over steps 2..=STEPS, timed on rank 0.
"""
import json
import os
import socket
import sys
import time

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "cpu"))
from torch_loop import GPT2  # noqa: E402


def rank_main(rank, world, steps, batch, cfg, port, threads, out):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(threads)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    torch.manual_seed(0)
    model = GPT2(dict(cfg, n_positions=cfg["n_ctx"]))
    for p in model.parameters():
        torch.nn.init.normal_(p, std=0.02)
    ddp = torch.nn.parallel.DistributedDataParallel(model) if world > 1 else model
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0.01)
    g = torch.Generator().manual_seed(rank)
    share = batch // world
    start = None
    for step in range(1, steps + 1):
        if step == 2:
            start = time.time()
        x = torch.randint(0, cfg["vocab_size"], (share, cfg["n_ctx"]), generator=g)
        opt.zero_grad(set_to_none=True)
        ddp(x).backward()
        opt.step()
    elapsed = time.time() - start
    if rank == 0:
        out.put((steps - 1) * batch * cfg["n_ctx"] / elapsed)
    dist.destroy_process_group()


def main():
    world, steps, batch = (int(x) for x in sys.argv[1:4])
    cfg = json.loads(sys.argv[4])
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    threads = max(1, torch.get_num_threads() // world)
    ctx = mp.get_context("spawn")
    out = ctx.Queue()
    procs = [ctx.Process(target=rank_main, args=(r, world, steps, batch, cfg, port, threads, out))
             for r in range(world)]
    for p in procs:
        p.start()
    tokens_per_s = out.get()
    for p in procs:
        p.join()
    print(json.dumps({"ranks": world, "tokens_per_s": tokens_per_s}))


if __name__ == "__main__":
    main()
