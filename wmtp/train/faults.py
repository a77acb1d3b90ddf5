"""Testing hooks of the trainer, driven by the environment (never by a recipe).

``WMTP_FAULT="rank=1,step=3,kind=raise"`` makes rank 1 fail right after its optimizer step 3,
so tests and the multi-GPU bench can check that every other rank ends too, with one clear
message, instead of hanging in its next collective. Kinds:

- ``raise``: a ``RunError`` ("injected fault ..."), as a user-visible error would be raised;
- ``sigkill``: the process kills itself with SIGKILL (no clean-up, like an OOM kill);
- ``sigint`` / ``sigterm``: the process sends itself that signal (a user's Ctrl-C, a scheduler's
  stop) after step ``step``, which the trainer's own handlers then meet as from outside;
- ``nan``: the gradients of head 2 (the first extra head; head 1 in a one-head model) become NaN
  after the backward of step ``step``, before the optimizer would apply them (the trainer's
  guard must then refuse the step and name the head);
- ``oom``: after the backward of step ``step``, an allocation of an exbibyte on the run's device:
  its allocator's own failure, as running out of memory mid-step raises it;
- ``hang``: after the backward of step ``step``, the rank waits (10 minutes), as in a collective
  whose peer is gone: a step that never ends, which only a second stop signal ends.

``rank`` defaults to 1 and ``step`` to 1. Because the variable reaches the workers only through
the environment, a fault that fires under ``wmtp run --nproc-per-node N`` also shows that torchrun
passed the launcher's environment to its workers.

``WMTP_RANK_STATE_DIR=DIR`` makes every rank append, after every step, one JSON line to
``DIR/rank{r}.jsonl``: the step and the batch source's ``state_dict()`` (data position and, for
weighted pipelines, the weighting's state such as the EMA whitening statistics), so per-rank
state that must agree across ranks can be compared; the first line also records the rank's
NVLink-multicast and timeout variables (:data:`RECORDED_ENV`), to show what the workers got.

The trainer calls :func:`after_step` once per optimizer step; without these variables it does
nothing.
"""

from __future__ import annotations

import json
import os
import signal
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from wmtp.errors import RunError

FAULT_ENV = "WMTP_FAULT"
STATE_DIR_ENV = "WMTP_RANK_STATE_DIR"
RECORDED_ENV = (
    "NCCL_NVLS_ENABLE",
    "TORCH_SYMM_MEM_DISABLE_MULTICAST",
    "NVSHMEM_DISABLE_NVLS",
    "CUDA_VISIBLE_DEVICES",
    "WMTP_DIST_TIMEOUT_S",
)
"""Variables whose value each rank records with its first state line (launcher pass-through)."""
KINDS = ("raise", "sigkill", "sigint", "sigterm", "nan", "oom", "hang")
MID_STEP = ("nan", "oom", "hang")
"""Kinds that fire between a step's backward and its update (the others after the update)."""
HANG_S = 600.0


@dataclass(frozen=True)
class Fault:
    """Fail ``rank`` after optimizer step ``step`` in the way ``kind`` says."""

    rank: int = 1
    step: int = 1
    kind: str = "raise"


def parse_fault(text: str) -> Fault:
    """``"rank=1,step=3,kind=raise"`` -> :class:`Fault`; a malformed value is a ``RunError``."""
    fields: dict[str, Any] = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        key, sep, value = part.partition("=")
        key, value = key.strip(), value.strip()
        if not sep or key not in ("rank", "step", "kind"):
            raise RunError(
                f"{FAULT_ENV}={text!r}: {part!r} is not one of rank=INT, step=INT, kind=KIND"
            )
        if key == "kind":
            if value not in KINDS:
                raise RunError(f"{FAULT_ENV}={text!r}: kind must be one of {', '.join(KINDS)}")
            fields[key] = value
        else:
            try:
                fields[key] = int(value)
            except ValueError:
                raise RunError(f"{FAULT_ENV}={text!r}: {key} must be an integer") from None
    return Fault(**fields)


def fault_from_env() -> Fault | None:
    text = os.environ.get(FAULT_ENV, "").strip()
    return parse_fault(text) if text else None


def fire(fault: Fault, rank: int, step: int) -> None:
    """Fail now if ``fault`` targets this rank and step (:data:`MID_STEP` kinds fire earlier)."""
    if fault.rank != rank or fault.step != step or fault.kind in MID_STEP:
        return
    if fault.kind == "sigkill":
        os.kill(os.getpid(), signal.SIGKILL)
    if fault.kind in ("sigint", "sigterm"):  # a real stop signal, as a user's or scheduler's
        os.kill(os.getpid(), signal.Signals[fault.kind.upper()])
        return
    raise RunError(f"injected fault ({FAULT_ENV}): rank {rank} failed after step {step}")


def record_state(directory: Path, rank: int, step: int, state: dict) -> None:
    """Append ``{"step", "state"}`` to ``directory/rank{rank}.jsonl``; the first line of a file
    also holds ``env``: this process's values of :data:`RECORDED_ENV`."""
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"rank{rank}.jsonl"
    line: dict[str, Any] = {"step": step, "state": state}
    if not path.exists():
        line["env"] = {k: os.environ.get(k) for k in RECORDED_ENV}
    with path.open("a") as f:
        f.write(json.dumps(line) + "\n")


def before_optimizer_step(trainer) -> None:
    """The trainer's hook between the backward of step ``trainer.step + 1`` and its update."""
    fault = fault_from_env()
    if fault is None or fault.kind not in MID_STEP:
        return
    if fault.rank != trainer.ctx.rank or fault.step != trainer.step + 1:
        return
    if fault.kind == "oom":
        import torch

        torch.empty(1 << 60, dtype=torch.uint8, device=trainer.ctx.device)
    if fault.kind == "hang":
        time.sleep(HANG_S)
        return
    model = trainer.model
    heads = getattr(model, "extra_heads", None)
    layer = heads[0] if heads else model.blocks()[-1]
    for param in layer.parameters():
        if param.grad is not None:
            param.grad.fill_(float("nan"))


def after_step(trainer) -> None:
    """The trainer's hook after optimizer step ``trainer.step`` (already counted)."""
    state_dir = os.environ.get(STATE_DIR_ENV)
    if state_dir:
        record_state(Path(state_dir), trainer.ctx.rank, trainer.step, trainer.batches.state_dict())
    fault = fault_from_env()
    if fault is not None:
        fire(fault, trainer.ctx.rank, trainer.step)
