"""Timing and memory helpers shared by every benchmark."""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Timing:
    """Milliseconds of repeated calls: the median is the figure to quote."""

    median_ms: float
    min_ms: float
    max_ms: float
    repeats: int
    warmup_s: float | None = None
    """Seconds of the warm-up calls before them (compilation, autotuning, CUDA graph capture,
    the allocator's first growth): left out of the figures, reported beside them."""
    samples_ms: tuple[float, ...] = ()
    """Every timed call's milliseconds, in order: a run whose calls are all slow tells apart
    from one with a few slow calls, which the median and range alone do not."""

    def to_dict(self) -> dict:
        return {
            "median_ms": self.median_ms,
            "min_ms": self.min_ms,
            "max_ms": self.max_ms,
            "repeats": self.repeats,
            "warmup_s": self.warmup_s,
            "samples_ms": [round(ms, 3) for ms in self.samples_ms],
        }

    @classmethod
    def of(cls, samples_ms: list[float], warmup_s: float | None = None) -> Timing:
        """The figures of ``samples_ms`` (each timed call's milliseconds, in order)."""
        return cls(
            statistics.median(samples_ms),
            min(samples_ms),
            max(samples_ms),
            len(samples_ms),
            warmup_s,
            tuple(samples_ms),
        )


def static_compile_shapes() -> None:
    """Benchmarks compile one graph per shape: no dynamic-shape kernels, room for many shapes."""
    import torch._dynamo

    config = torch._dynamo.config
    config.automatic_dynamic_shapes = False
    for name in ("recompile_limit", "cache_size_limit"):  # renamed across torch releases
        if hasattr(config, name):
            setattr(config, name, max(getattr(config, name), 256))


STEP_MIN_SECONDS = 5.0
"""On a GPU a training step is timed over at least this many seconds: short steps get more
repeats than asked for. The median of eight 150-ms steps (7B LoRA at micro-batch 1) moved by a
third between two runs of the same code (bench/results/h100_float8_lora_20261206)."""
MAX_REPEATS = 200
"""The most repeats ``min_seconds`` adds up to."""


def step_min_seconds(device: torch.device) -> float:
    """``time_call``'s ``min_seconds`` for a training step on ``device``: :data:`STEP_MIN_SECONDS`
    on a GPU; 0 elsewhere (CPU runs are tests, their repeats as asked)."""
    return STEP_MIN_SECONDS if device.type == "cuda" else 0.0


def time_call(
    fn: Callable[[], object],
    *,
    warmup: int = 3,
    repeats: int = 10,
    queued: bool = False,
    min_seconds: float = 0.0,
) -> Timing:
    """Time ``fn`` after ``warmup`` calls: CUDA events on a GPU, a host clock on the CPU. The
    warm-up's own seconds (the device waited for) are ``Timing.warmup_s``.

    ``queued``: on a GPU, launch every repeat back to back (an event pair around each) and wait
    once at the end, as Triton's ``do_bench`` does and as a training run queues its steps, so
    the GPU idles between repeats only where ``fn``'s own host work leaves it idle (idle gaps
    also let its clock move, which shifts whichever kernel runs next). Otherwise each repeat
    waits for the GPU, so the time includes the launch from an idle queue.

    ``min_seconds``: time at least this long: one more warm-up call, timed, says how many
    repeats that takes (at least ``repeats``, at most :data:`MAX_REPEATS`); ``Timing.repeats``
    is the number run.
    """
    warmup_s = _warm_up(fn, warmup)
    if min_seconds > 0:
        call_s = _warm_up(fn, 1)
        warmup_s += call_s
        wanted = math.ceil(min_seconds / max(call_s, 1e-6))
        repeats = max(repeats, min(wanted, MAX_REPEATS))
    cuda = _cuda_in_use()
    if cuda and queued:
        events = [
            (torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True))
            for _ in range(repeats)
        ]
        for start, end in events:
            start.record()
            fn()
            end.record()
        torch.cuda.synchronize()
        return Timing.of([start.elapsed_time(end) for start, end in events], warmup_s)
    samples = []
    for _ in range(repeats):
        if cuda:
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            end.synchronize()
            samples.append(start.elapsed_time(end))
        else:
            t0 = time.perf_counter()
            fn()
            samples.append((time.perf_counter() - t0) * 1e3)
    return Timing.of(samples, warmup_s)


