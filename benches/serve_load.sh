#!/usr/bin/env bash
# Load benchmark of `gptpipe serve` (tch and ONNX Runtime backends) beside a server built the
# way gpt-2-cloud-run is (benches/peers/cloud_run_peer.py: transformers' `generate` behind
# Starlette and uvicorn, one request at a time), on loopback only, on the CPU, same model,
# same request. For each number of concurrent clients, `oha` sends the same number of
# requests to each server, one server running at a time (they are started and stopped
# around each measurement, in an order that rotates from one client count to the next).
#
# Usage: benches/serve_load.sh
# Environment (defaults in brackets):
#   LENGTH [32]           new tokens per request (`truncate: ""`, so exactly that many)
#   CLIENTS ["1 8 32 64"] concurrent clients
#   PER_CLIENT [4]        requests per client; at least MIN_REQUESTS [16] per measurement
#   SERVERS ["peer tch onnx"]
#   MODEL [2,4,128]       layers,heads,width of the random GPT-2 (vocabulary 50257, n_ctx CTX [256])
#   MAX_BATCH [32]        gptpipe serve --max-batch (its default)
#   DEVICE [cpu]          where the peer and the tch server run (cuda on a GPU machine; the
#                         onnx server runs on the CPU whatever this says: leave it out of
#                         SERVERS there)
#   THREADS [0]           CPU threads of every server's model (0: each library's default,
#                         one per core): the peer's torch.set_num_threads, OMP_NUM_THREADS of
#                         `gptpipe serve --backend tch`, GPTPIPE_ORT_THREADS of `--backend onnx`
#   RUN_TIMEOUT [240]     seconds one oha run may take; REQ_TIMEOUT [120] one request
#   PY                    Python with torch + transformers [$GPTPIPE_PYTHON or .venv/bin/python]
#   NO_BUILD=1            use the release binaries already in the target folder
# Tools it installs when absent: oha (crates.io, `cargo install --locked` into .bench-tools/),
# starlette and uvicorn (PyPI, `pip install --target .bench-tools/py`; the peer's Python is
# left untouched). The model (bench-data/serve/) is made once.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
LENGTH=${LENGTH:-32}
CLIENTS=${CLIENTS:-"1 8 32 64"}
PER_CLIENT=${PER_CLIENT:-4}
MIN_REQUESTS=${MIN_REQUESTS:-16}
SERVERS=${SERVERS:-"peer tch onnx"}
MODEL=${MODEL:-2,4,128}
CTX=${CTX:-256}
MAX_BATCH=${MAX_BATCH:-32}
DEVICE=${DEVICE:-cpu}
THREADS=${THREADS:-0}
RUN_TIMEOUT=${RUN_TIMEOUT:-240}
REQ_TIMEOUT=${REQ_TIMEOUT:-120}
PY=${PY:-${GPTPIPE_PYTHON:-$root/.venv/bin/python}}
target=${CARGO_TARGET_DIR:-$root/target}
bin=$target/release/gptpipe
host=127.0.0.1
port=${PORT_BASE:-18480}

# --- tools and binaries -----------------------------------------------------------------
if [ -z "${NO_BUILD:-}" ]; then
  cargo build --release --quiet -p gptpipe -p gptpipe-worker
fi
[ -x "$bin" ] && [ -x "$target/release/gptpipe-worker" ] || { echo "no release build in $target" >&2; exit 1; }
oha=$root/.bench-tools/bin/oha
if [ ! -x "$oha" ]; then
  cargo install oha --locked --quiet --root "$root/.bench-tools"
fi
pydeps=$root/.bench-tools/py
if ! PYTHONPATH=$pydeps "$PY" -c 'import starlette, uvicorn' 2>/dev/null; then
  "$PY" -m pip install --quiet --target "$pydeps" starlette uvicorn
