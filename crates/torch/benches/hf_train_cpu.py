#!/usr/bin/env python3
"""The peer of examples/train_bench.rs: transformers' GPT2LMHeadModel trained the same way
(random init, random tokens, loss + backward + AdamW step), fp32 on the CPU.

  python hf_train_cpu.py --model L,H,E --batch B --seq T --steps N --warmup W --threads K
"""
import argparse, json, time
import torch, transformers

ap = argparse.ArgumentParser()
ap.add_argument("--model", default="4,4,256")
ap.add_argument("--batch", type=int, default=4)
ap.add_argument("--seq", type=int, default=128)
ap.add_argument("--steps", type=int, default=10)
ap.add_argument("--warmup", type=int, default=3)
ap.add_argument("--threads", type=int, default=0)
a = ap.parse_args()
if a.threads:
    torch.set_num_threads(a.threads)
L, H, E = map(int, a.model.split(","))
cfg = transformers.GPT2Config(n_layer=L, n_head=H, n_embd=E, attn_implementation="sdpa")
torch.manual_seed(0)
m = transformers.GPT2LMHeadModel(cfg).train()
opt = torch.optim.AdamW(m.parameters(), lr=1e-4, weight_decay=0.01)
x = torch.randint(0, cfg.vocab_size, (a.batch, a.seq))
for i in range(a.warmup + a.steps):
    if i == a.warmup:
        t = time.time()
    loss = m(input_ids=x, labels=x).loss
    loss.backward()
    opt.step()
    opt.zero_grad()
secs = time.time() - t
print(json.dumps({"impl": "transformers", "batch": a.batch, "seq": a.seq, "steps": a.steps,
                  "tokens_per_s": round(a.batch * a.seq * a.steps / secs), "final_loss": loss.item()}))
