#!/usr/bin/env bash
# Peak memory and tokens/s of CPU training with and without gradient checkpointing
# (use_memory_saving_gradients), one process per mode (crates/torch/examples/checkpoint_bench.rs).
#   benches/checkpointing.sh [MODEL=gpt2|L,H,E] [BATCH=4] [SEQ=256] [STEPS=3]
# PROFILE=release builds the example optimised (the tensor work is libtorch's either way).
set -euo pipefail
cd "$(dirname "$0")/.."
MODEL=${1:-gpt2} BATCH=${2:-4} SEQ=${3:-256} STEPS=${4:-3}
PROFILE=${PROFILE:-dev}
flag=$([ "$PROFILE" = release ] && echo --release || true)
cargo build -q $flag -p gptpipe-torch --example checkpoint_bench
dir=$([ "$PROFILE" = release ] && echo release || echo debug)
for mode in off on; do
  "target/$dir/examples/checkpoint_bench" --checkpointing "$mode" --model "$MODEL" \
    --batch "$BATCH" --seq "$SEQ" --steps "$STEPS"
done
