"""Saves a tiny random GPT-2 (transformers, fixed seed) as a Hugging Face folder.

usage: make_model.py DIR SEED N_LAYER N_HEAD N_EMBD N_POSITIONS VOCAB [untied]
"""
import sys

import torch
from transformers import GPT2Config, GPT2LMHeadModel

out, seed, n_layer, n_head, n_embd, n_pos, vocab = sys.argv[1:8]
untied = "untied" in sys.argv[8:]
torch.manual_seed(int(seed))
cfg = GPT2Config(
    n_layer=int(n_layer),
    n_head=int(n_head),
    n_embd=int(n_embd),
    n_positions=int(n_pos),
    vocab_size=int(vocab),
    tie_word_embeddings=not untied,
    bos_token_id=int(vocab) - 1,
    eos_token_id=int(vocab) - 1,
)
model = GPT2LMHeadModel(cfg).eval()
# Random init has tiny weights; widen them so differences in masking, positions or the
# activation would show in the logits instead of hiding below the tolerance.
with torch.no_grad():
    for p in model.parameters():
        p.add_(torch.randn_like(p) * 0.05)
model.save_pretrained(out, safe_serialization=True)
