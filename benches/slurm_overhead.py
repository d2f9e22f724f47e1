"""The Slurm executor's overhead per stage, against the local executor on the same pipeline.

    benches/slurm_overhead.sh [--stages N] [--repeats N]

A chain of N prepare stages (each reads the one before it, so they run one after another;
a prepare stage of a few rows takes milliseconds, so what is timed is the executor) runs
with `--force`, alternately with `--executor local` and `--executor slurm` on a one-node
cluster started for the bench (scripts/slurm-cluster.sh). Every `--json` event is
timestamped as it arrives. Per stage:

- ready -> ended: from `stage_started` (the runner has the stage ready and submits it) to
  the log event "Slurm job N: COMPLETED" (the runner has seen the job end: queueing,
  starting, running the stage and the polling interval);
- ended -> published: from that event to `stage_finished` (the runner relayed the job's
  last events and published its output);
- per stage: the run's wall time over N.

Prints the medians, local against slurm, and the difference per stage (the overhead).
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

PIPELINE_HEAD = """[pipeline]
name = "overhead"
workdir = "work"
"""


def pipeline(n):
    text = PIPELINE_HEAD
    for i in range(n):
        src = "rows.csv" if i == 0 else f"@s{i - 1}"
        text += f'\n[stages.s{i}]\nkind = "prepare"\ninputs = ["{src}"]\n'
    return text


def timed_run(gptpipe, folder, executor, env):
    cmd = [gptpipe, "run", "p.toml", "--force", "--json", "--executor", executor]
    start = time.monotonic()
    proc = subprocess.Popen(cmd, cwd=folder, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    events = []
    for line in proc.stdout:
        now = time.monotonic() - start
        try:
            events.append((now, json.loads(line)))
        except json.JSONDecodeError:
            pass
    err = proc.stderr.read()
    if proc.wait() != 0:
        sys.exit(f"{' '.join(cmd)} failed:\n{err}")
    return time.monotonic() - start, events


def phases(events):
    """(ready->ended, ended->published) per stage, from a slurm run's events."""
    started, ended, out = {}, {}, []
    for t, e in events:
        stage = e.get("stage")
        kind = e.get("event")
        if kind == "stage_started":
            started[stage] = t
        elif kind == "stage_log" and ": COMPLETED" in e.get("message", ""):
            ended[stage] = t
        elif kind == "stage_finished" and stage in ended:
            out.append((ended[stage] - started[stage], t - ended[stage]))
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--gptpipe", required=True)
    ap.add_argument("--conf", required=True, help="SLURM_CONF of the running cluster")
    ap.add_argument("--stages", type=int, default=6)
    ap.add_argument("--repeats", type=int, default=3)
    a = ap.parse_args()
    folder = tempfile.mkdtemp(prefix="gptpipe-slurm-bench-")
    with open(os.path.join(folder, "rows.csv"), "w") as f:
        f.write("title\n" + "".join(f"row {i}\n" for i in range(20)))
    with open(os.path.join(folder, "p.toml"), "w") as f:
        f.write(pipeline(a.stages))
    env = dict(os.environ, SLURM_CONF=a.conf)
    per_stage = {"local": [], "slurm": []}
    ready, publish = [], []
    for r in range(a.repeats):
        for executor in ("local", "slurm"):
            wall, events = timed_run(a.gptpipe, folder, executor, env)
            finished = sum(1 for _, e in events if e.get("event") == "stage_finished")
            assert finished == a.stages, f"{finished} of {a.stages} stages ran ({executor})"
            per_stage[executor].append(wall / a.stages)
            if executor == "slurm":
                p = phases(events)
                assert len(p) == a.stages, f"no COMPLETED event for some stage: {p}"
                ready += [x for x, _ in p]
                publish += [y for _, y in p]
            print(f"  run {r + 1} {executor:5}: {wall:6.2f} s for {a.stages} stages",
                  file=sys.stderr)
    med = {k: statistics.median(v) for k, v in per_stage.items()}
    poll = os.environ.get("GPTPIPE_SLURM_POLL_MS", "1000")
    print(f"\n{a.stages} chained prepare stages, {a.repeats} alternated runs each, "
          f"GPTPIPE_SLURM_POLL_MS={poll}; medians")
    print("| executor | seconds per stage | ready -> job seen ended | ended -> published |")
    print("| --- | --- | --- | --- |")
    print(f"| local | {med['local']:.3f} | | |")
    print(f"| slurm | {med['slurm']:.3f} | {statistics.median(ready):.3f} | "
          f"{statistics.median(publish):.3f} |")
    print(f"overhead of a stage as a Slurm job: {med['slurm'] - med['local']:.3f} s "
          f"({med['slurm'] / med['local']:.1f}x the local executor's time per stage)")


if __name__ == "__main__":
    main()
