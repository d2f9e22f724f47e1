#!/usr/bin/env bash
# GPU generation speed, run on the GPU machine from the repository root: our tch backend
# (the generate bench's --gpu mode: GPT-2 124M random init, bf16, batch 1 x 256 and batch
# 20 x 1000 new tokens, each decoding part switched on in turn) and then the peer
# (benches/peers/hf_generate.py: transformers' generate, bf16 weights, same shapes and
# sampling settings) in the same run. Build here first (crates/torch/benches/README.md, "GPU"):
#   bin=$(cargo bench -p gptpipe-torch --bench generate --no-run 2>&1 | sed -n 's/.*Executable .*(\(.*\))/\1/p')
#   strip -o target/release/generate-gpu "$bin"
# then carry that file and run  BIN=target/release/generate-gpu crates/torch/benches/gpu_generate.sh
# Extra arguments go to ours (e.g. --parts). BATCH (1,20) and NEW (256,1000) set the peer's runs.
set -euo pipefail
cd "$(dirname "$0")/../../.."
BIN=${BIN:-target/release/generate-gpu}
PY=${PY:-python3}
export LD_LIBRARY_PATH=${LD_LIBRARY_PATH:-/opt/torch/.venv/lib/python3.12/site-packages/torch/lib}
"$BIN" --gpu "$@"
"$PY" benches/peers/hf_generate.py --device cuda --model gpt2 --batch "${BATCH:-1,20}" --new "${NEW:-256,1000}"
