"""transformers' logits for token rows.

usage: logits.py HF_DIR < {"ids": [[...], ...]}
Prints {"logits": [[[...vocab] per position] per row]} (rows may differ in length).
"""
import json
import sys

import torch
from transformers import GPT2LMHeadModel

model = GPT2LMHeadModel.from_pretrained(sys.argv[1]).eval()
rows = json.load(sys.stdin)["ids"]
out = []
with torch.no_grad():
    for row in rows:
        out.append(model(torch.tensor([row])).logits[0].tolist())
print(json.dumps({"logits": out}))
