#!/usr/bin/env bash
# The novelty index (issue 14): build time and query time of gptpipe's index over ROWS
# training rows and SAMPLES samples, beside a plain Python baseline in the same run (a set
# for exact copies, rapidfuzz for the nearest row, difflib for the longest shared run, the
# last two on a subset, extrapolated), which also checks gptpipe's answers.
#
# usage: benches/novelty.sh [ROWS] [SAMPLES] [RAPIDFUZZ_SUBSET] [DIFFLIB_SUBSET]
# defaults: 100000 10000 200 3. Needs .bench-venv with rapidfuzz
# (python3 -m venv .bench-venv && .bench-venv/bin/pip install -r benches/requirements.txt).
set -euo pipefail
cd "$(dirname "$0")/.."
ROWS=${1:-100000} SAMPLES=${2:-10000} FUZZ=${3:-200} DIFF=${4:-3}
PY=.bench-venv/bin/python
[ -x "$PY" ] || { python3 -m venv .bench-venv && "$PY" -m pip install --quiet -r benches/requirements.txt; }
"$PY" -c 'import rapidfuzz' 2>/dev/null || "$PY" -m pip install --quiet -r benches/requirements.txt

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
"$PY" benches/novelty_data.py "$ROWS" "$SAMPLES" "$work/rows.txt" "$work/samples.txt"
cargo build --quiet --release -p gptpipe-generate --example novelty_bench
ours=$(target/release/examples/novelty_bench "$work/rows.txt" "$work/samples.txt" --out "$work/ours.jsonl")
theirs=$("$PY" benches/novelty_baseline.py "$work/rows.txt" "$work/samples.txt" "$work/ours.jsonl" "$FUZZ" "$DIFF")
echo "gptpipe:  $ours"
echo "baseline: $theirs"
"$PY" - "$ours" "$theirs" <<'PY'
import json, sys
o, t = json.loads(sys.argv[1]), json.loads(sys.argv[2])
total = o["build_s"] + o["query_s"]
print(f"rows {o['rows']}, samples {o['samples']}: gptpipe build {o['build_s']:.2f} s "
      f"(cached load {o['load_cached_s']:.3f} s), query {o['query_s']:.2f} s "
      f"({o['query_us_per_sample']:.0f} us/sample), index file {o['index_file_mb']:.1f} MB, "
      f"peak RSS {o['peak_rss_mb']:.0f} MB")
print(f"baseline: set {t['set_build_s'] + t['set_query_s']:.2f} s (copies only); rapidfuzz "
      f"nearest {t['rapidfuzz_nearest_s_extrapolated']:.0f} s; difflib longest run "
      f"{t['difflib_longest_run_s_extrapolated']:.0f} s (extrapolated)")
print(f"ratio: rapidfuzz / gptpipe (build + query) {t['rapidfuzz_nearest_s_extrapolated'] / total:.0f}x, "
      f"difflib / gptpipe {t['difflib_longest_run_s_extrapolated'] / total:.0f}x")
PY
