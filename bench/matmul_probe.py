"""Decoding's matrix products on one GPU, per implementation (h200_decode.md, sixth session).

    python3 bench/matmul_probe.py --out probe.json

Each row: a weight shape of `llama-1b-bench` or `llama2-7b-mtp`, M input rows (1: a plain batch-1
step; 5: a self-speculative verify step with 4 heads), and the time per product of:
- `single`: one layer's product `F.linear(x, W)` with cuBLAS, cuBLASLt
  (`torch.backends.cuda.preferred_blas_library`), the weight stored transposed (`x @ W.T` as
  `mm(x, Wt)`), and, at M = 1 for the 1B shapes, Inductor's max-autotune (which turns a batch-1
  product into a reduction with coordinate-descent tuning);
- `heads`: four head layers' products of one projection: four `F.linear`s, one `bmm` over the
  weights stacked `[4, out, in]` (as `StackedLayers` keeps them) or `[4, in, out]`, and one
  `F.linear` of all inputs against all four weights (four times the FLOPs, one kernel).
- `split` (`--kinds split`, M = 1, 5 and 20): cuBLAS's product against one `bmm` over k slices
  of the input dimension (k = 2, 4, 8; the weight viewed, not copied), the k partial sums left
  to the kernel after it as a compiled decoding step leaves them
  (`bench/decode_probe.py --products split`, measured slower: not shipped).
Timing: R copies of the weights (600 MB or more, well past the 50 MB L2, so every product reads
its weights from memory as a decoding step does), one CUDA graph of R products in a row,
replayed 20 times; bandwidth = weight bytes / time per product. `single` also times cuBLAS on
one copy, R times in a row (`cublas_l2_us`: the weights stay in the L2 where they fit): what a
product would cost if its weights were brought into the L2 before it ran, the bound on
prefetching a step's next weights while its attention and small kernels leave memory idle.
"""

from __future__ import annotations

import argparse
import json

import torch
import torch.nn.functional as F

SHAPES = {  # (out, in) of nn.Linear's weight; q/k/v and w1/w3 fused as decoding runs them
    "1b.qkv": (4096, 2048),
    "1b.wo": (2048, 2048),
    "1b.w13": (11264, 2048),
    "1b.w2": (2048, 5632),
    "1b.unembed": (32000, 2048),
    "7b.qkv": (12288, 4096),
    "7b.wo": (4096, 4096),
    "7b.w13": (22016, 4096),
    "7b.w2": (4096, 11008),
}
HEADS = 4


def us_per_product(fn, weights: list[torch.Tensor], xs: list[torch.Tensor], reps: int = 20):
    """Microseconds per ``fn(x, w)``, replayed from one CUDA graph of every pair in turn."""
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):  # warm-up (and any compilation) off the capture
        for _ in range(2):
            for w, x in zip(weights, xs, strict=True):
                fn(x, w)
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        [fn(x, w) for w, x in zip(weights, xs, strict=True)]
    graph.replay()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    torch.cuda.synchronize()
    start.record()
    for _ in range(reps):
        graph.replay()
    end.record()
    torch.cuda.synchronize()
    return start.elapsed_time(end) * 1e3 / (reps * len(weights))


