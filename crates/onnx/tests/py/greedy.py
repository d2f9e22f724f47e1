"""transformers' greedy `generate` for several prompts.

usage: greedy.py HF_DIR < {"prompts": [[...], ...], "new": N}
Prints {"tokens": [[N new tokens] per prompt]}. End-of-text does not stop generation
(our driver stops only at `length` or `truncate`).
"""
import json
import sys

import torch
from transformers import GPT2LMHeadModel

model = GPT2LMHeadModel.from_pretrained(sys.argv[1]).eval()
model.generation_config.eos_token_id = None
model.generation_config.pad_token_id = 0
req = json.load(sys.stdin)
out = []
with torch.no_grad():
    for prompt in req["prompts"]:
        ids = torch.tensor([prompt])
        res = model.generate(
            ids, do_sample=False, max_new_tokens=req["new"], min_new_tokens=0,
            attention_mask=torch.ones_like(ids),
        )
        out.append(res[0, len(prompt):].tolist())
print(json.dumps({"tokens": out}))
