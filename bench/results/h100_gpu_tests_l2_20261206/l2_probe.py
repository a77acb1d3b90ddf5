"""Probe: would prefetching the next weight matrix into L2 on a side stream speed up batch-1
decoding?  A llama-1b-bench-shaped chain of layers (eager ops, batch 1, one token, a 512-token
KV cache), captured in one CUDA graph, timed with and without a side stream that reads the next
matrix (one element per 32-byte sector) while the main stream works.

    python3 bench/results/h100_gpu_tests_l2_20261206/l2_probe.py --out result.json
"""

import argparse
import json

import torch
import torch.nn.functional as F

D, H, NH, NKV, HD, CTX, LAYERS = 2048, 5632, 16, 8, 128, 512, 14
DT = torch.bfloat16


def build(dev):
    g = torch.Generator(device="cpu").manual_seed(0)

    def w(o, i):
        return (torch.randn(o, i, generator=g) * i**-0.5).to(dev, DT)

    layers = []
    for _ in range(LAYERS):
        layers.append(
            dict(
                qkv=w(D + 2 * NKV * HD, D),
                o=w(D, D),
                w13=w(2 * H, D),
                w2=w(D, H),
                k=torch.randn(1, NKV, CTX, HD, generator=g).to(dev, DT),
                v=torch.randn(1, NKV, CTX, HD, generator=g).to(dev, DT),
            )
        )
    return layers


def run_chain(x, layers, before_gemv):
    """The chain; before_gemv(j, kind) is called before the j-th product (kind 'pre') and after
    it (kind 'post')."""
    j = 0

    def mm(a, W):
        nonlocal j
        before_gemv(j, "pre")
        y = a @ W.t()
        before_gemv(j, "post")
        j += 1
        return y

    for L in layers:
        h = F.rms_norm(x, (D,))
        qkv = mm(h, L["qkv"])
        q = qkv[:, :D].view(1, NH, 1, HD)
        a = F.scaled_dot_product_attention(q, L["k"], L["v"], enable_gqa=True)
        x = x + mm(a.reshape(1, D), L["o"])
        h = F.rms_norm(x, (D,))
        u, g = mm(h, L["w13"]).chunk(2, -1)
        x = x + mm(F.silu(u) * g, L["w2"])
    return x


def timed_graph(fn, reps=200):
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        for _ in range(3):
            fn()
    torch.cuda.current_stream().wait_stream(s)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        fn()
    for _ in range(10):
        graph.replay()
    torch.cuda.synchronize()
    times = []
    for _ in range(5):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        for _ in range(reps):
            graph.replay()
        b.record()
        torch.cuda.synchronize()
        times.append(a.elapsed_time(b) * 1000 / reps)
    return sorted(times)[2]


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--out", required=True)
    p.add_argument("--strides", default="16,64")
    args = p.parse_args()
    dev = torch.device("cuda")
    layers = build(dev)
    mats = [L[k] for L in layers for k in ("qkv", "o", "w13", "w2")]
    nbytes = sum(m.numel() * 2 for m in mats)
    x = torch.randn(1, D, device=dev, dtype=DT)
    result = {
        "device": torch.cuda.get_device_name(),
        "torch": torch.__version__,
        "bytes_per_chain": nbytes,
        "layers": LAYERS,
    }

    # single products, cold (a different layer's matrix each time) against warm (the same one)
    single = {}
    for kind in ("qkv", "o", "w13", "w2"):
        inp = torch.randn(1, layers[0][kind].shape[1], device=dev, dtype=DT)
        cold = timed_graph(lambda i=inp, k=kind: [i @ L[k].t() for L in layers]) / LAYERS
        warm = timed_graph(lambda i=inp, k=kind: [i @ layers[0][k].t() for _ in layers]) / LAYERS
        single[kind] = {
            "mb": layers[0][kind].numel() * 2 / 1e6,
            "cold_us": round(cold, 2),
            "warm_us": round(warm, 2),
        }
    result["single_products"] = single

    side = torch.cuda.Stream()

    def touch_views(stride):
        return [m.view(-1)[::stride] for m in mats]

    variants = {"none": None}
    for stride in map(int, args.strides.split(",")):
        variants[f"next_at_start_s{stride}"] = ("pre", 1, stride)
        variants[f"next_after_s{stride}"] = ("post", 1, stride)
        variants[f"two_ahead_at_start_s{stride}"] = ("pre", 2, stride)
    rows = {}
    for name, spec in variants.items():
        if spec is None:

            def hook(j, kind):
                return None
        else:
            when, ahead, stride = spec
            views = touch_views(stride)
            pending: list = []

            def hook(j, kind, when=when, ahead=ahead, views=views, pending=pending):
                if kind != when or j + ahead >= len(views):
                    return
                ev = torch.cuda.Event()
                ev.record()
                side.wait_event(ev)
                with torch.cuda.stream(side):
                    views[j + ahead].sum(dtype=torch.float32)
                    done = torch.cuda.Event()
                    done.record()
                # joined at the end of the chain (graph capture needs every fork joined)
                pending.append(done)

            hook.pending = pending

        def chain(hook=hook):
            y = run_chain(x, layers, hook)
            for ev in getattr(hook, "pending", []):
                torch.cuda.current_stream().wait_event(ev)
            if hasattr(hook, "pending"):
                hook.pending.clear()
            return y

        us = timed_graph(chain)
        rows[name] = {"us_per_chain": round(us, 1), "weight_tb_per_s": round(nbytes / us / 1e6, 3)}
        print(name, rows[name], flush=True)
    result["chains"] = rows
    with open(args.out, "w") as f:
        json.dump(result, f, indent=1)
    print(json.dumps(single))


if __name__ == "__main__":
    main()
