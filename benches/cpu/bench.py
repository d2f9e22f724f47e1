#!/usr/bin/env python3
"""The CPU benchmark (issue 16): gptpipe beside gpt-2-simple's own code, transformers and a
plain PyTorch loop, on one model and one dataset, idle and loaded, default threads and one
thread, alternating, medians. `benches/cpu.sh` builds what it needs and calls this.

  bench.py --data DIR [--quick] [--repeats N] [--steps N] [--length N]
           [--what finetune,generate] [--conditions idle,loaded] [--threads default,1]

DIR holds the model (`models/tiny` for gpt-2-simple, `hf/` for the others: made once by
`make_model.py`) and `titles.csv`. Each measurement is its own process, started the way a
user starts it:

- finetune, 5 accumulated micro-batches of 1 window of n_ctx tokens per step, lr 1e-4:
  `gptpipe run --json` of a finetune stage (AdamW, weight decay 0.01) on a prepare stage of
  the CSV (wrapped in `<|startoftext|>`/`<|endoftext|>`); gpt-2-simple's `finetune` (its
  Adam; `gpt2s.py`); the plain PyTorch loop (`torch_loop.py train`, AdamW). Every step
  prints a line, timestamped here as it arrives: steps/s is measured from the end of step 1
  to the end of the last step (so start-up and the first step are not in it; both are
  shown apart, as `first` = process start to the end of step 1, and `wall` = the whole
  process).
- generate, `<|startoftext|>` prompt, top_k 40, temperature 0.7, exactly --length new
  tokens per row, batch 1 and 20: `gptpipe generate` of two batches, text output (the
  first batch is the warm-up; the second is timed from the first batch's last sample
  delimiter on stdout to its own);
  gpt-2-simple's `generate` and transformers' `generate`, each timed over one call after an
  8-token warm-up call (gpt2s.py, torch_loop.py generate).

Loaded: two processes that spin (`while True: pass`) run beside the measurement. One
thread: `--threads 1` for gptpipe, `torch.set_num_threads(1)` for PyTorch and
transformers, `start_tf_sess(threads=1)` for gpt-2-simple. Default: nothing set by the
bench; gptpipe's worker then picks its own settings (OMP_WAIT_POLICY=PASSIVE, one thread
per core), which are part of what is measured, while the peers run with their libraries'
defaults (spinning OpenMP threads for PyTorch).

Prints a table per condition: each implementation's median (and the runs), and the
ratios of gptpipe to each peer, computed from the medians of the same run. A greedy check
first: gpt-2-simple, transformers and gptpipe must decode the same 30 tokens (the
conversion is right).
"""
import argparse
import json
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.abspath(os.path.join(HERE, "..", ".."))


def log(*a):
    print(*a, file=sys.stderr, flush=True)


def loadavg():
    with open("/proc/loadavg") as f:
        return float(f.read().split()[0])


def die_with_parent():
    """In a child: SIGKILL when the bench dies, so no busy process outlives a killed run."""
    import ctypes

    ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, 9)  # PR_SET_PDEATHSIG, SIGKILL


class Busy:
    """Processes that spin while a loaded measurement runs."""

    def __init__(self, n):
        self.n, self.procs = n, []

    def __enter__(self):
        self.procs = [subprocess.Popen([sys.executable, "-c", "while True: pass"], preexec_fn=die_with_parent)
                      for _ in range(self.n)]
        time.sleep(0.5)
        return self

    def __exit__(self, *exc):
        for p in self.procs:
            p.kill()
            p.wait()


def timestamped(cmd, env=None, cwd=None, pattern=None):
    """Runs `cmd`; returns (start, [(time, line)] of stdout lines, end)."""
    start = time.time()
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                         env=env, cwd=cwd, bufsize=1)
    lines = []
    for line in p.stdout:
        lines.append((time.time(), line.rstrip("\n")))
    err = p.stderr.read()
    rc = p.wait()
    end = time.time()
    if rc != 0:
        raise RuntimeError(f"{cmd[0]} {' '.join(cmd[1:3])} failed ({rc}):\n{err[-3000:]}")
    return start, lines, end


def env_with(**kw):
    env = dict(os.environ)
    env.update({k: str(v) for k, v in kw.items()})
    return env


