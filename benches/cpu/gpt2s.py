#!/usr/bin/env python3
"""gpt-2-simple's own `finetune` and `generate` on the benchmark's model (run by
`benches/cpu/bench.py` with `.tf-venv/bin/python`).

  gpt2s.py finetune MODEL_DIR CSV WORK --steps N [--threads T]
  gpt2s.py generate MODEL_DIR WORK --batch B --length L [--threads T] [--greedy]

MODEL_DIR holds `models/tiny` (benches/cpu/make_model.py). `--threads 0` is gpt-2-simple's
default session (`start_tf_sess()`: TensorFlow picks its thread pools); `--threads 1` is
`start_tf_sess(threads=1)`.

finetune: `gpt2.finetune` with its defaults (batch 1, 5 accumulated micro-batches, Adam,
lr 1e-4) on the CSV, which it wraps itself (`<|startoftext|>title<|endoftext|>`). Its
sampler always draws 1024-token windows (`sample_batch`), whatever the model's context:
here it draws n_ctx tokens (the one change). Every step prints `[step | seconds] loss=...`;
the caller timestamps those lines.

generate: `gpt2.load_gpt2`, then `gpt2.generate` (prefix `<|startoftext|>`, top_k 40,
temperature 0.7, or top_k 1 = greedy with --greedy) once with 8 tokens (warm-up) and once
with --length tokens per row, timed: one JSON line with tokens/s (and the first row's text
with --greedy).
"""
import argparse
import json
import os
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import gpt_2_simple as _  # noqa: E402,F401
from gpt_2_simple import gpt_2 as gpt2  # noqa: E402


def n_ctx(model_dir):
    with open(os.path.join(model_dir, "models", "tiny", "hparams.json")) as f:
        return json.load(f)["n_ctx"]


def finetune(a):
    ctx = n_ctx(a.model_dir)
    base = gpt2.Sampler

    class Sampler(base):
        # gpt-2-simple asks for 1024 tokens whatever n_ctx: a small model needs n_ctx.
        def sample(self, length):
            return base.sample(self, min(length, ctx))

    gpt2.Sampler = Sampler
    os.chdir(a.work)
    sess = gpt2.start_tf_sess(threads=a.threads or -1)
    print("start", flush=True)
    gpt2.finetune(
        sess,
        dataset=a.csv,
        steps=a.steps,
        model_name="tiny",
        model_dir=os.path.join(a.model_dir, "models"),
        run_name="bench",
        checkpoint_dir=os.path.join(a.work, "checkpoint"),
        sample_every=10**9,
        sample_length=min(64, ctx - 1),
        save_every=10**9,
        print_every=1,
        restore_from="fresh",
        overwrite=True,
    )


def generate(a):
    os.chdir(a.work)
    sess = gpt2.start_tf_sess(threads=a.threads or -1)
    models = os.path.join(a.model_dir, "models")
    gpt2.load_gpt2(sess, model_name="tiny", model_dir=models)
    kw = dict(
        model_name="tiny",
        model_dir=models,
        prefix="<|startoftext|>",
        nsamples=a.batch,
        batch_size=a.batch,
        temperature=0.7,
        top_k=1 if a.greedy else 40,
        return_as_list=True,
        include_prefix=True,
        seed=0,
    )
    gpt2.generate(sess, length=8, **kw)
    start = time.time()
    texts = gpt2.generate(sess, length=a.length, **kw)
    secs = time.time() - start
    out = {"impl": "gpt-2-simple", "batch": a.batch, "new": a.length, "secs": secs,
           "tokens_per_s": a.batch * a.length / secs}
    if a.greedy:
        out["text"] = texts[0]
    print(json.dumps(out), flush=True)


def main():
    ap = argparse.ArgumentParser()
    sub = ap.add_subparsers(dest="cmd", required=True)
    f = sub.add_parser("finetune")
    f.add_argument("model_dir")
    f.add_argument("csv")
    f.add_argument("work")
    f.add_argument("--steps", type=int, default=20)
    f.add_argument("--threads", type=int, default=0)
    g = sub.add_parser("generate")
    g.add_argument("model_dir")
    g.add_argument("work")
    g.add_argument("--batch", type=int, default=1)
    g.add_argument("--length", type=int, default=100)
    g.add_argument("--threads", type=int, default=0)
    g.add_argument("--greedy", action="store_true")
    a = ap.parse_args()
    a.model_dir = os.path.abspath(a.model_dir)
    a.work = os.path.abspath(a.work)
    os.makedirs(a.work, exist_ok=True)
    if a.cmd == "finetune":
        a.csv = os.path.abspath(a.csv)
        finetune(a)
    else:
        generate(a)


if __name__ == "__main__":
    sys.exit(main())
