#!/usr/bin/env bash
# The test suite: installs the reference stack into .venv if needed (PyTorch, transformers,
# ONNX Runtime), then runs every test of the workspace, and builds and tests the
# libtorch-free (ONNX-only) variant of the binary.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh
export GPTPIPE_PYTHON="$PWD/.venv/bin/python"
cargo test --workspace "$@"
cargo test --no-default-features --features onnx -p gptpipe "$@"
