#!/usr/bin/env python3
"""Data of the novelty benchmark (benches/novelty.sh), deterministic (seed 0).

ROWS short titles of 5-30 words drawn from a Zipf-distributed vocabulary of 30,000
pseudo-words (so common words repeat, as in real titles), and SAMPLES of which a third are
exact copies of a row (with stray whitespace), a third recombine the start of one row with
the end of another, and a third are fresh titles.

usage: novelty_data.py ROWS SAMPLES ROWS_FILE SAMPLES_FILE
"""
import itertools
import random
import sys

n_rows, n_samples, rows_path, samples_path = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], sys.argv[4]
rng = random.Random(0)
SYLLABLES = ["ka", "lo", "mi", "ne", "ru", "ta", "shi", "po", "ven", "dar", "el", "qu", "is",
             "an", "or", "th", "ber", "wi", "go", "fe"]
vocab = sorted({"".join(rng.choice(SYLLABLES) for _ in range(rng.randint(1, 4)))
                for _ in range(60000)})[:30000]
rng.shuffle(vocab)
cum_weights = list(itertools.accumulate(1.0 / (rank + 1) for rank in range(len(vocab))))


def title():
    words = rng.choices(vocab, cum_weights=cum_weights, k=rng.randint(5, 30))
    words[0] = words[0].capitalize()
    return " ".join(words) + rng.choice(["?", "", ".", "!"])


rows = [title() for _ in range(n_rows)]
samples = []
for i in range(n_samples):
    kind = i % 3
    if kind == 0:
        samples.append("  " + rng.choice(rows).replace(" ", "  ", 1) + " ")
    elif kind == 1:
        a, b = rng.choice(rows).split(), rng.choice(rows).split()
        samples.append(" ".join(a[: len(a) // 2] + b[len(b) // 2:]))
    else:
        samples.append(title())
with open(rows_path, "w") as f:
    f.write("\n".join(rows) + "\n")
with open(samples_path, "w") as f:
    f.write("\n".join(samples) + "\n")
