"""``wmtp bench attention``: every attention backend over training shapes, on the current GPU.

For each shape and backend: forward and forward+backward time (CUDA-event timings of repeats
launched back to back: the median of each round's median; every round times every backend, in a
new random order each round, so that neither clock drift nor a backend's place in the round
favours one),
TFLOP/s (causal attention FLOPs: 4·B·H·S²·D/2 forward, 2.5× that backward), peak memory, and the
error against ``eager`` in fp32 on the same inputs. SDPA is measured as PyTorch chooses and with
each kernel forced (flash, cuDNN, memory-efficient). FlexAttention also gets a sweep of its kernel
options (block sizes, warps, stages), the way flash-attention kernels are tuned. ``auto`` is
measured as a backend of its own (what a recipe with ``attention = "auto"`` runs here) and
compared with the fastest other backend of each shape (``auto_vs_fastest``).
"""

from __future__ import annotations

import json
import random
import statistics
from collections.abc import Callable
from dataclasses import asdict, dataclass
from datetime import date
from pathlib import Path

import torch

from wmtp.bench.timing import memory_added_gib, static_compile_shapes, time_call
from wmtp.models.attention import (
    SeqInfo,
    _flash_attn_module,
    eager_attend,
    kernel,
    resolve,
)
from wmtp.models.backends import BACKENDS


@dataclass(frozen=True)
class Shape:
    batch: int
    seq_len: int
    heads: int
    kv_heads: int
    head_dim: int
    documents: tuple[int, ...] = ()
    """Document lengths of each row for a packed batch; empty for one sequence per row."""

    @property
    def label(self) -> str:
        docs = f" packed({len(self.documents)} docs/row)" if self.documents else ""
        return (
            f"B{self.batch} S{self.seq_len} H{self.heads}/KV{self.kv_heads} D{self.head_dim}{docs}"
        )

    def fwd_flops(self) -> float:
        """Causal attention FLOPs of the forward: QK^T and PV over the allowed half."""
        lengths = self.documents or (self.seq_len,)
        pairs = sum(n * n for n in lengths) / 2
        return 4 * self.batch * self.heads * pairs * self.head_dim


