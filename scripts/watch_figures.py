#!/usr/bin/env python3
"""Watch-mode figures: the time from saving a change to a generate stage's `temperature` to
new samples on disk, and the watch process's CPU use per minute while nothing changes.

usage: scripts/watch_figures.py GPTPIPE_BINARY PROJECT_DIR [PIPELINE]

PROJECT_DIR holds a pipeline (default p.toml) whose generate stage is named `samples`,
already run once, so only the generate stage reruns on each change.
"""
import json, os, re, subprocess, sys, threading, time, queue

binary, project = sys.argv[1], sys.argv[2]
pipeline = sys.argv[3] if len(sys.argv) > 3 else "p.toml"
os.chdir(project)
samples = "work/samples/samples.txt"
events = queue.Queue()
proc = subprocess.Popen([binary, "watch", pipeline, "--json", "--debounce", "200"],
                        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
threading.Thread(target=lambda: [events.put(json.loads(l)) for l in proc.stdout], daemon=True).start()

def wait(kind, timeout=600):
    end = time.time() + timeout
    while True:
        e = events.get(timeout=max(0.1, end - time.time()))
        if e["event"] == kind:
            return e

first = wait("watch_cycle")
assert not first["ran"], f"run the pipeline once first: {first}"
text = open(pipeline).read()
latencies = []
for temperature in ["0.8", "0.9", "1.0", "1.1", "1.2"]:
    before = os.stat(samples).st_mtime_ns
    text = re.sub(r"temperature = [0-9.]+", f"temperature = {temperature}", text)
    with open(pipeline + ".tmp~", "w") as f:  # saved as editors do: temp file + rename
        f.write(text)
    t0 = time.time()
    os.rename(pipeline + ".tmp~", pipeline)
    while not os.path.exists(samples) or os.stat(samples).st_mtime_ns == before:
        time.sleep(0.005)
    latencies.append(time.time() - t0)
    stage = wait("stage_finished")
    cycle = wait("watch_cycle")
    assert cycle["ran"] == ["samples"], cycle
    print(f"temperature {temperature}: new samples on disk after {latencies[-1]:.2f} s "
          f"(the generate stage itself: {stage['seconds']:.2f} s)", flush=True)
print(f"save -> new samples: median {sorted(latencies)[len(latencies)//2]:.2f} s, "
      f"min {min(latencies):.2f} s, max {max(latencies):.2f} s")

def cpu_ticks(pid):
    fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])  # utime + stime

time.sleep(5)
hz = os.sysconf("SC_CLK_TCK")
a = cpu_ticks(proc.pid)
time.sleep(60)
b = cpu_ticks(proc.pid)
print(f"idle watch: {(b - a) / hz * 1000:.0f} ms of CPU in 60 s ({(b - a) / hz / 60 * 100:.3f} % of one core)")
proc.send_signal(2)
print("exit code after Ctrl-C:", proc.wait(timeout=30))