# ---------------------------------------------------------------------------- finetune


def steps_of(lines, pattern):
    """[(time, step)] of the lines that end a step."""
    out = []
    for t, line in lines:
        m = pattern(line)
        if m is not None:
            out.append((t, m))
    return out


def finetune_figures(start, steps, end):
    (t1, s1), (tn, sn) = steps[0], steps[-1]
    return {"steps_per_s": (sn - s1) / (tn - t1), "first": t1 - start, "wall": end - start, "steps": sn}


def gptpipe_step(line):
    if not line.startswith("{"):
        return None
    e = json.loads(line)
    return e["step"] if e.get("event") == "stage_progress" and e.get("stage") == "train" else None


def run_gptpipe_finetune(a, work, threads):
    pipe = os.path.join(work, "pipe.toml")
    with open(pipe, "w") as f:
        f.write(f"""[pipeline]
name = "bench"
workdir = "runs"
seed = 1

[stages.titles]
kind = "prepare"
inputs = ["{a.csv}"]
column = "title"

[stages.train]
kind = "finetune"
dataset = "@titles"
model = "{a.hf}"
steps = {a.steps}
batch_size = 1
accumulate_gradients = 5
learning_rate = 1e-4
optimizer = "adamw"
weight_decay = 0.01
device = "cpu"
print_every = 1
sample_every = 0
save_every = 0
""")
    cmd = [a.gptpipe, "run", pipe, "train", "--force", "--json"]
    if threads == "1":
        cmd += a.one_thread_args
    start, lines, end = timestamped(cmd, env=a.env_one if threads == "1" else None)
    return finetune_figures(start, steps_of(lines, gptpipe_step), end)


def run_gpt2s_finetune(a, work, threads):
    cmd = [a.tf_python, os.path.join(HERE, "gpt2s.py"), "finetune", a.data, a.csv, work,
           "--steps", str(a.steps), "--threads", "1" if threads == "1" else "0"]
    pat = re.compile(r"^\[(\d+) \| ")

    def step(line):
        m = pat.match(line)
        return int(m.group(1)) if m else None

    start, lines, end = timestamped(cmd)
    return finetune_figures(start, steps_of(lines, step), end)


def run_torch_finetune(a, work, threads):
    cmd = [a.python, os.path.join(HERE, "torch_loop.py"), "train", a.hf, a.csv,
           "--steps", str(a.steps), "--threads", "1" if threads == "1" else "0"]

    def step(line):
        return int(line.split()[1]) if line.startswith("step ") else None

    start, lines, end = timestamped(cmd)
    return finetune_figures(start, steps_of(lines, step), end)


# ---------------------------------------------------------------------------- generate


def run_gptpipe_generate(a, work, threads, batch, greedy=False, length=None):
    length = length or a.length
    cmd = [a.gptpipe, "generate", "--model", a.hf, "--device", "cpu", "--prefix", "<|startoftext|>",
           "--length", str(length), "--nsamples", str(1 if greedy else 2 * batch),
           "--batch-size", str(batch), "--seed", "0", "--sample-delim", DELIM + "\n"]
    cmd += ["--top-k", "1"] if greedy else ["--top-k", "40", "--temperature", "0.7"]
    if threads == "1":
        cmd += a.one_thread_args
    start, lines, end = timestamped(cmd, env=a.env_one if threads == "1" else None)
    # Text output (as the peers print theirs; jsonl would add each sample's score): a
    # sample is done when its delimiter line arrives.
    rows = [(t, line) for t, line in lines if line == DELIM]
    if greedy:
        # One sample: written without a delimiter (gpt-2-simple's rule for nsamples = 1).
        return {"text": "\n".join(line for _, line in lines).rstrip("\n")}
    assert len(rows) == 2 * batch, f"{len(rows)} samples"
    secs = rows[2 * batch - 1][0] - rows[batch - 1][0]
    return {"tokens_per_s": batch * length / secs, "secs": secs, "wall": end - start}


DELIM = "=" * 20 + " gptpipe-cpu-bench " + "=" * 20


