"""Causal attention's forward and backward at the training shapes, by kernel (issue 20, GPU).

    python3 bench/attention_impl_probe.py --out DIR

For each shape (the 1B full fine-tune's and the 7B LoRA recipe's) it times SDPA through cuDNN,
through torch's built-in flash kernel (FlashAttention-2), and, where ``flash-attn-4`` imports (bench/fa4_setup.sh),
FlashAttention-4 (CuTe DSL) three ways: activated into SDPA's flash kernel
(``torch.nn.attention.activate_flash_attention_impl("FA4")``) eager and inside ``torch.compile``,
and ``flash_attn.cute.flash_attn_func`` called directly. Each row holds the median milliseconds
of a forward plus backward, the TFLOP/s that makes (causal FLOPs: 2 B H S^2 D forward, 2.5 times
that backward), the first call's seconds (kernel compilation included) and the largest
difference of the output and the gradients from cuDNN's. Writes DIR/attention_impls.json.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
import traceback
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

SHAPES = {  # name: (batch, seq, query heads, key/value heads, head dim)
    "full1b_mb16": (16, 2048, 16, 8, 128),
    "lora7b_mb1": (1, 2048, 32, 32, 128),
    "lora7b_mb4": (4, 2048, 32, 32, 128),
}


def _sdpa(backend):
    def attend(q, k, v):  # [B, S, H, D] in, out
        q, k, v = (t.transpose(1, 2) for t in (q, k, v))
        with sdpa_kernel([backend]):
            out = F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True)
        return out.transpose(1, 2)

    return attend


def _fa4_direct():
    from flash_attn.cute import flash_attn_func

    def attend(q, k, v):
        out = flash_attn_func(q, k, v, causal=True)
        return out[0] if isinstance(out, tuple) else out

    return attend


def _inputs(shape, seed=0):
    B, S, H, K, D = shape
    g = torch.Generator(device="cuda").manual_seed(seed)
    make = lambda h: torch.randn(B, S, h, D, device="cuda", dtype=torch.bfloat16, generator=g)  # noqa: E731
    q, k, v = make(H), make(K), make(K)
    grad = make(H)
    return [t.requires_grad_() for t in (q, k, v)], grad


def _fwd_bwd(fn, qkv, grad):
    for t in qkv:
        t.grad = None
    out = fn(*qkv)
    out.backward(grad)
    return out.detach(), [t.grad.detach() for t in qkv]


def _time(fn, qkv, grad, repeats):
    start = time.perf_counter()
    _fwd_bwd(fn, qkv, grad)
    torch.cuda.synchronize()
    first_s = time.perf_counter() - start
    for _ in range(3):
        _fwd_bwd(fn, qkv, grad)
    times = []
    for _ in range(repeats):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        _fwd_bwd(fn, qkv, grad)
        b.record()
        torch.cuda.synchronize()
        times.append(a.elapsed_time(b))
    return first_s, statistics.median(times)


def _fa4_activation() -> str | None:
    """Activate FA4 into SDPA's flash kernel; why not, or None once active."""
    try:
        import flash_attn.cute  # noqa: F401
    except Exception as exc:
        return f"flash_attn.cute not importable: {type(exc).__name__}: {exc}"
    try:
        from torch.nn.attention import activate_flash_attention_impl, list_flash_attention_impls

        if "FA4" not in list_flash_attention_impls():
            return f"torch {torch.__version__} lists {list_flash_attention_impls()}"
        activate_flash_attention_impl("FA4")
    except Exception as exc:
        return f"activation failed: {type(exc).__name__}: {exc}"
    return None


def measure(shape, kernels, repeats):
    B, S, H, _, D = shape
    flops = 3.5 * 2 * B * H * S * S * D
    qkv, grad = _inputs(shape)
    ref_out, ref_grads = _fwd_bwd(kernels["sdpa[cudnn]"], qkv, grad)
    rows = {}
    for name, fn in kernels.items():
        try:
            first_s, ms = _time(fn, qkv, grad, repeats)
            out, grads = _fwd_bwd(fn, qkv, grad)
            diffs = [
                (a.float() - b.float()).abs().max().item()
                for a, b in zip([out, *grads], [ref_out, *ref_grads], strict=True)
            ]
            rows[name] = {
                "ms": ms,
                "tflops": flops / ms / 1e9,
                "first_call_s": first_s,
                "max_abs_diff_vs_cudnn": dict(zip(["out", "dq", "dk", "dv"], diffs, strict=True)),
            }
        except Exception as exc:
            rows[name] = {
                "error": f"{type(exc).__name__}: {exc}",
                "where": traceback.format_exc(limit=-3),
            }
        print(name, json.dumps(rows[name])[:300], flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--repeats", type=int, default=10)
    args = parser.parse_args()
    kernels = {
        "sdpa[cudnn]": _sdpa(SDPBackend.CUDNN_ATTENTION),
        "sdpa[flash2]": _sdpa(SDPBackend.FLASH_ATTENTION),
    }
    result = {"device": torch.cuda.get_device_name(), "torch": torch.__version__, "shapes": {}}
    per_shape = {name: measure(shape, kernels, args.repeats) for name, shape in SHAPES.items()}
    why_not = _fa4_activation()
    result["fa4"] = why_not or "activated"
    if why_not is None:
        fa4 = {
            "sdpa[fa4]": _sdpa(SDPBackend.FLASH_ATTENTION),
            "sdpa[fa4]+compile": torch.compile(_sdpa(SDPBackend.FLASH_ATTENTION)),
            "fa4_direct": _fa4_direct(),
            "sdpa[cudnn]": _sdpa(SDPBackend.CUDNN_ATTENTION),
        }
        for name, shape in SHAPES.items():
            per_shape[name].update(
                {k: v for k, v in measure(shape, fa4, args.repeats).items() if k != "sdpa[cudnn]"}
            )
    for name, shape in SHAPES.items():
        result["shapes"][name] = {"shape_BSHKD": shape, "rows": per_shape[name]}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "attention_impls.json").write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
