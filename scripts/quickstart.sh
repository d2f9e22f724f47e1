#!/usr/bin/env bash
# The quickstart: installs libtorch into .venv if needed, builds gptpipe, and runs
# pipelines/quickstart.toml (prepare a CSV, train a tiny GPT-2 on CPU, write samples).
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh
cargo build --release --quiet --workspace
./target/release/gptpipe run pipelines/quickstart.toml "$@"
echo
echo "Samples (runs/quickstart/samples/samples.txt):"
head -n 20 runs/quickstart/samples/samples.txt
