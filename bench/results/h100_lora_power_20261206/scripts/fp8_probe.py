"""Probe: one 7B block's seven frozen linears, forward + input gradient (LoRA's work on the base),
at M tokens: bf16; float8 with the weights cast every call (torchao's tensorwise recipe, as
parallel.float8 runs it); float8 with the weights cast once (frozen weights never change).
Activations are cast each call in both float8 forms. Times per block, CUDA events."""
import json, sys
import torch

E4, E5 = torch.float8_e4m3fn, torch.float8_e5m2
SHAPES = [(4096, 4096)] * 4 + [(11008, 4096)] * 2 + [(4096, 11008)]  # (out, in): q k v o, w1 w3, w2


def cast(t, dtype):
    amax = t.abs().amax().float().clamp(min=1e-12)
    scale = torch.finfo(dtype).max / amax
    return (t.float() * scale).clamp(-torch.finfo(dtype).max, torch.finfo(dtype).max).to(dtype), scale.reciprocal()


def bf16(x, dy, w):
    return x @ w.t(), dy @ w


def fp8_each_call(x, dy, w):
    xf, sx = cast(x, E4)
    wf, sw = cast(w, E4)
    y = torch._scaled_mm(xf, wf.t(), sx, sw, out_dtype=torch.bfloat16, use_fast_accum=True)
    dyf, sdy = cast(dy, E5)
    wtf = wf.t().contiguous()
    dx = torch._scaled_mm(dyf, wtf.t(), sdy, sw, out_dtype=torch.bfloat16)
    return y, dx


def fp8_cached(x, dy, wf, wtf, sw):
    xf, sx = cast(x, E4)
    y = torch._scaled_mm(xf, wf.t(), sx, sw, out_dtype=torch.bfloat16, use_fast_accum=True)
    dyf, sdy = cast(dy, E5)
    dx = torch._scaled_mm(dyf, wtf.t(), sdy, sw, out_dtype=torch.bfloat16)
    return y, dx


def timed(fn, args_list, iters=50):
    for _ in range(5):
        for a in args_list:
            fn(*a)
    torch.cuda.synchronize()
    s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    s.record()
    for _ in range(iters):
        for a in args_list:
            fn(*a)
    e.record(); torch.cuda.synchronize()
    return s.elapsed_time(e) / iters


def main():
    dev = "cuda"
    out = {"device": torch.cuda.get_device_name(), "torch": torch.__version__}
    for M in (2048, 8192):
        base, cached = [], []
        for n, k in SHAPES:
            x = torch.randn(M, k, device=dev, dtype=torch.bfloat16)
            dy = torch.randn(M, n, device=dev, dtype=torch.bfloat16)
            w = torch.randn(n, k, device=dev, dtype=torch.bfloat16) * 0.02
            wf, sw = cast(w, E4)
            base.append((x, dy, w))
            cached.append((x, dy, wf, wf.t().contiguous(), sw))
        row = {}
        for name, fn, args in (("bf16", bf16, base), ("fp8_each_call", fp8_each_call, base),
                               ("fp8_cached", fp8_cached, cached)):
            cfn = torch.compile(fn) if name != "bf16" else fn
            row[name + "_ms_per_block"] = timed(cfn, args)
        y0, dx0 = bf16(*base[0]); y1, dx1 = torch.compile(fp8_cached)(*cached[0])
        row["rel_err_y"] = ((y1.float() - y0.float()).norm() / y0.float().norm()).item()
        row["rel_err_dx"] = ((dx1.float() - dx0.float()).norm() / dx0.float().norm()).item()
        out[f"M{M}"] = row
        print(M, json.dumps(row), flush=True)
    json.dump(out, open(sys.argv[1], "w"), indent=1)


main()
