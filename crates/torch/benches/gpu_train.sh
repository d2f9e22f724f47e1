#!/usr/bin/env bash
# GPU training throughput (run on the GPU machine): GPT-2 124M random init, T=1024, bf16
# compute with fp32 master weights, batch 16, 32 and 64, then the transformers anchor (eager
# and torch.compile; SKIP_COMPILE=1 skips the latter) in the same run. Build here first:  cargo build --release -p gptpipe-torch --example train_bench
# and copy target/release/examples/train_bench to the GPU machine beside this script.
set -euo pipefail
BIN=${BIN:-target/release/examples/train_bench}
export LD_LIBRARY_PATH=${LD_LIBRARY_PATH:-/opt/torch/.venv/lib/python3.12/site-packages/torch/lib}
"$BIN" --device cuda --model gpt2 --batch 16 --seq 1024 --steps 20 --warmup 4 --precision bf16 --breakdown
for b in 32 64; do
  "$BIN" --device cuda --model gpt2 --batch "$b" --seq 1024 --steps 20 --warmup 4 --precision bf16
done
for a in "${ANCHOR:-}" shared/bench/hf_anchor_gpu.py ../shared/bench/hf_anchor_gpu.py; do
  if [ -n "$a" ] && [ -f "$a" ]; then
    python3 "$a" ${SKIP_COMPILE:+--skip-compile}
    break
  fi
done
