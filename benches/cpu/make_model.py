#!/usr/bin/env python3
"""Makes the CPU benchmark's model once, with gpt-2-simple's own code, and converts it.

  .tf-venv/bin/python benches/cpu/make_model.py OUT [--layers 4 --heads 4 --embd 256 --ctx 128]

Writes, under OUT:
- `models/tiny/`: a gpt-2-simple model folder (TensorFlow checkpoint `model.ckpt`,
  `hparams.json`, `encoder.json`, `vocab.bpe`, `checkpoint`): gpt-2-simple's `model.model`
  graph, its own random initialisation (seed 0), saved by `tf.train.Saver` as
  `download_gpt2` would have left a real one;
- `hf/`: the same weights as a Hugging Face GPT-2 folder (`config.json`,
  `model.safetensors`, `vocab.json`, `merges.txt`), converted here with numpy (the names
  map one to one; TF's conv1d weights `[1, in, out]` are Conv1D's `[in, out]`; the
  safetensors file is written by hand: an 8-byte header length, a JSON header, the data).

Run it with the Python that has gpt-2-simple and TensorFlow (`.tf-venv`).
"""
import argparse
import json
import os
import shutil
import struct

import numpy as np

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
ASSETS = os.path.join(ROOT, "crates", "text", "assets")


def make_tf(folder, hp):
    import tensorflow as tf
    from gpt_2_simple.src import model

    tf.compat.v1.disable_eager_execution()
    os.makedirs(folder, exist_ok=True)
    with open(os.path.join(folder, "hparams.json"), "w") as f:
        json.dump(hp, f)
    shutil.copy(os.path.join(ASSETS, "encoder.json"), folder)
    shutil.copy(os.path.join(ASSETS, "vocab.bpe"), folder)
    hparams = model.default_hparams()
    hparams.override_from_dict(hp)
    graph = tf.Graph()
    with graph.as_default():
        tf.compat.v1.set_random_seed(0)
        context = tf.compat.v1.placeholder(tf.int32, [1, None])
        model.model(hparams=hparams, X=context)
        saver = tf.compat.v1.train.Saver(var_list=tf.compat.v1.trainable_variables())
        with tf.compat.v1.Session() as sess:
            sess.run(tf.compat.v1.global_variables_initializer())
            saver.save(sess, os.path.join(folder, "model.ckpt"), write_meta_graph=True)


def hf_name(tf_name):
    """model/h0/attn/c_attn/w -> transformer.h.0.attn.c_attn.weight (None: not a weight)."""
    parts = tf_name.split("/")
    if parts[0] != "model":
        return None
    parts = parts[1:]
    if parts == ["wte"]:
        return "transformer.wte.weight"
    if parts == ["wpe"]:
        return "transformer.wpe.weight"
    leaf = {"w": "weight", "g": "weight", "b": "bias"}[parts[-1]]
    if parts[0] == "ln_f":
        return f"transformer.ln_f.{leaf}"
    layer = int(parts[0][1:])
    return "transformer.h.%d.%s.%s" % (layer, ".".join(parts[1:-1]), leaf)


def write_safetensors(path, tensors):
    header, offset, blobs = {}, 0, []
    for name in sorted(tensors):
        a = np.ascontiguousarray(tensors[name], dtype=np.float32)
        data = a.tobytes()
        header[name] = {"dtype": "F32", "shape": list(a.shape), "data_offsets": [offset, offset + len(data)]}
        offset += len(data)
        blobs.append(data)
    header["__metadata__"] = {"format": "pt"}
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * ((8 - len(text) % 8) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(text)))
        f.write(text)
        for b in blobs:
            f.write(b)


def convert(tf_folder, hf_folder, hp):
    import tensorflow as tf

    reader = tf.train.load_checkpoint(os.path.join(tf_folder, "model.ckpt"))
    tensors = {}
    for name in reader.get_variable_to_shape_map():
        hf = hf_name(name)
        if hf is None:
            continue
        value = reader.get_tensor(name)
        if name.endswith("/w"):
            value = value[0]  # conv1d [1, in, out] -> Conv1D [in, out]
        tensors[hf] = value
    os.makedirs(hf_folder, exist_ok=True)
    write_safetensors(os.path.join(hf_folder, "model.safetensors"), tensors)
    config = {
        "architectures": ["GPT2LMHeadModel"],
        "model_type": "gpt2",
        "vocab_size": hp["n_vocab"],
        "n_positions": hp["n_ctx"],
        "n_ctx": hp["n_ctx"],
        "n_embd": hp["n_embd"],
        "n_layer": hp["n_layer"],
        "n_head": hp["n_head"],
        "n_inner": None,
        "activation_function": "gelu_new",
        "layer_norm_epsilon": 1e-5,
        "resid_pdrop": 0.0,
        "embd_pdrop": 0.0,
        "attn_pdrop": 0.0,
        "initializer_range": 0.02,
        "bos_token_id": 50256,
        "eos_token_id": 50256,
        "tie_word_embeddings": True,
        "torch_dtype": "float32",
    }
    with open(os.path.join(hf_folder, "config.json"), "w") as f:
        json.dump(config, f, indent=2)
    shutil.copy(os.path.join(ASSETS, "encoder.json"), os.path.join(hf_folder, "vocab.json"))
    shutil.copy(os.path.join(ASSETS, "vocab.bpe"), os.path.join(hf_folder, "merges.txt"))
    return len(tensors)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("out")
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--heads", type=int, default=4)
    ap.add_argument("--embd", type=int, default=256)
    ap.add_argument("--ctx", type=int, default=128)
    a = ap.parse_args()
    hp = {"n_vocab": 50257, "n_ctx": a.ctx, "n_embd": a.embd, "n_head": a.heads, "n_layer": a.layers}
    tf_folder = os.path.join(a.out, "models", "tiny")
    make_tf(tf_folder, hp)
    n = convert(tf_folder, os.path.join(a.out, "hf"), hp)
    print(f"model: {tf_folder} (gpt-2-simple) and {os.path.join(a.out, 'hf')} ({n} tensors)")


if __name__ == "__main__":
    main()