fi
# ONNX Runtime's library: the one of the Python that has onnxruntime, unless set.
if [ -z "${ORT_DYLIB_PATH:-}" ]; then
  ORT_DYLIB_PATH=$("$PY" -c 'import glob, os, onnxruntime as o; print(sorted(glob.glob(os.path.join(os.path.dirname(o.__file__), "capi", "libonnxruntime.so*")))[0])')
  export ORT_DYLIB_PATH
fi

# --- the model, made once: a Hugging Face folder and its ONNX export ---------------------
dir=$root/bench-data/serve/$(echo "$MODEL" | tr , -)-ctx$CTX
model=$dir/hf
if [ ! -f "$model/model.safetensors" ]; then
  "$PY" benches/peers/tiny_model.py "$model" --model "$MODEL" --ctx "$CTX" 2>&1 | grep -v 'Writing model shards'
fi
cat > "$dir/gptpipe.toml" <<'TOML'
[pipeline]
name = "serve-bench"
workdir = "work"

[stages.onnx]
kind = "export"
model = "./hf"
TOML
(cd "$dir" && "$bin" run >/dev/null 2>&1 || "$bin" run)
onnx=$dir/work/onnx

# --- servers ------------------------------------------------------------------------------
server_pid=
server_log=$(mktemp)
stop_server() {
  if [ -n "$server_pid" ]; then
    # Each server runs in its own process group (setsid): gptpipe's worker child included.
    kill -TERM -- "-$server_pid" 2>/dev/null || true
    for _ in $(seq 100); do kill -0 "$server_pid" 2>/dev/null || break; sleep 0.1; done
    kill -KILL -- "-$server_pid" 2>/dev/null || true
    wait "$server_pid" 2>/dev/null || true
    server_pid=
  fi
}
cleanup() { stop_server; rm -f "$server_log"; }
trap cleanup EXIT
trap 'exit 130' INT TERM

start_server() { # NAME
  port=$((port + 1))
  omp=; [ "$THREADS" = 0 ] || omp=$THREADS
  case $1 in
    peer) PYTHONPATH=$pydeps setsid "$PY" benches/peers/cloud_run_peer.py --model-dir "$model" \
            --host $host --port $port --threads "$THREADS" --device "$DEVICE" >"$server_log" 2>&1 & ;;
    tch)  env ${omp:+OMP_NUM_THREADS=$omp} setsid "$bin" serve --model "$model" --backend tch --device "$DEVICE" --host $host \
            --port $port --max-batch "$MAX_BATCH" >"$server_log" 2>&1 & ;;
    onnx) env ${omp:+GPTPIPE_ORT_THREADS=$omp} setsid "$bin" serve --model "$onnx" --backend onnx --device cpu --host $host \
            --port $port --max-batch "$MAX_BATCH" >"$server_log" 2>&1 & ;;
  esac
  server_pid=$!
  for _ in $(seq 600); do
    if curl -sf "http://$host:$port/health" >/dev/null; then return 0; fi
    kill -0 "$server_pid" 2>/dev/null || break
    sleep 0.1
  done
  echo "server $1 did not start:" >&2; cat "$server_log" >&2; exit 1
}

# Tokens the server says it generated (ours: /metrics; the peer: /stats).
tokens() { # NAME
  if [ "$1" = peer ]; then
    curl -sf "http://$host:$port/stats" | "$PY" -c 'import json, sys; print(json.load(sys.stdin)["tokens"])'
  else
    curl -sf "http://$host:$port/metrics" | awk '$1 == "gptpipe_tokens_generated_total" {printf "%d\n", $2}'
  fi
}

body="{\"length\": $LENGTH, \"temperature\": 0.7, \"top_k\": 40, \"prefix\": \"The lighthouse keeper\", \"truncate\": \"\", \"include_prefix\": false}"
load() { # CLIENTS REQUESTS OUT.json
  timeout --kill-after=5 "$RUN_TIMEOUT" "$oha" --no-tui --output-format json -c "$1" -n "$2" \
    -t "${REQ_TIMEOUT}s" -m POST -T application/json -d "$body" "http://$host:$port/" >"$3"
}

