#!/usr/bin/env bash
# GPU training throughput, run on the GPU machine from the repository root: GPT-2 124M
# random init, T=1024, bf16 compute with fp32 master weights; ours at batch 16 (with the
# forward/backward/optimizer breakdown), 32 and 64, then the peer (benches/peers/hf_train.py:
# transformers eager at batch 16 and 32, and under torch.compile at batch 32;
# SKIP_COMPILE=1 skips the latter) in the same run.
# Build here first (see crates/torch/benches/README.md, "GPU"):
#   cargo build --release -p gptpipe-torch --example train_bench
#   strip -o target/release/examples/train_bench-gpu target/release/examples/train_bench
# then carry that file and run  BIN=target/release/examples/train_bench-gpu crates/torch/benches/gpu_train.sh
# STEPS (20) and WARMUP (4) apply to both; BATCHES (16 32 64) to ours, PEER_BATCHES (16,32)
# and COMPILE_BATCHES (32) to the peer.
set -euo pipefail
cd "$(dirname "$0")/../../.."
BIN=${BIN:-target/release/examples/train_bench}
PY=${PY:-python3}
STEPS=${STEPS:-20} WARMUP=${WARMUP:-4} BATCHES=${BATCHES:-16 32 64} PEER_BATCHES=${PEER_BATCHES:-16,32} COMPILE_BATCHES=${COMPILE_BATCHES:-32}
MODEL=${MODEL:-gpt2} SEQ=${SEQ:-1024}
# PyTorch 2.11.0's libraries on the GPU machine (the Python environment that has transformers).
export LD_LIBRARY_PATH=${LD_LIBRARY_PATH:-/opt/torch/.venv/lib/python3.12/site-packages/torch/lib}
first=1
for b in $BATCHES; do
  "$BIN" --device cuda --model "$MODEL" --batch "$b" --seq "$SEQ" --steps "$STEPS" --warmup "$WARMUP" \
    --precision bf16 ${first:+--breakdown}
  first=
done
peer=(benches/peers/hf_train.py --device cuda --model "$MODEL" --seq "$SEQ" --steps "$STEPS" --warmup "$WARMUP" --precision bf16)
"$PY" "${peer[@]}" --batch "$PEER_BATCHES"
if [ -z "${SKIP_COMPILE:-}" ]; then
  "$PY" "${peer[@]}" --batch "$COMPILE_BATCHES" --compile
fi