def default_shapes() -> list[Shape]:
    """Training shapes: 16k tokens a batch, seq 512..8192, GQA and MHA, head dim 64/128, packed."""
    shapes = []
    for seq_len in (512, 1024, 2048, 4096, 8192):
        batch = max(1, 16384 // seq_len)
        shapes.append(Shape(batch, seq_len, 16, 8, 128))
    shapes.append(Shape(8, 2048, 32, 32, 128))  # llama2-7b attention
    shapes.append(Shape(8, 2048, 32, 8, 64))
    # packed rows of documents of mixed lengths: few long ones to many short ones
    mixed = (1024, 512, 256, 1536, 128, 384, 192, 64)  # 4096 tokens a row
    shapes.append(Shape(4, 4096, 16, 8, 128, documents=mixed))
    shapes.append(Shape(8, 2048, 16, 8, 128, documents=(1024, 512, 384, 128)))
    shapes.append(Shape(4, 4096, 16, 8, 128, documents=(3072, 1024)))
    shapes.append(Shape(2, 8192, 16, 8, 128, documents=(2048, 96, 1024, 512) * 2 + (52,) * 16))
    return shapes


def _sdpa_forced(kernel_name: str) -> Callable:
    from torch.nn.attention import SDPBackend, sdpa_kernel

    forced = {
        "flash": SDPBackend.FLASH_ATTENTION,
        "cudnn": SDPBackend.CUDNN_ATTENTION,
        "efficient": SDPBackend.EFFICIENT_ATTENTION,
    }[kernel_name]
    sdpa = kernel("sdpa")

    def attend(q, k, v, seq=None):
        with sdpa_kernel([forced]):
            return sdpa(q, k, v, seq)

    return attend


def candidates(device: torch.device, dtype: torch.dtype) -> dict[str, Callable | str]:
    """Backend label -> attend function, or the reason it cannot run here (training: every
    shape is timed forward and backward). Every backend of the table, sdpa forced to each of its
    kernels, and ``auto`` (what a recipe's ``attention = "auto"`` runs here)."""
    out: dict[str, Callable | str] = {}
    dtype_name = str(dtype).removeprefix("torch.")
    for name, entry in BACKENDS.items():
        why = entry.why_not(torch.device(device).type, dtype_name, training=True)
        out[name] = why if why else kernel(name)
    for sdpa_kernel_name in ("flash", "cudnn", "efficient"):
        out[f"sdpa[{sdpa_kernel_name}]"] = _sdpa_forced(sdpa_kernel_name)
    out["auto"] = resolve("auto", device, dtype, training=True).attend
    return out


def _inputs(shape: Shape, device, dtype, *, grad: bool):
    g = torch.Generator(device=device).manual_seed(0)
    q = torch.randn(
        shape.batch,
        shape.seq_len,
        shape.heads,
        shape.head_dim,
        device=device,
        dtype=dtype,
        generator=g,
    )
    k = torch.randn(
        shape.batch,
        shape.seq_len,
        shape.kv_heads,
        shape.head_dim,
        device=device,
        dtype=dtype,
        generator=g,
    )
    v = torch.randn(k.shape, device=device, dtype=dtype, generator=g)
    if grad:
        for t in (q, k, v):
            t.requires_grad_(True)
    seq = None
    if shape.documents:
        seq = SeqInfo.packed([list(shape.documents)] * shape.batch, device=device)
    return q, k, v, seq


def _relative_error(out: torch.Tensor, ref: torch.Tensor) -> float:
    return float((out.float() - ref).norm() / ref.norm())


def measure(shape: Shape, name: str, attend: Callable, device, dtype, *, reference) -> dict:
    """One backend on one shape: memory and error against the fp32 eager output; its times come
    from :func:`time_rounds`."""
    q, k, v, seq = _inputs(shape, device, dtype, grad=True)
    grad_out = torch.randn_like(q)
    row = {"shape": shape.label, "backend": name, **asdict(shape)}
    try:
        with torch.no_grad():
            out = attend(q, k, v, seq)
        row["rel_error_vs_eager"] = _relative_error(out, reference)
        row |= {"fwd_ms_rounds": [], "fwd_bwd_ms_rounds": []}

        def fwd_bwd():
            attend(q, k, v, seq).backward(grad_out)

        row["peak_memory_gib"] = memory_added_gib(fwd_bwd)
    except Exception as exc:  # a kernel that refuses this shape: record why, keep going
        row["error"] = f"{type(exc).__name__}: {str(exc).splitlines()[0][:200]}"
    return row


def time_round(row: dict, attend: Callable, inputs: tuple) -> None:
    """One round of timings of ``attend`` (forward, forward+backward) appended to ``row``, whose
    ms and TFLOP/s become the median over its rounds."""
    q, k, v, seq, grad_out = inputs
    fwd = time_call(lambda: attend(q, k, v, seq), warmup=3, repeats=10, queued=True)
    both = time_call(
        lambda: attend(q, k, v, seq).backward(grad_out), warmup=3, repeats=10, queued=True
    )
    row["fwd_ms_rounds"].append(fwd.median_ms)
    row["fwd_bwd_ms_rounds"].append(both.median_ms)
    flops = _shape_of(row).fwd_flops()
    row["fwd_ms"] = statistics.median(row["fwd_ms_rounds"])
    row["fwd_bwd_ms"] = statistics.median(row["fwd_bwd_ms_rounds"])
    row["fwd_tflops"] = flops / (row["fwd_ms"] * 1e-3) / 1e12
    row["fwd_bwd_tflops"] = 3.5 * flops / (row["fwd_bwd_ms"] * 1e-3) / 1e12


def _shape_of(row: dict) -> Shape:
    return Shape(**{f: row[f] for f in Shape.__dataclass_fields__})


def time_rounds(
    shape: Shape, rows: list[dict], backends: dict, device, dtype, rounds: int, seed: int = 0
):
    """``rounds`` rounds of timings of every backend that ran on ``shape``, in a new random order
    each round: a backend's place in the round (after a slow one, after a hot one) would
    otherwise bias it the same way every time."""
    q, k, v, seq = _inputs(shape, device, dtype, grad=True)
    inputs = (q, k, v, seq, torch.randn_like(q))
    order = [row for row in rows if "error" not in row]
    shuffle = random.Random(seed).shuffle
    for _ in range(rounds):
        shuffle(order)
        for row in order:
            time_round(row, backends[row["backend"]], inputs)


def auto_vs_fastest(rows: list[dict]) -> list[dict]:
    """Per shape: ``auto``'s forward+backward time against the fastest other backend's."""
    by_shape: dict[str, list[dict]] = {}
    for row in rows:
        if "error" not in row:
            by_shape.setdefault(row["shape"], []).append(row)
    out = []
    for shape, measured in by_shape.items():
        auto = next((r for r in measured if r["backend"] == "auto"), None)
        others = [r for r in measured if r["backend"] != "auto"]
        if auto is None or not others:
            continue
        fastest = min(others, key=lambda r: r["fwd_bwd_ms"])
        out.append(
            {
                "shape": shape,
                "fastest": fastest["backend"],
                "fastest_ms": fastest["fwd_bwd_ms"],
                "auto_ms": auto["fwd_bwd_ms"],
                "auto_over_fastest": auto["fwd_bwd_ms"] / fastest["fwd_bwd_ms"],
            }
        )
    return out


def flex_sweep(shape: Shape, device, dtype) -> list[dict]:
    """FlexAttention kernel options on one shape: forward+backward time per configuration."""
    from torch.nn.attention.flex_attention import create_block_mask, flex_attention

    compiled = torch.compile(flex_attention, dynamic=False)
    q, k, v, _ = _inputs(shape, device, dtype, grad=True)
    q, k, v = (t.detach().transpose(1, 2).contiguous().requires_grad_(True) for t in (q, k, v))
    mask = create_block_mask(
        lambda b, h, qi, ki: qi >= ki, None, None, shape.seq_len, shape.seq_len, device=device
    )
    rows = []
    for block_m, block_n, warps, stages in (
        (128, 64, 4, 3),
        (128, 128, 8, 3),
        (64, 64, 4, 3),
        (128, 64, 8, 2),
        (64, 128, 4, 2),
    ):
        options = {"BLOCK_M": block_m, "BLOCK_N": block_n, "num_warps": warps, "num_stages": stages}
        row = {"shape": shape.label, **options}
        try:

            def run(options=options):
                out = compiled(q, k, v, block_mask=mask, enable_gqa=True, kernel_options=options)
                out.sum().backward()

            t = time_call(run, warmup=2, repeats=8)
            row |= {
                "fwd_bwd_ms": t.median_ms,
                "fwd_bwd_tflops": 3.5 * shape.fwd_flops() / (t.median_ms * 1e-3) / 1e12,
            }
        except Exception as exc:
            row["error"] = f"{type(exc).__name__}: {str(exc).splitlines()[0][:200]}"
        rows.append(row)
    return rows


def run_attention_bench(
    out_dir: Path, *, dtype=torch.bfloat16, shapes=None, sweep=True, rounds: int = 3
) -> dict:
    """Every backend on every shape, ``rounds`` times in turn; writes attention.json and
    attention.md under ``out_dir``."""
    assert torch.cuda.is_available(), "wmtp bench attention needs a CUDA GPU"
    static_compile_shapes()  # flex compiles per shape and grad mode: past the default limit
    device = torch.device("cuda")
    backends = candidates(device, dtype)
    rows = []
    for shape in shapes or default_shapes():
        q, k, v, seq = _inputs(shape, device, dtype, grad=False)
        with torch.no_grad():  # the reference: eager in fp32 on the same inputs
            reference = eager_attend(q.float(), k.float(), v.float(), seq).float()
        del q, k, v
        shape_rows = []
        for name, attend in backends.items():
            if isinstance(attend, str):
                shape_rows.append({"shape": shape.label, "backend": name, "error": attend})
                continue
            shape_rows.append(measure(shape, name, attend, device, dtype, reference=reference))
        del reference
        time_rounds(shape, shape_rows, backends, device, dtype, rounds)
        for row in shape_rows:
            print(_row_line(row), flush=True)
        rows += shape_rows
        torch.cuda.empty_cache()
    sweep_rows = flex_sweep(Shape(4, 4096, 16, 8, 128), device, dtype) if sweep else []
    result = {
        "device": torch.cuda.get_device_name(),
        "torch": torch.__version__,
        "flash_attn": _flash_attn_module()[1],
        "date": date.today().isoformat(),
        "auto": resolve("auto", device, dtype, training=True).reason,
        "dtype": str(dtype).removeprefix("torch."),
        "rounds": rounds,
        "rows": rows,
        "auto_vs_fastest": auto_vs_fastest(rows),
        "flex_sweep": sweep_rows,
    }
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "attention.json").write_text(json.dumps(result, indent=2))
    (out_dir / "attention.md").write_text(markdown_table(result))
    return result


