#!/usr/bin/env python3
"""Writes a small random GPT-2 as a Hugging Face folder, for the serving benchmark
(`benches/serve_load.sh`): `config.json`, `model.safetensors` and GPT-2's tokenizer files
(`vocab.json`, `merges.txt` from `crates/text/assets/`, and `tokenizer.json`), so that gptpipe and transformers
load the same folder.

  benches/peers/tiny_model.py OUT_DIR [--model L,H,E] [--ctx 256]

Weights are random with seed 0 (speed does not depend on them); vocabulary 50257.
"""
import argparse
import os
import shutil

import torch
import transformers

import common

ASSETS = os.path.join(os.path.dirname(__file__), "..", "..", "crates", "text", "assets")


def tokenizer(folder):
    """GPT-2's tokenizer from `vocab.json` and `merges.txt` in `folder`, built as
    `crates/text/src/tokenizer/hf_files.rs` builds it (byte-level BPE, `<|endoftext|>`)."""
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, processors

    bpe = models.BPE.from_file(os.path.join(folder, "vocab.json"), os.path.join(folder, "merges.txt"))
    tok = Tokenizer(bpe)
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=True, use_regex=True)
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens([AddedToken("<|endoftext|>", special=True)])
    return tok


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("out")
    ap.add_argument("--model", default="2,4,128")
    ap.add_argument("--ctx", type=int, default=256)
    a = ap.parse_args()
    cfg = common.config(a.model)
    cfg.n_positions = a.ctx
    torch.manual_seed(0)
    model = transformers.GPT2LMHeadModel(cfg).eval()
    os.makedirs(a.out, exist_ok=True)
    model.save_pretrained(a.out, safe_serialization=True)
    shutil.copyfile(os.path.join(ASSETS, "encoder.json"), os.path.join(a.out, "vocab.json"))
    shutil.copyfile(os.path.join(ASSETS, "vocab.bpe"), os.path.join(a.out, "merges.txt"))
    tokenizer(a.out).save(os.path.join(a.out, "tokenizer.json"))
    n = sum(p.numel() for p in model.parameters())
    print(f"{a.out}: GPT-2 {a.model} (layers, heads, width), n_ctx {a.ctx}, {n / 1e6:.1f}M parameters")


if __name__ == "__main__":
    main()
