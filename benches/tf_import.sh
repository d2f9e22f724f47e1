#!/usr/bin/env bash
# Time to import a 124M-shaped gpt-2-simple checkpoint (random weights written by
# TensorFlow through gpt-2-simple's model, ~500 MB): gptpipe's reader (no TensorFlow)
# beside TensorFlow's own restore, in the same run, best of REPEATS each, files in the page
# cache for both (each side reads once before timing).
#
#   benches/tf_import.sh [FOLDER] [REPEATS]
#
# Needs .tf-venv (gpt-2-simple 0.8.1, TensorFlow 2.15; or GPTPIPE_TF_PYTHON) and a release
# build of the example (made here).
set -euo pipefail
cd "$(dirname "$0")/.."
DIR=${1:-${TMPDIR:-/tmp}/gptpipe-tf-import}
REPEATS=${2:-3}
PY=${GPTPIPE_TF_PYTHON:-.tf-venv/bin/python}
CKPT="$DIR/models/tiny"
if [ ! -f "$CKPT/model.ckpt.index" ]; then
  echo "writing a 124M-shaped checkpoint into $DIR ..." >&2
  "$PY" tests/fixtures/gpt2_simple/make_checkpoint.py "$DIR" \
    --n-layer 12 --n-head 12 --n-embd 768 --no-finetune >/dev/null 2>&1
fi
cargo build --release -q -p gptpipe-hf --example read_tf_checkpoint
ours=$(target/release/examples/read_tf_checkpoint "$CKPT" "$((REPEATS + 1))")
theirs=$(OMP_NUM_THREADS=${OMP_NUM_THREADS:-} "$PY" benches/peers/tf_restore.py "$CKPT" "$((REPEATS + 1))")
echo "$ours"
echo "$theirs"
python3 - "$ours" "$theirs" <<'PY'
import json, sys
o, t = (json.loads(a) for a in sys.argv[1:3])
mb = o["bytes"] / 1e6
print(f"{mb:.0f} MB: gptpipe {o['seconds']:.3f} s ({mb / o['seconds']:.0f} MB/s); "
      f"TensorFlow restore {t['seconds']:.3f} s ({mb / t['seconds']:.0f} MB/s), "
      f"initializer + restore (load_gpt2) {t['load_gpt2_seconds']:.3f} s; "
      f"gptpipe / restore = {o['seconds'] / t['seconds']:.2f}, "
      f"gptpipe / load_gpt2 = {o['seconds'] / t['load_gpt2_seconds']:.2f}")
PY
