#!/usr/bin/env bash
# Installs what gptpipe builds and tests against into a project-local virtual environment
# (.venv): PyTorch 2.11.0 (the libtorch tch 0.24 links), ONNX Runtime, the Python
# reference implementations the tests compare with, and the clients `gptpipe serve` is
# tested with (openai; playwright, which drives Debian's chromium: its own browser download
# is never used). gpt-2-simple and its TensorFlow go into a venv of their own (.tf-venv:
# see scripts/requirements-tf.txt). Safe to run again: it skips what is there.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
if ! .venv/bin/python -c "import torch, transformers, onnx, onnxruntime, safetensors, numpy, openai, playwright" 2>/dev/null; then
  .venv/bin/pip install --quiet --disable-pip-version-check --no-cache-dir -r scripts/requirements.txt
fi
ln -sfn "$(.venv/bin/python -c 'import os, torch; print(os.path.dirname(torch.__file__))')" .venv/libtorch
ORT_LIB=$(.venv/bin/python -c 'import glob, os, onnxruntime; print(sorted(glob.glob(os.path.join(os.path.dirname(onnxruntime.__file__), "capi", "libonnxruntime.so*")))[-1])')
ln -sfn "$ORT_LIB" .venv/libonnxruntime.so
if [ ! -x .tf-venv/bin/python ]; then
  "$PY" -m venv .tf-venv
fi
if ! .tf-venv/bin/python -c "import gpt_2_simple, tensorflow" 2>/dev/null; then
  .tf-venv/bin/pip install --quiet --disable-pip-version-check --no-cache-dir -r scripts/requirements-tf.txt
  .tf-venv/bin/pip install --quiet --disable-pip-version-check --no-cache-dir --no-deps gpt-2-simple==0.8.1
fi