def _copies(shape: tuple[int, ...]) -> list[torch.Tensor]:
    nbytes = torch.Size(shape).numel() * 2
    count = max(4, -(-600_000_000 // nbytes))
    return [torch.randn(shape, device="cuda", dtype=torch.bfloat16) for _ in range(count)]


def _linear(x, w):
    return F.linear(x, w)


def single(name: str, out: int, inp: int, m: int) -> dict:
    ws = _copies((out, inp))
    wts = [w.t().contiguous() for w in ws]
    xs = [torch.randn(m, inp, device="cuda", dtype=torch.bfloat16) for _ in ws]
    row: dict = {"kind": "single", "shape": name, "M": m, "weight_mb": out * inp * 2 / 1e6}
    for library in ("cublas", "cublaslt"):
        torch.backends.cuda.preferred_blas_library(library)
        row[f"{library}_us"] = us_per_product(_linear, ws, xs)
        row[f"{library}_transposed_us"] = us_per_product(torch.mm, wts, xs)
    torch.backends.cuda.preferred_blas_library("cublas")
    row["cublas_l2_us"] = us_per_product(_linear, ws[:1] * len(ws), xs)
    if m == 1 and name.startswith("1b"):
        torch._dynamo.reset()
        tuned = torch.compile(_linear, mode="max-autotune-no-cudagraphs", dynamic=False)
        row["inductor_max_autotune_us"] = us_per_product(tuned, ws, xs)
    return row


def heads(name: str, out: int, inp: int, m: int) -> dict:
    stacks = _copies((HEADS, out, inp))
    stacks_t = [s.transpose(1, 2).contiguous() for s in stacks]
    xs = [torch.randn(HEADS, m, inp, device="cuda", dtype=torch.bfloat16) for _ in stacks]
    row: dict = {"kind": "heads", "shape": name, "M": m, "weight_mb": HEADS * out * inp * 2 / 1e6}
    row["separate_us"] = us_per_product(
        lambda x, w: [F.linear(x[i], w[i]) for i in range(HEADS)], stacks, xs
    )
    row["bmm_us"] = us_per_product(lambda x, w: torch.bmm(x, w.transpose(1, 2)), stacks, xs)
    row["bmm_transposed_us"] = us_per_product(torch.bmm, stacks_t, xs)
    row["all_against_all_us"] = us_per_product(
        lambda x, w: F.linear(x.reshape(-1, inp), w.view(-1, inp)), stacks, xs
    )
    return row


SPLITS = (2, 4, 8)


def _split_view(w: torch.Tensor, k: int) -> torch.Tensor:
    """``[out, in]`` as ``[k, in / k, out]``: k slices of the input dimension, no copy."""
    out, inp = w.shape
    return w.view(out, k, inp // k).permute(1, 2, 0)


def split(name: str, out: int, inp: int, m: int) -> dict:
    """A product split along its input dimension into k parts: one ``bmm`` of k products (k
    times the programs for a short output), timed without the sum of the k partial products:
    a compiled decoding step adds them in the kernel that reads them (the residual add, RoPE,
    SwiGLU; ``decode_probe.split_linear``, measured slower: not shipped)."""
    ws = _copies((out, inp))
    xs = [torch.randn(m, inp, device="cuda", dtype=torch.bfloat16) for _ in ws]
    row: dict = {"kind": "split", "shape": name, "M": m, "weight_mb": out * inp * 2 / 1e6}
    row["cublas_us"] = us_per_product(_linear, ws, xs)
    for k in SPLITS:
        if inp % k:
            continue

        def parts(x, w, k=k):  # [k, m, out]
            return torch.bmm(x.view(m, k, -1).transpose(0, 1), _split_view(w, k))

        row[f"split{k}_bmm_us"] = us_per_product(parts, ws, xs)
        torch.cuda.empty_cache()
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, help="JSON file for the rows")
    parser.add_argument("--kinds", default="single,heads", help="single, heads, split (any of)")
    parser.add_argument("--shapes", default="1b,7b", help="the model prefixes of SHAPES to time")
    args = parser.parse_args()
    rows = []
    for kind in args.kinds.split(","):
        probe = {"single": single, "heads": heads, "split": split}[kind]
        for name, (out, inp) in SHAPES.items():
            if name.split(".")[0] not in args.shapes.split(","):
                continue
            if kind == "heads" and name.endswith("unembed"):
                continue  # the heads share one unembedding
            for m in (1, 5, 20) if kind == "split" else (1, 5):  # 20: a batch of 20 rows
                row = probe(name, out, inp, m)
                for key in [k for k in row if k.endswith("_us")]:
                    row[key[:-3] + "_tb_per_s"] = row["weight_mb"] / row[key]  # MB/us = TB/s
                print(json.dumps(row), flush=True)
                rows.append(row)
                torch.cuda.empty_cache()
    with open(args.out, "w") as f:
        json.dump(rows, f, indent=1)


if __name__ == "__main__":
    main()
