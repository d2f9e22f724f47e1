"""TensorFlow restoring a gpt-2-simple checkpoint, as gpt-2-simple's load_gpt2 does (its
model graph, then tf.compat.v1.train.Saver().restore), best of REPEATS, each in a new
session: the peer of gptpipe's import in benches/tf_import.sh. Prints one JSON line: the
graph is built before the clock starts; `seconds` is the restore alone (reading, checksums,
copying into variables the initializer has already allocated and filled),
`load_gpt2_seconds` the initializer and the restore, as load_gpt2 runs them.

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
init = tf.compat.v1.global_variables_initializer()
ckpt = tf.train.latest_checkpoint(folder)
restore, load = float("inf"), float("inf")
for _ in range(repeats):
    # A new session each time: new variable buffers, as a new process has.
    with tf.compat.v1.Session() as sess:
        t0 = time.perf_counter()
        sess.run(init)
        t1 = time.perf_counter()
        saver.restore(sess, ckpt)
        t2 = time.perf_counter()
        restore, load = min(restore, t2 - t1), min(load, t2 - t0)
size = sum(v.shape.num_elements() * 4 for v in tf.compat.v1.global_variables())
print(json.dumps({"who": "tensorflow", "seconds": restore, "load_gpt2_seconds": load,
                  "bytes": size}))
