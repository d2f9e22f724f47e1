#!/usr/bin/env bash
# CPU generation speed of the ONNX Runtime backend, the tch backend and transformers, on
# the same random GPT-2 shape, one bench right after the other. Extra arguments go to
# both benches (e.g. --layers 12 --heads 12 --embd 768 --new 64).
set -euo pipefail
cd "$(dirname "$0")/../../.."
date -u
cargo bench -q -p gptpipe-onnx --bench generate -- "$@" 2>&1 | grep -v -e '^Writing' -e 'it/s]'
cargo bench -q -p gptpipe-torch --bench generate -- "$@" 2>&1 | grep -v -e '^Writing' -e 'it/s]'
