"""GPU check of every attention backend against the fp32 eager reference (not a test).

    python -m wmtp.models.gpu_check --out gpu_check.json

For each backend (sdpa with default dispatch, sdpa forced to each kernel, flex, varlen,
flash_attn), each dtype (bf16, fp16) and each layout (causal GQA, right-padded, packed), it runs
forward and backward on the same inputs and records the error against eager attention computed in
fp32 on those inputs (the inputs are rounded to the dtype first, so only the kernel differs):

* ``out_rel``: ``max |out - ref| / max |ref|``, and ``grad_rel`` the same for dq, dk, dv (worst);
* ``eager_<dtype>`` rows give the floor: the reference itself run in the low dtype.

Then a small LlamaMTP per backend: logits against eager, and KV-cache decoding against the full
forward. A backend that cannot run records why (``error``) instead of stopping the check.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import platform
import sys
import time
import traceback

import torch

from wmtp.models.attention import SeqInfo, _flash_attn_module, _varlen_fn, eager_attend, kernel
from wmtp.models.backends import NAMES

SHAPE = {"B": 2, "S": 512, "H": 16, "K": 8, "D": 128}  # the ~1B benchmark's attention shape
PACKED_LENGTHS = [[100, 250, 37, 125], [512]]
PADDED_REAL = 301  # real tokens of a right-padded row; only those are compared
DEVICE = "cuda"  # --device cpu with --tiny is a dry run of this script itself


def sdpa_variants() -> dict[str, list]:
    """Forced-kernel SDPA variants: name -> list of SDPBackend (empty = default dispatch)."""
    from torch.nn.attention import SDPBackend

    variants = {"sdpa": []}
    for sdpa_kernel in ("FLASH_ATTENTION", "EFFICIENT_ATTENTION", "CUDNN_ATTENTION", "MATH"):
        if hasattr(SDPBackend, sdpa_kernel):
            variants[f"sdpa[{sdpa_kernel.lower()}]"] = [getattr(SDPBackend, sdpa_kernel)]
    return variants


def kernel_context(kernels: list):
    if not kernels:
        return contextlib.nullcontext()
    from torch.nn.attention import sdpa_kernel

    return sdpa_kernel(kernels)


def rel(a: torch.Tensor, ref: torch.Tensor) -> float:
    return float((a.float() - ref.float()).abs().max() / ref.float().abs().max().clamp_min(1e-30))


def make_inputs(dtype: torch.dtype, seed: int = 0):
    g = torch.Generator(device=DEVICE).manual_seed(seed)
    B, S, H, K, D = (SHAPE[k] for k in "BSHKD")

    def rand(*shape):
        return torch.randn(*shape, device=DEVICE, generator=g).to(dtype)

    return rand(B, S, H, D), rand(B, S, K, D), rand(B, S, K, D), rand(B, S, H, D)


def layouts() -> dict[str, SeqInfo | None]:
    return {
        "causal": None,
        "padded": None,  # right padding: causal is exact for the real tokens, compared below
        "packed": SeqInfo.packed(PACKED_LENGTHS, device=DEVICE),
    }


def run_attention(fn, q, k, v, grad_out, seq, kernels):
    q, k, v = (t.detach().clone().requires_grad_() for t in (q, k, v))
    with kernel_context(kernels):
        out = fn(q, k, v, seq)
        (out.float() * grad_out.float()).sum().backward()
    return out.detach(), [t.grad for t in (q, k, v)]


def compare_one(name, fn, kernels, dtype, layout, seq) -> dict:
    q, k, v, grad_out = make_inputs(dtype)
    if layout == "padded":
        grad_out[:, PADDED_REAL:] = 0  # padding positions' outputs are never read
    ref_out, ref_grads = run_attention(
        eager_attend, q.float(), k.float(), v.float(), grad_out, seq, []
    )
    out, grads = run_attention(fn, q, k, v, grad_out, seq, kernels)
    keep = slice(0, PADDED_REAL) if layout == "padded" else slice(None)
    finite = bool(torch.isfinite(out).all()) and all(bool(torch.isfinite(g).all()) for g in grads)
    return {
        "backend": name,
        "dtype": _name(dtype),
        "layout": layout,
        "out_rel": rel(out[:, keep], ref_out[:, keep]),
        "grad_rel": max(rel(g[:, keep], r[:, keep]) for g, r in zip(grads, ref_grads, strict=True)),
        "finite": finite,
    }


def attention_rows() -> list[dict]:
    fns = {name: (kernel("sdpa"), kernels) for name, kernels in sdpa_variants().items()}
    fns |= {name: (kernel(name), []) for name in NAMES if name not in ("eager", "sdpa")}
    fns |= {"eager": (eager_attend, [])}  # the floor: the reference run in the low dtype
    rows = []
    for dtype in (torch.bfloat16, torch.float16):
        for layout, seq in layouts().items():
            for name, (fn, kernels) in fns.items():
                label = {"backend": name, "dtype": _name(dtype), "layout": layout}
                rows.append(_guarded(label, compare_one, name, fn, kernels, dtype, layout, seq))
                print(json.dumps(rows[-1]), flush=True)
    return rows


def model_rows() -> list[dict]:
    """A small LlamaMTP per backend: logits vs eager, KV-cache decoding vs full forward."""
    from wmtp.models.args import ModelArgs
    from wmtp.models.kv_cache import Decoder
    from wmtp.models.llama_mtp import LlamaMTP

    args = ModelArgs(dim=512, n_layers=4, n_heads=8, n_kv_heads=4, vocab_size=1000,
                     multiple_of=64, max_seq_len=256, n_future_tokens=2)  # fmt: skip
    rows = []
    for dtype in (torch.bfloat16, torch.float16):
        torch.manual_seed(0)
        model = LlamaMTP(args, attention="eager").to(device=DEVICE, dtype=dtype).eval()
        tokens = torch.randint(0, args.vocab_size, (2, 200), device=DEVICE)
        with torch.no_grad():
            ref = model.float()(tokens)
            model.to(dtype)
        for name in NAMES:

            def check(name=name, model=model, tokens=tokens, ref=ref, dtype=dtype):
                model.set_attention(name)
                with torch.no_grad():
                    full = model(tokens)
                    decoder = Decoder(model, batch_size=2, max_len=200)
                    steps = [decoder.prefill(tokens[:, :150]), decoder.step(tokens[:, 150:160])]
                    steps += [decoder.step(tokens[:, t : t + 1]) for t in range(160, 200)]
                    cached = torch.cat(steps, dim=1)
                return {
                    "backend": name,
                    "dtype": _name(dtype),
                    "layout": "model",
                    "logits_rel_vs_fp32_eager": rel(full, ref),
                    "kv_cache_rel_vs_full": rel(cached, full),
                    "finite": bool(torch.isfinite(full).all()),
                }

            label = {"backend": name, "dtype": _name(dtype), "layout": "model"}
            rows.append(_guarded(label, check))
            print(json.dumps(rows[-1]), flush=True)
    return rows


def _guarded(label: dict, fn, *args) -> dict:
    """Run one check; an exception becomes a row (``label`` + ``error``) saying why."""
    start = time.time()
    try:
        row = fn(*args)
    except Exception as exc:
        row = {
            **label,
            "error": f"{type(exc).__name__}: {str(exc)[:400]}",
            "where": traceback.format_exc(limit=3)[-600:],
        }
    row["seconds"] = round(time.time() - start, 2)
    return row


def _name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def environment() -> dict:
    fa_why = _flash_attn_module()[1]
    varlen_why = _varlen_fn()[2]
    return {
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "device": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
        "python": platform.python_version(),
        "flash_attn": fa_why,
        "varlen": varlen_why,
        "shape": SHAPE,
        "packed_lengths": PACKED_LENGTHS,
        "padded_real_tokens": PADDED_REAL,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", required=True, help="JSON file for the results")
    parser.add_argument("--skip-model", action="store_true", help="attention kernels only")
    parser.add_argument("--device", default="cuda", help="cpu: a dry run of the script itself")
    parser.add_argument("--tiny", action="store_true", help="small shapes (dry runs)")
    opts = parser.parse_args(argv)
    global DEVICE, PACKED_LENGTHS, PADDED_REAL
    DEVICE = opts.device
    if opts.tiny:
        SHAPE.update(S=32, H=4, K=2, D=16)
        PACKED_LENGTHS, PADDED_REAL = [[5, 20, 7], [32]], 19
    report: dict = {"environment": environment()}
    if DEVICE == "cuda" and not torch.cuda.is_available():
        report["error"] = "no CUDA device: this check runs on a GPU"
    else:
        report["attention"] = attention_rows()
        report["model"] = [] if opts.skip_model else model_rows()
        report["summary"] = summary(report["attention"] + report["model"])
    with open(opts.out, "w") as f:
        json.dump(report, f, indent=2)
    if "error" in report:
        print(report["error"], file=sys.stderr)
        return 1
    print(json.dumps(report["summary"], indent=2))
    return 0


def summary(rows: list[dict]) -> dict:
    """Worst relative error per backend and dtype over layouts (or the first error)."""
    out: dict = {}
    for row in rows:
        key = f"{row.get('backend')}/{row.get('dtype', '?')}"
        entry = out.setdefault(key, {"max_rel": 0.0, "errors": []})
        if "error" in row:
            entry["errors"].append(f"{row.get('layout', '?')}: {row['error'][:160]}")
            continue
        errs = [v for k, v in row.items() if k.endswith("_rel") or "_rel_" in k]
        entry["max_rel"] = max(entry["max_rel"], *errs)
        entry["finite"] = entry.get("finite", True) and row.get("finite", True)
    return out


if __name__ == "__main__":
    raise SystemExit(main())
