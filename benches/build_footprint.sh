#!/usr/bin/env bash
# What the test command builds, from a fresh target folder: compile CPU time, wall time and
# the target folder's size (peak, sampled every 10 s), for the working tree or a revision.
# Usage: benches/build_footprint.sh [REV]   e.g. ac84c70 for the build before issue 11
# (it checks REV out in a temporary worktree; the working tree is left as it is).
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
scratch=$(mktemp -d)
trap 'kill "${sampler:-}" 2>/dev/null || true; git -C "$root" worktree remove --force "$scratch/tree" 2>/dev/null || true; rm -rf "$scratch"' EXIT
tree=$root
if [ $# -gt 0 ]; then
  git worktree add -q --detach "$scratch/tree" "$1"
  tree=$scratch/tree
fi
export CARGO_TARGET_DIR=$scratch/target LIBTORCH=${LIBTORCH:-$root/.venv/libtorch}
echo 0 > "$scratch/peak"
( while sleep 10; do
    s=$(du -sb "$CARGO_TARGET_DIR" 2>/dev/null | cut -f1)
    [ "${s:-0}" -gt "$(cat "$scratch/peak")" ] && echo "$s" > "$scratch/peak"
  done ) &
sampler=$!
cd "$tree"
/usr/bin/time -f "cpu %U s user + %S s sys, wall %e s" -o "$scratch/time" bash -c \
  'cargo build --workspace -q && cargo test --workspace --no-run -q && cargo test --no-default-features --features onnx -p gptpipe --no-run -q' \
  > "$scratch/log" 2>&1 || { tail -20 "$scratch/log"; exit 1; }
final=$(du -sb "$CARGO_TARGET_DIR" | cut -f1)
peak=$(cat "$scratch/peak"); [ "$final" -gt "$peak" ] && peak=$final
echo "revision: $(git -C "$tree" rev-parse --short HEAD)$( [ $# -gt 0 ] || echo ' (working tree)')"
cat "$scratch/time"
echo "target peak: $((peak / 1000000)) MB; executables in deps: $(find "$CARGO_TARGET_DIR/debug/deps" -maxdepth 1 -type f -executable ! -name '*.so' | wc -l)"
