#!/usr/bin/env python3
"""Data-parallel scaling on the CPU (issue 13): tokens/s of a finetune on 1 rank and on 2
ranks at the same global batch, gptpipe (`devices = N`, libtorch's Gloo collectives) beside
PyTorch's own DistributedDataParallel (gloo, the same libtorch), alternated, medians.

  data_parallel.py --gptpipe BIN [--steps 12] [--repeats 3] [--batch 4]

The model: 4 layers, 4 heads, 256 wide, context 128, GPT-2's vocabulary, random weights;
batch `--batch` windows per step (each rank its share), no accumulation, AdamW. Threads are
each side's default: one rank uses every core, two ranks share them. tokens/s is taken
over the steps after the first (start-up and the first step's set-up excluded), from
gptpipe's own progress events and from timestamps in the PyTorch script.
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
CFG = dict(n_layer=4, n_head=4, n_embd=256, n_ctx=128, vocab_size=50257)


def gptpipe(binary, ranks, steps, batch, csv):
    with tempfile.TemporaryDirectory() as d:
        m = CFG
        toml = f"""[pipeline]
name = "dp"
workdir = "work"
[stages.titles]
kind = "prepare"
inputs = ["{csv}"]
[stages.train]
kind = "finetune"
dataset = "@titles"
model = {{ n_layer = {m['n_layer']}, n_head = {m['n_head']}, n_embd = {m['n_embd']}, n_ctx = {m['n_ctx']} }}
steps = {steps}
batch_size = {batch}
accumulate_gradients = 1
optimizer = "adamw"
device = "cpu"
sample_every = 0
save_every = 0
print_every = {steps - 1}
devices = {ranks}
"""
        with open(os.path.join(d, "p.toml"), "w") as f:
            f.write(toml)
        subprocess.run([binary, "run", "p.toml", "titles"], cwd=d, check=True,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        out = subprocess.run([binary, "run", "p.toml", "--json"], cwd=d, check=True,
                             capture_output=True, text=True).stdout
        # Progress at step 1, then at the last step: the second covers steps 2..=last.
        progress = [json.loads(l) for l in out.splitlines() if '"stage_progress"' in l]
        return float(progress[-1]["tokens_per_s"])


def torch_ddp(ranks, steps, batch):
    out = subprocess.run([sys.executable, os.path.join(HERE, "data_parallel_torch.py"),
                          str(ranks), str(steps), str(batch), json.dumps(CFG)],
                         check=True, capture_output=True, text=True).stdout
    return float(json.loads(out.strip().splitlines()[-1])["tokens_per_s"])


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--gptpipe", required=True)
    ap.add_argument("--steps", type=int, default=12)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--batch", type=int, default=4)
    a = ap.parse_args()
    csv = os.path.abspath(os.path.join(HERE, "..", "examples", "data", "stories.csv"))
    runs = {k: [] for k in ["gptpipe 1", "gptpipe 2", "torch 1", "torch 2"]}
    for r in range(a.repeats):
        for ranks in (1, 2):
            runs[f"gptpipe {ranks}"].append(gptpipe(a.gptpipe, ranks, a.steps, a.batch, csv))
            runs[f"torch {ranks}"].append(torch_ddp(ranks, a.steps, a.batch))
        print(f"repeat {r + 1}: " + ", ".join(f"{k} {v[-1]:.0f}" for k, v in runs.items()),
              file=sys.stderr, flush=True)
    med = {k: statistics.median(v) for k, v in runs.items()}
    print(f"cores: {os.cpu_count()}, global batch {a.batch} x {CFG['n_ctx']} tokens, "
          f"{a.steps} steps, medians of {a.repeats} alternated runs (tokens/s)")
    print(f"{'':24}{'1 rank':>10}{'2 ranks':>10}{'2 / 1':>8}")
    for side in ("gptpipe", "torch"):
        name = "gptpipe devices" if side == "gptpipe" else "PyTorch DDP (gloo)"
        one, two = med[f"{side} 1"], med[f"{side} 2"]
        print(f"{name:24}{one:>10.0f}{two:>10.0f}{two / one:>7.2f}x")
    print(f"{'gptpipe / PyTorch':24}{med['gptpipe 1'] / med['torch 1']:>9.2f}x"
          f"{med['gptpipe 2'] / med['torch 2']:>9.2f}x")


if __name__ == "__main__":
    main()
