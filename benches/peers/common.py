"""What the peer scripts share: the model shapes, the device and the JSON line they print.

Model specs are those of `crates/torch/examples/train_bench.rs`: `gpt2` (124M),
`gpt2-medium`, `gpt2-large`, `gpt2-xl`, `tiny` (4 layers, 4 heads, 256 wide) or `L,H,E`;
the vocabulary is always 50257 and n_ctx 1024. Weights are randomly initialised with
seed 0: speed does not depend on them.
"""
import json
import os
import sys

os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

import torch  # noqa: E402
import transformers  # noqa: E402

transformers.logging.set_verbosity_error()

PRESETS = {
    "gpt2": (12, 12, 768),
    "gpt2-medium": (24, 16, 1024),
    "gpt2-large": (36, 20, 1280),
    "gpt2-xl": (48, 25, 1600),
    "tiny": (4, 4, 256),
}


def config(spec):
    """A GPT2Config (SDPA attention) for a model spec."""
    spec = spec.removeprefix("openai-community/")
    if spec in PRESETS:
        layers, heads, embd = PRESETS[spec]
    else:
        layers, heads, embd = map(int, spec.split(","))
    return transformers.GPT2Config(
        n_layer=layers, n_head=heads, n_embd=embd, attn_implementation="sdpa"
    )


def device(name):
    """`auto` is CUDA when PyTorch sees a GPU, else the CPU."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    return torch.device(name)


def sync(dev):
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


def ints(text):
    """`1,20` -> [1, 20]."""
    return [int(x) for x in str(text).split(",")]


def emit(**fields):
    """One JSON line, as our benches print theirs (`impl` first)."""
    print(json.dumps({"impl": "transformers", **fields}), flush=True)


def describe(dev):
    """Versions and the GPU's name, on stderr, so stdout stays one JSON line per figure."""
    gpu = f", {torch.cuda.get_device_name(dev)}" if dev.type == "cuda" else ""
    print(
        f"transformers {transformers.__version__}, torch {torch.__version__}, "
        f"{dev.type}{gpu}, {torch.get_num_threads()} CPU threads",
        file=sys.stderr,
    )
