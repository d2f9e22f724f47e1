#!/usr/bin/env bash
# The test suite: installs the reference stack into .venv if needed (PyTorch, transformers,
# ONNX Runtime), then runs every test of the workspace, and builds and tests the
# libtorch-free (ONNX-only) variant of the binary.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh
export GPTPIPE_PYTHON="$PWD/.venv/bin/python"
export GPTPIPE_TF_PYTHON="$PWD/.tf-venv/bin/python"
# The serve tests' clients (openai, playwright + chromium, curl) must be there: a missing one
# fails its test instead of skipping it.
export GPTPIPE_TEST_CLIENTS=require
# Build both binaries first: the integration tests run gptpipe, which starts gptpipe-worker.
cargo build --workspace
cargo test --workspace "$@"
cargo test --no-default-features --features onnx -p gptpipe "$@"
