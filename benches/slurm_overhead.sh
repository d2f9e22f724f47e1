#!/usr/bin/env bash
# The Slurm executor's overhead per stage against the local executor (issue 13), on a
# one-node cluster of Debian's slurm-wlm and munge started here on other ports than the
# tests' (as root, as CI runs). See benches/slurm_overhead.py for what is timed.
#   benches/slurm_overhead.sh [--stages N] [--repeats N]
# GPTPIPE_SLURM_POLL_MS sets the executor's polling interval (default 1000 ms).
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --quiet -p gptpipe -p gptpipe-worker
dir=${SLURM_BENCH_DIR:-/tmp/gptpipe-bench-slurm}
export SLURMCTLD_PORT=${SLURMCTLD_PORT:-6917} SLURMD_PORT=${SLURMD_PORT:-6918}
trap 'scripts/slurm-cluster.sh stop "$dir"' EXIT
scripts/slurm-cluster.sh start "$dir" >&2
python3 benches/slurm_overhead.py --gptpipe "$PWD/target/release/gptpipe" \
  --conf "$dir/slurm.conf" "$@"