def _cuda_in_use() -> bool:
    return torch.cuda.is_available() and torch.cuda.is_initialized()


def _warm_up(fn: Callable[[], object], calls: int) -> float:
    """Seconds of ``calls`` calls of ``fn``, the device waited for after them."""
    start = time.perf_counter()
    for _ in range(calls):
        fn()
    if _cuda_in_use():
        torch.cuda.synchronize()
    return time.perf_counter() - start


def wall_seconds(device: torch.device, call: Callable[[], object]) -> tuple[object, float]:
    """``(call(), seconds)`` by the host clock, the device waited for before and after: one
    whole operation of many steps (a generation), where per-repeat events are not the point."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    out = call()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return out, time.perf_counter() - start


def wall_seconds_repeated(
    device: torch.device, call: Callable[[], object], repeats: int
) -> tuple[object, list[float]]:
    """``(the last call's result, the seconds of each of ``repeats`` calls)``, each timed by
    :func:`wall_seconds`: a whole generation's time moves from one call to the next (a host
    loop between steps: by 10% and more for Hugging Face ``generate``), so a figure is the
    median of several, their range beside it."""
    seconds = []
    for _ in range(repeats):
        out, took = wall_seconds(device, call)
        seconds.append(took)
    return out, seconds


def memory_added_gib(fn: Callable[[], object]) -> float:
    """Peak CUDA memory allocated while ``fn`` runs, in GiB, above what was allocated before: a
    kernel's working memory (``wmtp bench attention``). Training steps report
    :func:`peak_allocated_gib` instead."""
    assert torch.cuda.is_available(), "memory_added_gib measures CUDA memory"
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    fn()
    torch.cuda.synchronize()
    return (torch.cuda.max_memory_allocated() - base) / 2**30


def reset_peak_memory(device: torch.device) -> None:
    """Start a peak-memory window (CUDA only): call it once the model and optimizer are built."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)


def peak_allocated_gib(device: torch.device) -> float | None:
    """The absolute peak of ``torch.cuda.max_memory_allocated()`` since :func:`reset_peak_memory`
    (weights, gradients, optimizer state and activations alike), in GiB: the figure ``wmtp run``
    logs as ``peak_memory_gb`` and every training benchmark reports as ``peak_memory_gib``.
    None (not measured) off CUDA."""
    if device.type != "cuda":
        return None
    torch.cuda.synchronize(device)
    return torch.cuda.max_memory_allocated(device) / 2**30


def device_peak_tflops(device: torch.device) -> float | None:
    """The dense bf16 peak of ``device``'s GPU (``wmtp.models.args.BF16_PEAK_TFLOPS``, the table the
    training logs use too); None off CUDA or for a GPU the table lacks (MFU is then None too:
    :func:`utilisation`)."""
    from wmtp.models.args import bf16_peak_tflops

    if device.type != "cuda":
        return None
    found = bf16_peak_tflops(torch.cuda.get_device_name(device))
    return found[0] if found else None


def utilisation(
    tokens_per_s: float, flops_per_token: float, peak_tflops: float | None, gpus: int = 1
) -> float | None:
    """MFU by the one formula (``wmtp.models.args.mfu``); None where the peak is not known."""
    from wmtp.models.args import mfu

    return None if peak_tflops is None else mfu(tokens_per_s, flops_per_token, peak_tflops, gpus)


def shown(value: float | None, spec: str) -> str:
    """``value`` formatted by ``spec`` (``.1%``); ``n/a`` where it was not measured (None)."""
    return "n/a" if value is None else f"{value:{spec}}"
