"""Checks an exported model against independent implementations.

usage: oracle.py HF_DIR ONNX_DIR...
Prints one JSON object per ONNX_DIR, in order: whether `onnx.checker.check_model` (full check) accepts the file,
and the max abs difference between Python onnxruntime's logits on our file and
transformers' logits, for a full prompt (empty past) and for a continuation fed through
past/present, at batch 3. Files with `attention_mask`/`position_ids` get all-ones masks
there (optimum's interface), and one more figure: `padded`, the max abs difference between
our file on a left-padded batch of rows of different lengths (then one step through the
cache) and transformers on each row alone.
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
    has_mask = {"attention_mask", "position_ids"} <= {i.name for i in sess.get_inputs()}

    def with_mask(feeds, past_len):
        if has_mask:
            b, s = feeds["input_ids"].shape
            feeds["attention_mask"] = np.ones((b, past_len + s), np.int64)
            feeds["position_ids"] = np.tile(np.arange(past_len, past_len + s), (b, 1))
        return feeds

    def empty_past(b):
        return {
            f"past_key_values.{i}.{kv}": np.zeros((b, cfg.n_head, 0, hd), np_float)
            for i in range(cfg.n_layer)
            for kv in ("key", "value")
        }

    feeds = with_mask({"input_ids": ids[:, :prompt], **empty_past(batch)}, 0)
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
        past_len = outs["present.0.key"].shape[2]
        return dict(zip(names, sess.run(None, with_mask(feeds, past_len))))

    outs2 = step(outs, ids[:, prompt : prompt + 3])
    diffs = [np.abs(outs2["logits"] - ref[:, prompt : prompt + 3]).max()]
    outs3 = outs2
    for j in range(prompt + 3, prompt + more):
        outs3 = step(outs3, ids[:, j : j + 1])
        diffs.append(np.abs(outs3["logits"][:, 0] - ref[:, j]).max())
    with_past = float(max(diffs))
    present_len = outs3["present.0.key"].shape[2]

    padded = None
    if has_mask:
        # Rows of 7, 3 and 5 tokens, left-padded to 7, then one more token each.
        lens = [7, 3, 5]
        width = max(lens)
        mask = np.array([[0] * (width - n) + [1] * n for n in lens], np.int64)
        pos = np.array([[0] * (width - n) + list(range(n)) for n in lens], np.int64)
        padded_ids = np.zeros((len(lens), width), np.int64)
        for r, n in enumerate(lens):
            padded_ids[r, width - n :] = ids[r, :n]
        feeds = {"input_ids": padded_ids, "attention_mask": mask, "position_ids": pos}
        feeds.update(empty_past(len(lens)))
        o1 = dict(zip(names, sess.run(None, feeds)))
        feeds = {
            "input_ids": np.array([[ids[r, n]] for r, n in enumerate(lens)], np.int64),
            "attention_mask": np.concatenate([mask, np.ones((len(lens), 1), np.int64)], 1),
            "position_ids": np.array([[n] for n in lens], np.int64),
        }
        for i in range(cfg.n_layer):
            for kv in ("key", "value"):
                feeds[f"past_key_values.{i}.{kv}"] = o1[f"present.{i}.{kv}"]
        o2 = dict(zip(names, sess.run(None, feeds)))
        # Padding queries attend to nothing, and still give finite logits.
        finite = bool(np.isfinite(o1["logits"]).all() and np.isfinite(o2["logits"]).all())
        diffs = []
        with torch.no_grad():
            for r, n in enumerate(lens):
                alone = model(torch.from_numpy(ids[r : r + 1, : n + 1])).logits.numpy()[0]
                diffs.append(np.abs(o1["logits"][r, width - n :] - alone[:n]).max())
                diffs.append(np.abs(o2["logits"][r, 0] - alone[n]).max())
        padded = float(max(diffs)) if finite else None

    print(json.dumps({
        "checker": True,
        "has_mask": has_mask,
        "padded": padded,
        "no_past": no_past,
        "with_past": with_past,
        "present_len": int(present_len),
        "last_vs_full": last_vs_full,
        "logits_dtype": str(outs["logits"].dtype),
        "ref_scale": float(np.abs(ref).max()),
    }))


for d in onnx_dirs:
    check(d)