def run_gpt2s_generate(a, work, threads, batch, greedy=False, length=None):
    cmd = [a.tf_python, os.path.join(HERE, "gpt2s.py"), "generate", a.data, work,
           "--batch", str(batch), "--length", str(length or a.length),
           "--threads", "1" if threads == "1" else "0"] + (["--greedy"] if greedy else [])
    start, lines, end = timestamped(cmd)
    out = json.loads([line for _, line in lines if line.startswith("{")][-1])
    out["wall"] = end - start
    return out


def run_hf_generate(a, work, threads, batch, greedy=False, length=None):
    cmd = [a.python, os.path.join(HERE, "torch_loop.py"), "generate", a.hf,
           "--batch", str(batch), "--length", str(length or a.length),
           "--threads", "1" if threads == "1" else "0"] + (["--greedy"] if greedy else [])
    start, lines, end = timestamped(cmd)
    out = json.loads([line for _, line in lines if line.startswith("{")][-1])
    out["wall"] = end - start
    return out


# ---------------------------------------------------------------------------- the run


def greedy_check(a, work):
    texts = {}
    for name, f in [("gptpipe", run_gptpipe_generate), ("gpt-2-simple", run_gpt2s_generate),
                    ("transformers", run_hf_generate)]:
        text = f(a, work, "default", 1, greedy=True, length=30)["text"]
        texts[name] = text.removeprefix("<|startoftext|>")
    same = len(set(texts.values())) == 1
    log("greedy check (30 tokens, batch 1):", "all three agree" if same else "DIFFER")
    if not same:
        for k, v in texts.items():
            log(f"  {k}: {v!r}")
    return same


def median(xs):
    return statistics.median(xs) if xs else float("nan")


def fmt(x):
    return f"{x:.3g}" if x < 100 else f"{x:.0f}"


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", required=True)
    ap.add_argument("--gptpipe", default=os.path.join(ROOT, "target", "release", "gptpipe"))
    ap.add_argument("--python", default=os.path.join(ROOT, ".venv", "bin", "python"))
    ap.add_argument("--tf-python", default=os.path.join(ROOT, ".tf-venv", "bin", "python"))
    ap.add_argument("--quick", action="store_true",
                    help="1 run each, 8 steps, 50 tokens, default threads only")
    ap.add_argument("--repeats", type=int)
    ap.add_argument("--steps", type=int)
    ap.add_argument("--length", type=int)
    ap.add_argument("--what", default="finetune,generate")
    ap.add_argument("--conditions", default="idle,loaded")
    ap.add_argument("--threads")
    ap.add_argument("--impls", default="gptpipe,gpt-2-simple,pytorch,transformers")
    ap.add_argument("--one-thread-env", action="store_true",
                    help="gptpipe's one thread through OMP_NUM_THREADS=1 (builds without --threads)")
    ap.add_argument("--no-check", action="store_true")
    ap.add_argument("--json", help="also write every measurement to this file")
    ap.add_argument("--nice", type=int, default=0,
                    help="run everything (measurements and busy processes) at this niceness, e.g. -10 "
                         "on a machine shared with other work (needs root for a negative value)")
    a = ap.parse_args()
    if a.nice:
        os.nice(a.nice)
    a.repeats = a.repeats or (1 if a.quick else 3)
    a.steps = a.steps or (8 if a.quick else 20)
    a.length = a.length or (50 if a.quick else 100)
    a.threads = (a.threads or ("default" if a.quick else "default,1")).split(",")
    a.data = os.path.abspath(a.data)
    a.hf = os.path.join(a.data, "hf")
    a.csv = os.path.join(a.data, "titles.csv")
    a.one_thread_args = [] if a.one_thread_env else ["--threads", "1"]
    a.env_one = env_with(OMP_NUM_THREADS=1) if a.one_thread_env else None
    impls = set(a.impls.split(","))
    what = a.what.split(",")
    work = tempfile.mkdtemp(prefix="gptpipe-cpu-bench-")
    log(f"CPU bench: {os.cpu_count()} CPUs, load average {loadavg():.2f}; {a.repeats} runs each, "
        f"finetune {a.steps} steps, generate {a.length} tokens; work folder {work}")
    if not a.no_check and "generate" in what:
        greedy_check(a, work)

    jobs = []  # (what, name, function, extra)
    if "finetune" in what:
        for name, f in [("gptpipe", run_gptpipe_finetune), ("gpt-2-simple", run_gpt2s_finetune),
                        ("pytorch", run_torch_finetune)]:
            if name in impls:
                jobs.append(("finetune", name, f, None))
    if "generate" in what:
        for batch in (1, 20):
            for name, f in [("gptpipe", run_gptpipe_generate), ("gpt-2-simple", run_gpt2s_generate),
                            ("transformers", run_hf_generate)]:
                if name in impls:
                    jobs.append((f"generate b{batch}", name, f, batch))

    results = {}  # (condition, threads, what, name) -> [figures]
    t0 = time.time()

    def save():
        if a.json:
            with open(a.json, "w") as f:
                json.dump([{"condition": k[0], "threads": k[1], "what": k[2], "impl": k[3], "runs": v}
                           for k, v in results.items()], f, indent=1)

    # A SIGTERM ends the run with the report of what was measured (and the busy processes).
    def interrupt(*_):
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, interrupt)
    try:
        measure(a, jobs, results, save, work)
    except KeyboardInterrupt:
        log("interrupted: the figures so far")
    log(f"done in {time.time() - t0:.0f} s")
    shutil.rmtree(work, ignore_errors=True)
    report(results, a)


