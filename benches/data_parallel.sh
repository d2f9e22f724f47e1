#!/usr/bin/env bash
# Data-parallel scaling on the CPU (issue 13): gptpipe's `devices = 2` against one rank at
# the same global batch, beside PyTorch's DistributedDataParallel (gloo) on the same
# libtorch. See benches/data_parallel.py.
#   benches/data_parallel.sh [--steps N] [--repeats N] [--batch N]
# BIN=path/to/gptpipe skips the release build. About 5 minutes on a 2-core machine.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ -z "${BIN:-}" ]; then
  cargo build --release --quiet -p gptpipe -p gptpipe-worker
  BIN=${CARGO_TARGET_DIR:-target}/release/gptpipe
fi
exec .venv/bin/python benches/data_parallel.py --gptpipe "$(realpath "$BIN")" "$@"
