#!/usr/bin/env bash
# A no-op rerun of an up-to-date pipeline whose inputs total about 1 GB: gptpipe beside
# `dvc repro` (PyPI dvc, in .bench-venv) on the same inputs, timed by farm-bench.
# Usage: benches/noop_rerun.sh [SIZE_MB]   (default 1024)
set -euo pipefail
cd "$(dirname "$0")/.."
size_mb=${1:-1024}
dir=bench-data/noop
mkdir -p "$dir/data"
cargo build --release --quiet
bin=$PWD/target/release/gptpipe
if [ ! -x .bench-venv/bin/dvc ]; then
  python3 -m venv .bench-venv && .bench-venv/bin/pip install --quiet dvc
fi
# Ten CSV files of short titles, generated once.
python3 - "$dir/data" "$size_mb" <<'PY'
import os, random, sys
out, total = sys.argv[1], int(sys.argv[2]) << 20
words = "the a lighthouse keeper tired robot winter garden paper boat quiet library moon clock fox snow rain bread stars".split()
per = total // 10
for i in range(10):
    path = os.path.join(out, f"part{i}.csv")
    if os.path.exists(path) and os.path.getsize(path) >= per:
        continue
    rnd = random.Random(i)
    with open(path, "w") as f:
        f.write("title\n")
        n = 0
        while n < per:
            line = " ".join(rnd.choice(words) for _ in range(rnd.randint(3, 12))) + "\n"
            f.write(line)
            n += len(line)
PY
cat > "$dir/gptpipe.toml" <<'TOML'
[pipeline]
name = "noop"
workdir = "work"

[stages.titles]
kind = "prepare"
inputs = ["data/*.csv"]
TOML
(cd "$dir" && "$bin" run >/dev/null 2>&1 || "$bin" run)
# dvc: the same inputs as dependencies of one stage.
if [ ! -d "$dir/.dvc" ]; then
  (cd "$dir" && ../../.bench-venv/bin/dvc init --no-scm -q)
fi
cat > "$dir/dvc.yaml" <<'YAML'
stages:
  titles:
    cmd: cat data/*.csv | wc -l > dvc-out.txt
    deps:
      - data
    outs:
      - dvc-out.txt
YAML
(cd "$dir" && ../../.bench-venv/bin/dvc repro -q >/dev/null)
du -sh "$dir/data"
cd "$dir"
farm-bench -n 10 --warmup 2 --vs "$PWD/../../.bench-venv/bin/dvc repro -q" -- "$bin" run