def measure(a, jobs, results, save, work):
    for condition in a.conditions.split(","):
        for threads in a.threads:
            with Busy(2 if condition == "loaded" else 0):
                for r in range(a.repeats):
                    # Alternate: each repeat starts one further along the list.
                    order = jobs[r % len(jobs):] + jobs[:r % len(jobs)] if jobs else []
                    for w, name, f, batch in order:
                        d = tempfile.mkdtemp(dir=work)
                        la = loadavg()
                        try:
                            fig = f(a, d, threads) if batch is None else f(a, d, threads, batch)
                        except Exception as e:  # noqa: BLE001
                            log(f"  {condition} {threads} {w} {name}: FAILED {e}")
                            continue
                        finally:
                            shutil.rmtree(d, ignore_errors=True)
                        fig["load"] = la
                        results.setdefault((condition, threads, w, name), []).append(fig)
                        save()
                        key = "steps_per_s" if w == "finetune" else "tokens_per_s"
                        log(f"  {condition:6} threads={threads:7} {w:12} {name:13} {fig[key]:8.3f} "
                            f"(wall {fig['wall']:.1f} s, load {la:.1f})")


def report(results, a):
    peers = {"finetune": ["gpt-2-simple", "pytorch"], "generate b1": ["gpt-2-simple", "transformers"],
             "generate b20": ["gpt-2-simple", "transformers"]}
    print(f"\nmedians of {a.repeats} alternated runs; finetune in steps/s ({a.steps} steps of 5 x 1 x n_ctx "
          f"tokens), generate in tokens/s ({a.length} new tokens per row)")
    print(f"| condition | threads | what | gptpipe | peer | peer figure | ratio gptpipe / peer |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for condition in a.conditions.split(","):
        for threads in a.threads:
            for w, ps in peers.items():
                key = "steps_per_s" if w == "finetune" else "tokens_per_s"
                ours = results.get((condition, threads, w, "gptpipe"))
                if not ours:
                    continue
                o = median([r[key] for r in ours])
                for p in ps:
                    theirs = results.get((condition, threads, w, p))
                    if not theirs:
                        continue
                    t = median([r[key] for r in theirs])
                    print(f"| {condition} | {threads} | {w} | {fmt(o)} | {p} | {fmt(t)} | {o / t:.2f}x |")
    print("\nruns (figure; wall seconds of the whole process; for finetune also the seconds to the end of step 1)")
    for (condition, threads, w, name), runs in sorted(results.items()):
        key = "steps_per_s" if w == "finetune" else "tokens_per_s"
        cells = ", ".join(
            f"{fmt(r[key])} ({r['wall']:.1f} s" + (f", first {r['first']:.1f} s" if "first" in r else "") + ")"
            for r in runs)
        print(f"  {condition} threads={threads} {w} {name}: {cells}")


if __name__ == "__main__":
    main()
