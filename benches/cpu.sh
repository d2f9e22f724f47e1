#!/usr/bin/env bash
# The CPU benchmark of issue 16: gptpipe beside gpt-2-simple's own finetune and generate,
# transformers and a plain PyTorch loop, on one tiny model made once by gpt-2-simple's code
# (4 layers, 4 heads, 256 wide, context 128) and one CSV of titles; idle and with two busy
# processes beside it; default threads and one thread; medians of alternated runs.
#
#   benches/cpu.sh [--quick] [bench.py options: --repeats N --steps N --length N
#                   --what finetune,generate --conditions idle,loaded --threads default,1]
#
# Needs .venv (scripts/setup.sh: PyTorch, transformers) and .tf-venv (gpt-2-simple 0.8.1,
# tensorflow-cpu 2.15.1). The model and data go to $CPU_BENCH_DIR (default
# bench-data/cpu), made once. BIN=path/to/gptpipe skips the release build.
# Full run: about 15 minutes on an idle 2-core machine; --quick: about 3.
set -euo pipefail
cd "$(dirname "$0")/.."
DIR=${CPU_BENCH_DIR:-bench-data/cpu}
if [ -z "${BIN:-}" ]; then
  cargo build --release --quiet -p gptpipe -p gptpipe-worker
  BIN=${CARGO_TARGET_DIR:-target}/release/gptpipe
fi
if [ ! -f "$DIR/hf/model.safetensors" ]; then
  mkdir -p "$DIR"
  .tf-venv/bin/python benches/cpu/make_model.py "$DIR"
fi
[ -f "$DIR/titles.csv" ] || cp examples/data/stories.csv "$DIR/titles.csv"
exec .venv/bin/python benches/cpu/bench.py --data "$DIR" --gptpipe "$BIN" "$@"
