#!/usr/bin/env bash
# CPU training throughput: ours (tch) beside transformers, same model, batch, T, steps and
# thread count, in the same run; the peer is benches/peers/hf_train.py.
# Usage: crates/torch/benches/cpu_train.sh [MODEL] [BATCH] [SEQ] [STEPS] [THREADS]
# (WARMUP=3 warm-up steps; PROFILE=dev skips the release build.)
set -euo pipefail
cd "$(dirname "$0")/../../.."
MODEL=${1:-4,4,256} BATCH=${2:-4} SEQ=${3:-128} STEPS=${4:-10} THREADS=${5:-2} WARMUP=${WARMUP:-3}
PY=${GPTPIPE_PYTHON:-.venv/bin/python}
PROFILE=${PROFILE:-release}
if [ "$PROFILE" = release ]; then cargo build --release -q -p gptpipe-torch --example train_bench; else cargo build -q -p gptpipe-torch --example train_bench; fi
BIN=${CARGO_TARGET_DIR:-target}/$([ "$PROFILE" = release ] && echo release || echo debug)/examples/train_bench
ours=$("$BIN" --device cpu --model "$MODEL" --batch "$BATCH" --seq "$SEQ" --steps "$STEPS" --warmup "$WARMUP" --threads "$THREADS")
theirs=$("$PY" benches/peers/hf_train.py --device cpu --model "$MODEL" --batch "$BATCH" --seq "$SEQ" --steps "$STEPS" --warmup "$WARMUP" --threads "$THREADS")
echo "$ours"
echo "$theirs"
"$PY" -c 'import json,sys; a,b=json.loads(sys.argv[1]),json.loads(sys.argv[2]); print("ours/transformers tokens/s ratio: %.2f" % (a["tokens_per_s"]/b["tokens_per_s"]))' "$ours" "$theirs"