def _row_line(row: dict) -> str:
    if "error" in row:
        return f"{row['shape']:<40} {row['backend']:<16} -- {row['error'][:80]}"
    return (
        f"{row['shape']:<40} {row['backend']:<16} fwd {row['fwd_ms']:7.3f} ms "
        f"fwd+bwd {row['fwd_bwd_ms']:7.3f} ms {row['fwd_bwd_tflops']:6.1f} TFLOP/s "
        f"err {row['rel_error_vs_eager']:.1e}"
    )


def markdown_table(result: dict) -> str:
    lines = [
        f"Attention on {result['device']}, torch {result['torch']}, {result['dtype']}; "
        f"median over {result['rounds']} rounds (every backend once a round, in a new random "
        "order) of the median of 10 back-to-back CUDA-event timings; "
        "error = ||out - eager_fp32|| / ||eager_fp32||.",
        f"`auto`: {result.get('auto', '?')}; {result.get('flash_attn', '')}.",
        "",
        "| shape | backend | fwd ms | fwd TFLOP/s | fwd+bwd ms | fwd+bwd TFLOP/s | peak GiB | rel. error |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in result["rows"]:
        if "error" in r:
            lines.append(f"| {r['shape']} | {r['backend']} | n/a: {r['error'][:90]} | | | | | |")
            continue
        lines.append(
            f"| {r['shape']} | {r['backend']} | {r['fwd_ms']:.3f} | {r['fwd_tflops']:.0f} | "
            f"{r['fwd_bwd_ms']:.3f} | {r['fwd_bwd_tflops']:.0f} | {r['peak_memory_gib']:.2f} | "
            f"{r['rel_error_vs_eager']:.1e} |"
        )
    lines += [
        "",
        "`auto` against the fastest other backend (forward+backward):",
        "",
        "| shape | fastest | ms | auto ms | auto / fastest |",
        "|---|---|---|---|---|",
    ]
    for a in result["auto_vs_fastest"]:
        lines.append(
            f"| {a['shape']} | {a['fastest']} | {a['fastest_ms']:.3f} | {a['auto_ms']:.3f} "
            f"| {a['auto_over_fastest']:.2f}x |"
        )
    if result["flex_sweep"]:
        lines += [
            "",
            "FlexAttention kernel options (forward+backward):",
            "",
            "| shape | BLOCK_M | BLOCK_N | warps | stages | ms | TFLOP/s |",
            "|---|---|---|---|---|---|---|",
        ]
        for r in result["flex_sweep"]:
            cells = (
                f"{r['fwd_bwd_ms']:.3f} | {r['fwd_bwd_tflops']:.0f}"
                if "error" not in r
                else f"n/a: {r['error'][:60]} |"
            )
            lines.append(
                f"| {r['shape']} | {r['BLOCK_M']} | {r['BLOCK_N']} | {r['num_warps']} "
                f"| {r['num_stages']} | {cells} |"
            )
    return "\n".join(lines) + "\n"
