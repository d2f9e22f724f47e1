"""Checks an exported model against independent implementations.

usage: oracle.py HF_DIR ONNX_DIR...
Prints one JSON object per ONNX_DIR, in order: whether `onnx.checker.check_model` (full check) accepts the file,
and the max abs difference between Python onnxruntime's logits on our file and
transformers' logits, for a full prompt (empty past) and for a continuation fed through
past/present, at batch 3.
"""
import json
import sys

import numpy as np
import onnx
import onnxruntime as ort
import torch
from transformers import GPT2LMHeadModel

hf_dir, onnx_dirs = sys.argv[1], sys.argv[2:]
model = GPT2LMHeadModel.from_pretrained(hf_dir).eval()
cfg = model.config


def check(onnx_dir):
    path = f"{onnx_dir}/model.onnx"
    onnx.checker.check_model(path, full_check=True)
    sess = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    past_type = {i.name: i.type for i in sess.get_inputs()}["past_key_values.0.key"]
    np_float = np.float16 if past_type == "tensor(float16)" else np.float32

    rng = np.random.default_rng(0)
    batch, prompt, more = 3, 7, 5
    ids = rng.integers(0, cfg.vocab_size, size=(batch, prompt + more), dtype=np.int64)

    with torch.no_grad():
        ref = model(torch.from_numpy(ids)).logits.numpy()

    hd = cfg.n_embd // cfg.n_head
    feeds = {"input_ids": ids[:, :prompt]}
    for i in range(cfg.n_layer):
        for kv in ("key", "value"):
            feeds[f"past_key_values.{i}.{kv}"] = np.zeros((batch, cfg.n_head, 0, hd), np_float)
    names = [o.name for o in sess.get_outputs()]
    outs = dict(zip(names, sess.run(None, feeds)))
    no_past = float(np.abs(outs["logits"] - ref[:, :prompt]).max())
    last_vs_full = float(np.abs(outs["last_logits"] - outs["logits"][:, -1]).max())

    # Continue with the present tensors, first several tokens at once, then one at a time.
    def step(outs, chunk):
        feeds = {"input_ids": chunk}
        for i in range(cfg.n_layer):
            for kv in ("key", "value"):
                feeds[f"past_key_values.{i}.{kv}"] = outs[f"present.{i}.{kv}"]
        return dict(zip(names, sess.run(None, feeds)))

    outs2 = step(outs, ids[:, prompt : prompt + 3])
    diffs = [np.abs(outs2["logits"] - ref[:, prompt : prompt + 3]).max()]
    outs3 = outs2
    for j in range(prompt + 3, prompt + more):
        outs3 = step(outs3, ids[:, j : j + 1])
        diffs.append(np.abs(outs3["logits"][:, 0] - ref[:, j]).max())
    with_past = float(max(diffs))
    present_len = outs3["present.0.key"].shape[2]

    print(json.dumps({
        "checker": True,
        "no_past": no_past,
        "with_past": with_past,
        "present_len": int(present_len),
        "last_vs_full": last_vs_full,
        "logits_dtype": str(outs["logits"].dtype),
        "ref_scale": float(np.abs(ref).max()),
    }))


for d in onnx_dirs:
    check(d)