results=$(mktemp -d)
trap 'cleanup; rm -rf "$results"' EXIT
date -u +"%Y-%m-%d %H:%M UTC"
echo "$(nproc) cores; model $MODEL (layers,heads,width), n_ctx $CTX; $LENGTH new tokens per request; top_k 40, temperature 0.7; gptpipe serve --max-batch $MAX_BATCH; model threads: ${THREADS/#0/default}; device $DEVICE"
servers=($SERVERS)
i=0
for c in $CLIENTS; do
  n=$((c * PER_CLIENT)); [ "$n" -ge "$MIN_REQUESTS" ] || n=$MIN_REQUESTS
  # Rotate the order of the servers from one client count to the next.
  for j in "${!servers[@]}"; do
    s=${servers[$(((i + j) % ${#servers[@]}))]}
    start_server "$s"
    load 2 4 /dev/null || true   # warm-up: the first calls of a fresh process are slow
    before=$(tokens "$s")
    status=0
    load "$c" "$n" "$results/$s-$c.json" || status=$?
    after=$(tokens "$s")
    echo "$s c=$c n=$n exit=$status tokens=$((after - before))" >&2
    echo "$((after - before))" >"$results/$s-$c.tokens"
    stop_server
  done
  i=$((i + 1))
done

"$PY" - "$results" "$LENGTH" "$SERVERS" "$CLIENTS" <<'PY'
import json, os, sys

results, length = sys.argv[1], int(sys.argv[2])
servers, clients = sys.argv[3].split(), [int(c) for c in sys.argv[4].split()]
rows = {}
print()
print("| server | clients | requests | ok | req/s | tokens/s | p50 ms | p99 ms | tokens/request |")
print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
for c in clients:
    for s in servers:
        path = os.path.join(results, f"{s}-{c}.json")
        try:
            r = json.load(open(path))
        except Exception:
            print(f"| {s} | {c} | - | run failed or timed out | | | | | |")
            continue
        codes = r.get("statusCodeDistribution", {})
        ok = int(codes.get("200", 0))
        total = sum(int(v) for v in codes.values()) + sum(int(v) for v in r.get("errorDistribution", {}).values())
        secs = r["summary"]["total"]
        lat = r["latencyPercentiles"]
        tok = int(open(os.path.join(results, f"{s}-{c}.tokens")).read() or 0)
        row = dict(rps=ok / secs, tps=ok * length / secs, p50=lat["p50"] * 1e3, p99=lat["p99"] * 1e3)
        rows[s, c] = row
        other = {k: v for k, v in codes.items() if k != "200"}
        other.update(r.get("errorDistribution", {}))
        note = f" ({other})" if other else ""
        print(f"| {s} | {c} | {total} | {ok}{note} | {row['rps']:.1f} | {row['tps']:,.0f} | "
              f"{row['p50']:.0f} | {row['p99']:.0f} | {tok / ok if ok else 0:.1f} |")
if "peer" in servers:
    print()
    print("| clients | " + " | ".join(f"{s}/peer tokens/s | {s}/peer p99" for s in servers if s != "peer") + " |")
    print("| --- |" + " --- | --- |" * (len(servers) - 1))
    for c in clients:
        cells = []
        for s in servers:
            if s == "peer":
                continue
            a, b = rows.get((s, c)), rows.get(("peer", c))
            if a and b:
                cells += [f"{a['tps'] / b['tps']:.1f}x", f"{a['p99'] / b['p99']:.2f}"]
            else:
                cells += ["-", "-"]
        print(f"| {c} | " + " | ".join(cells) + " |")
    for s in servers:
        a, b = rows.get((s, 32)), rows.get(("peer", 32))
        if s != "peer" and a and b:
            met = a["tps"] >= 10 * b["tps"] and a["p99"] < b["p99"]
            print(f"goal at 32 clients (>= 10x the peer's tokens/s, p99 below the peer's), {s}: "
                  f"{'met' if met else 'NOT met'} ({a['tps'] / b['tps']:.1f}x, p99 {a['p99']:.0f} vs {b['p99']:.0f} ms)")
PY
