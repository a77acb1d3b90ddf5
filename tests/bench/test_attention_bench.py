"""``wmtp bench attention``'s bookkeeping on CPU: rounds of timings in turn, auto vs the fastest.

The timings themselves are GPU figures (CUDA events); here the host clock stands in, on a tiny
shape, to check what is recorded and compared.
"""

from __future__ import annotations

import statistics
from dataclasses import asdict

import torch

from wmtp.bench.attention import (
    Shape,
    auto_vs_fastest,
    candidates,
    time_rounds,
)

SHAPE = Shape(1, 32, 4, 2, 16)
CPU, FP32 = torch.device("cpu"), torch.float32


def test_every_round_is_kept_and_the_median_is_reported():
    backends = {k: v for k, v in candidates(CPU, FP32).items() if k in ("eager", "sdpa", "auto")}
    assert callable(backends["auto"])  # auto is measured as a backend of its own
    rows = []
    for name in backends:
        row = {"shape": SHAPE.label, "backend": name, **asdict(SHAPE)}
        rows.append(row | {"fwd_ms_rounds": [], "fwd_bwd_ms_rounds": []})
    rows.append({"shape": SHAPE.label, "backend": "flash_attn", "error": "not importable"})
    time_rounds(SHAPE, rows, backends, CPU, FP32, rounds=3)
    assert "fwd_ms_rounds" not in rows.pop()  # a backend that cannot run is never timed
    for row in rows:
        assert len(row["fwd_bwd_ms_rounds"]) == len(row["fwd_ms_rounds"]) == 3
        assert row["fwd_bwd_ms"] == statistics.median(row["fwd_bwd_ms_rounds"])
        assert row["fwd_bwd_tflops"] == 3.5 * SHAPE.fwd_flops() / (row["fwd_bwd_ms"] * 1e-3) / 1e12
    (compared,) = auto_vs_fastest(rows)
    others = [r for r in rows if r["backend"] != "auto"]
    fastest = min(others, key=lambda r: r["fwd_bwd_ms"])
    auto = next(r for r in rows if r["backend"] == "auto")
    assert compared["fastest"] == fastest["backend"] != "auto"
    assert compared["auto_over_fastest"] == auto["fwd_bwd_ms"] / fastest["fwd_bwd_ms"]


def test_auto_vs_fastest_skips_failed_backends_and_shapes_without_auto():
    rows = [
        {"shape": "a", "backend": "sdpa", "fwd_bwd_ms": 2.0},
        {"shape": "a", "backend": "flex", "fwd_bwd_ms": 1.0},
        {"shape": "a", "backend": "flash_attn", "error": "not importable"},
        {"shape": "a", "backend": "auto", "fwd_bwd_ms": 1.03},
        {"shape": "b", "backend": "sdpa", "fwd_bwd_ms": 1.0},  # no auto row: not compared
    ]
    assert auto_vs_fastest(rows) == [
        {
            "shape": "a",
            "fastest": "flex",
            "fastest_ms": 1.0,
            "auto_ms": 1.03,
            "auto_over_fastest": 1.03,
        }
    ]


def test_each_round_times_every_backend_once_in_a_new_order():
    calls: list[str] = []

    def recording(name):
        sdpa = candidates(CPU, FP32)["sdpa"]

        def attend(q, k, v, seq=None):
            calls.append(name)
            return sdpa(q, k, v, seq)

        return attend

    names = ["a", "b", "c", "d", "e", "f"]
    backends = {name: recording(name) for name in names}
    rows = [
        {
            "shape": SHAPE.label,
            "backend": n,
            **asdict(SHAPE),
            "fwd_ms_rounds": [],
            "fwd_bwd_ms_rounds": [],
        }
        for n in names
    ]
    time_rounds(SHAPE, rows, backends, CPU, FP32, rounds=4)
    per_call = len(calls) // (4 * len(names))  # one backend's warm-ups and repeats in a round
    sequence = calls[::per_call]  # the backend of each block of calls, in the order timed
    orders = [sequence[r * len(names) : (r + 1) * len(names)] for r in range(4)]
    assert all(sorted(order) == names for order in orders)
    assert len({tuple(order) for order in orders}) > 1  # not the same order every round
