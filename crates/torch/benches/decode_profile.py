"""Where a GPT-2 124M decoding step's GPU time goes, kernel by kernel.

The step is written in PyTorch with the ops our tch decoder (crates/torch/src/generation)
issues, on the same libtorch build: embedding, per layer layer norm, qkv addmm, the KV-cache
write, attention over the filled positions, the projections and GELU, then ln_f, the padded
lm_head and top-k 40 sampling. It prints, for 1 and 20 rows:
- the step time with the whole step replayed as one CUDA graph (as we decode);
- the kernels by GPU time per step (torch.profiler over eager steps).

    python crates/torch/benches/decode_profile.py [--top 12]
"""

import argparse
import time

import torch
import torch.nn.functional as F

E, H, L, V, N_CTX = 768, 12, 12, 50304, 1024
D = E // H
dev = torch.device("cuda")
bf16 = torch.bfloat16


def weights():
    g = torch.Generator(device="cpu").manual_seed(0)

    def lin(i, o):
        w = (torch.randn(i, o, generator=g) * 0.02).to(dev, bf16)  # Conv1D [in, out]
        return w, torch.zeros(o, device=dev, dtype=bf16)

    def norm():
        return torch.ones(E, device=dev, dtype=bf16), torch.zeros(E, device=dev, dtype=bf16)

    layers = [
        dict(ln1=norm(), qkv=lin(E, 3 * E), proj=lin(E, E), ln2=norm(), fc=lin(E, 4 * E), mp=lin(4 * E, E))
        for _ in range(L)
    ]
    wte = (torch.randn(V, E, generator=g) * 0.02).to(dev, bf16)
    wpe = (torch.randn(N_CTX, E, generator=g) * 0.01).to(dev, bf16)
    return layers, wte, wpe, norm()


def make_step(b, pos):
    layers, wte, wpe, lnf = weights()
    kv = [torch.zeros(2, b, H, N_CTX, D, device=dev, dtype=bf16) for _ in range(L)]
    ids = torch.zeros(b, dtype=torch.long, device=dev)
    p = torch.tensor([pos], device=dev)
    u = torch.rand(b, 1, device=dev)

    def step():
        x = wte.index_select(0, ids) + wpe.index_select(0, p)
        for lay, cache in zip(layers, kv):
            a = F.layer_norm(x, (E,), *lay["ln1"], 1e-5)
            w, bias = lay["qkv"]
            qkv = torch.addmm(bias, a, w).view(b, 3, H, 1, D)
            cache.index_copy_(3, p, qkv[:, 1:].transpose(0, 1))
            y = F.scaled_dot_product_attention(qkv[:, 0], cache[0, :, :, : pos + 1], cache[1, :, :, : pos + 1])
            w, bias = lay["proj"]
            x = x + torch.addmm(bias, y.reshape(b, E), w)
            w, bias = lay["fc"]
            m = F.gelu(torch.addmm(bias, F.layer_norm(x, (E,), *lay["ln2"], 1e-5), w), approximate="tanh")
            w, bias = lay["mp"]
            x = x + torch.addmm(bias, m, w)
        logits = F.layer_norm(x, (E,), *lnf, 1e-5) @ wte.t()
        v, i = logits.topk(40, -1)
        cum = (v.float() / 0.7).softmax(-1).cumsum(-1)
        pick = (cum <= u * cum[:, -1:]).sum(-1, keepdim=True).clamp_max(39)
        ids.copy_(i.gather(1, pick).squeeze(1))

    return step


def graph_ms(step, reps=200):
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        for _ in range(3):
            step()
    torch.cuda.current_stream().wait_stream(s)
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        step()
    g.replay()
    torch.cuda.synchronize()
    t = time.perf_counter()
    for _ in range(reps):
        g.replay()
    torch.cuda.synchronize()
    return (time.perf_counter() - t) / reps * 1e3


def kernels(step, top, steps=20):
    from torch.profiler import ProfilerActivity, profile

    for _ in range(3):
        step()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA], acc_events=True) as prof:
        for _ in range(steps):
            step()
        torch.cuda.synchronize()
    rows = []
    for e in prof.key_averages():
        t = getattr(e, "device_time_total", None) or getattr(e, "cuda_time_total", 0)
        if t > 0 and e.count >= steps:
            rows.append((t / steps, e.count // steps, e.key))
    rows.sort(reverse=True)
    total = sum(r[0] for r in rows)
    print(f"    kernels: {total:.0f} us of GPU time per step, {sum(r[1] for r in rows)} launches")
    for t, n, name in rows[:top]:
        print(f"    {t:7.1f} us {n:4d}x  {name[:90]}")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--top", type=int, default=12)
    args = ap.parse_args()
    print(f"{torch.cuda.get_device_name()}, torch {torch.__version__}, position 512")
    with torch.no_grad():
        for b in (1, 20):
            step = make_step(b, 512)
            ms = graph_ms(step)
            print(f"b{b:<3} graph step {ms:.3f} ms ({b / ms * 1e3:,.0f} tok/s)")
            kernels(step, args.top)


if __name__ == "__main__":
    main()
