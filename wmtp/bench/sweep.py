"""A side's micro-batch sweep and the rows every side (wmtp's and the peers') is recorded in.

A *side* is one way of training a shape (wmtp with one head, Hugging Face + Liger, ...). Each
is measured at every micro-batch of the sweep, smallest first, until one runs out of memory:
that size is recorded as an error row and the side stops there (a larger one would not fit
either). Any other failure is recorded the same way, with its reason, and the side stops; the
next side runs. A side that cannot run here at all (a missing library, a GPU-only path on the
CPU) is one row saying why. Every row has the same keys, so the results are one table.
"""

from __future__ import annotations

import gc
from collections.abc import Callable, Sequence

import torch

from wmtp.bench.timing import Timing, utilisation
from wmtp.train.out_of_memory import is_out_of_memory

Row = dict
OUT_OF_MEMORY = "out of memory"
"""How a row's ``error`` begins when its micro-batch ran out of memory."""
MEASURED = (
    "tokens_per_step",
    "tokens_per_s",
    "mfu",
    "peak_tflops",
    "peak_memory_gib",
    "flops_per_token",
    "step",
)


def measured_row(
    side: str,
    micro_batch: int,
    *,
    tokens_per_step: int,
    step: Timing,
    flops_per_token: float,
    peak_tflops: float | None,
    peak_memory_gib: float | None,
    **config,
) -> Row:
    """The row of one measured micro-batch: tokens/s of the median step, MFU by the one formula
    (``wmtp.models.args.mfu``), the absolute peak memory; None where not measured (off CUDA)."""
    tokens_per_s = tokens_per_step / (step.median_ms / 1e3)
    return {
        "side": side,
        "micro_batch": micro_batch,
        "error": None,
        "tokens_per_step": tokens_per_step,
        "tokens_per_s": tokens_per_s,
        "mfu": utilisation(tokens_per_s, flops_per_token, peak_tflops),
        "peak_tflops": peak_tflops,
        "peak_memory_gib": peak_memory_gib,
        "flops_per_token": flops_per_token,
        "step": step.to_dict(),
        "config": config,
    }


def error_row(side: str, micro_batch: int | None, error: str) -> Row:
    """A micro-batch (or, with ``None``, a whole side) that was not measured, and why."""
    row = {"side": side, "micro_batch": micro_batch, "error": error}
    return row | dict.fromkeys(MEASURED) | {"config": {}}


def describe(exc: BaseException) -> str:
    """One line naming a failure: ``out of memory`` for an allocation failure."""
    first = (str(exc).strip().splitlines() or [""])[0][:300]
    if is_out_of_memory(exc):
        return f"{OUT_OF_MEMORY} ({first})"
    return f"{type(exc).__name__}: {first}"


def free_memory() -> None:
    """Drop what a finished (or failed) measurement left behind before the next one."""
    gc.collect()
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.empty_cache()


def sweep(
    side: str,
    measure: Callable[[int], Row],
    micro_batches: Sequence[int],
    *,
    on_row: Callable[[Row], None] = lambda row: None,
) -> list[Row]:
    """``measure(b)`` for each micro-batch ``b``, smallest first, until one fails (see the module
    doc). ``on_row`` sees each row as soon as it exists (the results file is rewritten there, so
    a process stopped later keeps it)."""
    rows: list[Row] = []
    for micro_batch in sorted(micro_batches):
        try:
            row = measure(micro_batch)
        except Exception as exc:  # a failing side is a recorded result, never the end of the sweep
            row = error_row(side, micro_batch, describe(exc))
        free_memory()  # after the except block: the traceback and its frames are gone
        rows.append(row)
        on_row(row)
        if row["error"] is not None:
            break
    return rows


def best(rows: Sequence[Row]) -> Row | None:
    """The measured row with the most tokens/s (``None`` when nothing was measured)."""
    measured = [r for r in rows if r["error"] is None]
    return max(measured, key=lambda r: r["tokens_per_s"]) if measured else None


def installed_version(package: str) -> str | None:
    """``package``'s installed version (``None``: not installed), as results files record it."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(package)
    except PackageNotFoundError:
        return None
