"""Where a profiled region's GPU time goes, read from a torch.profiler Chrome trace.

:func:`gpu_timeline` reads the trace's device kernels and host operators: device time by kind of
kernel (matrix products, attention, Triton kernels Inductor generated, other eager kernels,
optimizer, copies, communication), the time no kernel ran (idle), that idle time by the host
phase running meanwhile (the ``wmtp.*`` ranges :meth:`wmtp.train.loop.Trainer.train_step` marks
with ``record_function``, else the outermost host operator), and the longest idle gaps with the
kernels on each side. An idle GPU means the host had not yet queued its next kernel: the phase
the host was in says what to move or fuse.
"""

from __future__ import annotations

import gzip
import json
from collections import defaultdict
from pathlib import Path

KERNEL_KINDS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("communication", ("nccl",)),
    ("attention", ("flash", "fmha", "cudnn", "attention", "sdpa")),
    ("matrix products", ("gemm", "nvjet", "cutlass", "xmma", "wgmma", "cublas", "splitk")),
    ("optimizer", ("adam", "multi_tensor", "foreach")),
    ("Triton (Inductor's fused kernels)", ("triton",)),
    ("copies and fills", ("memcpy", "memset", "copy", "fill", "cat", "index")),
)
OTHER = "other eager kernels"
PHASE_PREFIX = "wmtp."
GAP_US = 20.0
"""Idle intervals shorter than this (microseconds) are launch latency, not a host stall."""


def kernel_kind(name: str) -> str:
    low = name.lower()
    for kind, needles in KERNEL_KINDS:
        if any(n in low for n in needles):
            return kind
    return OTHER


def _events(trace: Path | dict) -> list[dict]:
    if isinstance(trace, dict):
        return trace.get("traceEvents", [])
    opener = gzip.open if str(trace).endswith(".gz") else open
    with opener(trace, "rt") as f:
        return json.load(f).get("traceEvents", [])


def _complete(events: list[dict], cats: tuple[str, ...]) -> list[dict]:
    return [
        e
        for e in events
        if e.get("ph") == "X" and e.get("cat") in cats and isinstance(e.get("dur"), (int, float))
    ]


def _idle_gaps(kernels: list[dict]) -> tuple[float, float, list[tuple[float, float, int, int]]]:
    """``(window, busy, gaps)``: the span from the first kernel's start to the last one's end,
    the time some kernel ran, and every idle interval ``(start, end, kernel before, after)``."""
    order = sorted(range(len(kernels)), key=lambda i: kernels[i]["ts"])
    start = kernels[order[0]]["ts"]
    reach, reach_i, busy, gaps = start, order[0], 0.0, []
    for i in order:
        ts, end = kernels[i]["ts"], kernels[i]["ts"] + kernels[i]["dur"]
        if ts > reach:
            gaps.append((reach, ts, reach_i, i))
        if end > reach:
            busy += end - max(ts, reach)
            reach, reach_i = end, i
    return reach - start, busy, gaps


def device_kernels(trace: Path | dict) -> list[dict]:
    """The trace's kernels (Chrome trace events: ``name``, ``ts``, ``dur`` in microseconds) in
    the order they started."""
    return sorted(_complete(_events(trace), ("kernel",)), key=lambda k: k["ts"])


def _phase_at(host: list[dict], t: float) -> str:
    """What the host ran at ``t``: the innermost ``wmtp.*`` range and, inside it, the outermost
    operator (``wmtp.forward_backward / aten::item``); without a range, the outermost operator."""
    around = [e for e in host if e["ts"] <= t < e["ts"] + e["dur"]]
    marked = [e for e in around if e["name"].startswith(PHASE_PREFIX)]
    phase = min(marked, key=lambda e: e["dur"]) if marked else None
    ops = [
        e
        for e in around
        if not e["name"].startswith(("ProfilerStep", PHASE_PREFIX))
        and (phase is None or e["dur"] < phase["dur"])
    ]
    op = max(ops, key=lambda e: e["dur"])["name"] if ops else None
    names = [n for n in (phase and phase["name"], op) if n]
    return " / ".join(names) or "(host outside any operator)"


def gpu_timeline(trace: Path | dict, *, top: int = 12) -> dict:
    """The summary described in the module docstring, in microseconds; ``{}`` without kernels."""
    events = _events(trace)
    kernels = _complete(events, ("kernel", "gpu_memcpy", "gpu_memset"))
    if not kernels:
        return {}
    host = [  # an operator shorter than a stall cannot be the outermost one running in it
        e
        for e in _complete(events, ("cpu_op", "user_annotation"))
        if e["dur"] >= GAP_US or e["name"].startswith(PHASE_PREFIX)
    ]
    by_kind: dict[str, float] = defaultdict(float)
    for k in kernels:
        by_kind[kernel_kind(k["name"])] += k["dur"]
    window, busy, gaps = _idle_gaps(kernels)
    stalls = [g for g in gaps if g[1] - g[0] >= GAP_US]
    idle_by_phase: dict[str, float] = defaultdict(float)
    for g0, g1, _, _ in stalls:
        idle_by_phase[_phase_at(host, (g0 + g1) / 2)] += g1 - g0
    longest = sorted(stalls, key=lambda g: g[0] - g[1])[:top]
    return {
        "window_us": window,
        "busy_us": busy,
        "idle_us": window - busy,
        "stall_us": sum(g1 - g0 for g0, g1, _, _ in stalls),
        "kernels": len(kernels),
        "device_us_by_kind": dict(sorted(by_kind.items(), key=lambda kv: -kv[1])),
        "stall_us_by_host_phase": dict(sorted(idle_by_phase.items(), key=lambda kv: -kv[1])),
        "longest_stalls": [
            {
                "us": g1 - g0,
                "host": _phase_at(host, (g0 + g1) / 2),
                "previous": kernels[a]["name"][:80],
                "next": kernels[b]["name"][:80],
            }
            for g0, g1, a, b in longest
        ],
    }


def timeline_text(summary: dict, *, per: int = 1) -> str:
    """``summary`` as lines of milliseconds (divided by ``per``: the steps profiled)."""
    if not summary:
        return "no device kernels in the trace\n"

    def ms(us: float) -> str:
        return f"{us / 1e3 / per:9.2f} ms"

    window = summary["window_us"]
    lines = [
        f"GPU timeline, per step ({per} profiled): {ms(window)} from first kernel to last",
        f"  busy {ms(summary['busy_us'])}  idle {ms(summary['idle_us'])} "
        f"({summary['idle_us'] / window:.1%}); stalls of {GAP_US:.0f} us or more "
        f"{ms(summary['stall_us'])}",
        "device time by kind of kernel (kernels on several streams may overlap):",
    ]
    lines += [f"  {ms(us)}  {kind}" for kind, us in summary["device_us_by_kind"].items()]
    lines.append("stalls by the host phase running meanwhile:")
    lines += [f"  {ms(us)}  {phase}" for phase, us in summary["stall_us_by_host_phase"].items()]
    lines.append("longest stalls (host phase; kernel before -> kernel after):")
    lines += [
        f"  {s['us'] / 1e3:7.2f} ms  {s['host']}; {s['previous']} -> {s['next']}"
        for s in summary["longest_stalls"]
    ]
    return "\n".join(lines) + "\n"
