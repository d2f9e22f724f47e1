#!/usr/bin/env python3
"""The plain baseline of the novelty benchmark (benches/novelty.sh), and a check of
gptpipe's answers against implementations nobody here wrote.

- exact copies: a Python set of the normalised rows, every sample; the copy count must
  equal gptpipe's.
- nearest row: rapidfuzz's `process.extractOne` (fuzz.ratio) over all rows, for the first
  RAPIDFUZZ samples, extrapolated linearly to all samples.
- longest shared run: difflib's `SequenceMatcher.find_longest_match` (autojunk off) over
  the same tokens gptpipe used (its --out file), every row (each row's matcher built once),
  for the first DIFFLIB samples, extrapolated; its length and first row must equal gptpipe's `overlap` and `nearest`.

usage: novelty_baseline.py ROWS SAMPLES GPTPIPE_OUT RAPIDFUZZ DIFFLIB
Prints one JSON line.
"""
import difflib
import json
import sys
import time

from rapidfuzz import fuzz, process

rows_path, samples_path, ours_path = sys.argv[1:4]
n_fuzz, n_difflib = int(sys.argv[4]), int(sys.argv[5])


def normalize(text):
    return " ".join(text.split())


rows = open(rows_path).read().splitlines()
samples = open(samples_path).read().splitlines()
ours = [json.loads(line) for line in open(ours_path)]
row_tokens = [json.loads(line) for line in open(ours_path + ".rows")]

t = time.perf_counter()
seen = {normalize(r) for r in rows if normalize(r)}
set_build_s = time.perf_counter() - t
t = time.perf_counter()
copied = [bool(normalize(s)) and normalize(s) in seen for s in samples]
set_query_s = time.perf_counter() - t
assert copied == [o["copied"] for o in ours], "copied differs from gptpipe's"

norm_rows = [normalize(r) for r in rows]
t = time.perf_counter()
for s in samples[:n_fuzz]:
    process.extractOne(normalize(s), norm_rows, scorer=fuzz.ratio)
fuzz_s = (time.perf_counter() - t) * len(samples) / n_fuzz

# Each row's matcher (its index of positions, b2j) is built once, as an index would be.
t = time.perf_counter()
matchers = [difflib.SequenceMatcher(None, [], r, autojunk=False) for r in row_tokens]
difflib_build_s = time.perf_counter() - t
t = time.perf_counter()
for s, o in zip(samples[:n_difflib], ours):
    q = o["tokens"]
    best, nearest = 0, None
    for i, (m, r) in enumerate(zip(matchers, row_tokens)):
        m.set_seq1(q)
        size = m.find_longest_match(0, len(q), 0, len(r)).size
        if size > best:
            best, nearest = size, i
    overlap = best / len(q) if q else 0.0
    assert (overlap, nearest) == (o["overlap"], o["nearest"]), (s, overlap, nearest, o)
difflib_s = difflib_build_s + (time.perf_counter() - t) * len(samples) / n_difflib

print(json.dumps({
    "set_build_s": set_build_s,
    "set_query_s": set_query_s,
    "rapidfuzz_nearest_s_extrapolated": fuzz_s,
    "rapidfuzz_measured_samples": n_fuzz,
    "difflib_longest_run_s_extrapolated": difflib_s,
    "difflib_measured_samples": n_difflib,
    "checked": {"copied": len(samples), "overlap_and_nearest": n_difflib},
}))
