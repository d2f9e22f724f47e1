"""TensorFlow restoring a gpt-2-simple checkpoint, as gpt-2-simple's load_gpt2 does (its
model graph, then tf.compat.v1.train.Saver().restore), best of REPEATS: the peer of
gptpipe's import in benches/tf_import.sh. Prints one JSON line; the graph is built before
the clock starts, so only the restore (reading, checksums, copying into variables) counts.

    .tf-venv/bin/python benches/peers/tf_restore.py CHECKPOINT_FOLDER [REPEATS]
"""
import json
import os
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
import tensorflow as tf
from gpt_2_simple.src import model

tf.compat.v1.disable_eager_execution()
folder = sys.argv[1]
repeats = int(sys.argv[2]) if len(sys.argv) > 2 else 3
hparams = model.default_hparams()
with open(os.path.join(folder, "hparams.json")) as f:
    hparams.override_from_dict(json.load(f))
context = tf.compat.v1.placeholder(tf.int32, [1, None])
model.model(hparams=hparams, X=context)
saver = tf.compat.v1.train.Saver()
ckpt = tf.train.latest_checkpoint(folder)
best = float("inf")
with tf.compat.v1.Session() as sess:
    for _ in range(repeats):
        t = time.perf_counter()
        saver.restore(sess, ckpt)
        best = min(best, time.perf_counter() - t)
    size = sum(v.shape.num_elements() * 4 for v in tf.compat.v1.global_variables())
print(json.dumps({"who": "tensorflow", "seconds": best, "bytes": size}))
