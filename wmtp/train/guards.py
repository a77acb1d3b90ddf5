"""What stops a step, or a run, cleanly: non-finite losses and gradients, and stop signals.

- :func:`nonfinite_loss` and :func:`nonfinite_gradients` name what went wrong before the
  optimizer step (a loss component such as ``loss/head2``; the model components whose gradients
  are not finite, such as ``head 2`` or ``layer 3``), so a bad step is never applied.
- :class:`StopSignals` turns SIGINT / SIGTERM into a request the trainer honours at the next step
  boundary (every rank agrees on it); a second signal ends the process at once.
"""

from __future__ import annotations

import math
import os
import signal
import sys
from collections.abc import Callable
from typing import Any

import torch

from wmtp.errors import StopSignal
from wmtp.stopping import STOP_SIGNALS


def nonfinite_flag(values: list, device: torch.device) -> torch.Tensor:
    """``True`` on ``device`` where any of ``values`` (numbers, or one-element tensors on
    ``device``) is NaN or infinite; the tensors are checked there, nothing is read."""
    tensors = [v.detach().reshape(()).float() for v in values if isinstance(v, torch.Tensor)]
    on_host = any(not math.isfinite(v) for v in values if not isinstance(v, torch.Tensor))
    flag = torch.full((), on_host, dtype=torch.bool, device=device)
    if tensors:
        flag = flag | ~torch.isfinite(torch.stack(tensors)).all()
    return flag


def nonfinite_loss(loss: float, components: dict[str, float]) -> list[str]:
    """The parts of a step's loss that are NaN or infinite (``loss`` itself when no part is)."""
    bad = [name for name, value in components.items() if not math.isfinite(value)]
    return bad or ([] if math.isfinite(loss) else ["loss"])


def component_of(name: str, model: Any) -> str:
    """The model component a parameter belongs to, in words: ``head 1`` (``layers[-1]``),
    ``head k`` (``extra_heads[k-2]``), ``layer i`` (the trunk's, or a critic's backbone's),
    ``embedding``, ``final norm``, ``unembedding``, ``value head``."""
    parts = [p for p in name.split(".") if p not in ("_orig_mod", "_checkpoint_wrapped_module")]
    if parts[0] == "backbone":
        parts = parts[1:]
    if parts[0] == "extra_heads":
        return f"head {int(parts[1]) + 2}"
    if parts[0] == "layers":
        layer, layers = int(parts[1]), getattr(model, "layers", None)  # a critic has no heads
        return "head 1" if layers is not None and layer == len(layers) - 1 else f"layer {layer}"
    return {
        "tok_embeddings": "embedding",
        "norm": "final norm",
        "output": "unembedding",
        "head": "value head",
    }.get(parts[0], parts[0])


def nonfinite_gradients(model: torch.nn.Module) -> list[str]:
    """The components (:func:`component_of`) holding a NaN or infinite gradient on any rank,
    each with the ranks whose gradients (or shards of them) it is on in a process group of
    several (``head 2 on rank 1``). Collective there: every rank calls it, all learn the same."""
    import torch.distributed as dist

    flags: dict[str, bool] = {}
    for name, param in model.named_parameters():
        if param.grad is None:
            continue
        grad = param.grad.to_local() if hasattr(param.grad, "to_local") else param.grad
        part = component_of(name, model)
        flags[part] = flags.get(part, False) or not bool(torch.isfinite(grad).all())
    names = sorted(flags)
    if not (dist.is_initialized() and dist.get_world_size() > 1):
        return [n for n in names if flags[n]]
    world, rank = dist.get_world_size(), dist.get_rank()
    box = torch.zeros(world, len(names), device=next(model.parameters()).device)
    box[rank] = torch.tensor([float(flags[n]) for n in names], device=box.device)
    dist.all_reduce(box, op=dist.ReduceOp.MAX)
    by_part = box.t().tolist()  # one row per component: which ranks hold it non-finite
    return [
        f"{name} {on_ranks([r for r, bad in enumerate(row) if bad], world)}"
        for name, row in zip(names, by_part, strict=True)
        if any(row)
    ]


def on_ranks(ranks: list[int], world: int) -> str:
    """``on rank 1``, ``on ranks 0, 2``, ``on every rank``."""
    if len(ranks) == world:
        return "on every rank"
    label = "rank" if len(ranks) == 1 else "ranks"
    return f"on {label} {', '.join(map(str, ranks))}"


def nonfinite_parameters(model: torch.nn.Module) -> list[str]:
    """The components with a NaN or infinite parameter on this rank."""
    bad = set()
    for name, param in model.named_parameters():
        data = param.to_local() if hasattr(param, "to_local") else param
        if not bool(torch.isfinite(data).all()):
            bad.add(component_of(name, model))
    return sorted(bad)


class StopSignals:
    """SIGINT and SIGTERM, while this context is active, request a stop instead of ending the
    process; :meth:`requested` tells (the same answer on every rank). A second signal ends the
    process at once with ``128 + signal``. Outside the main thread it installs nothing.

    While the run is being built (``building``, until the trainer's first step), a signal stops
    it at once (:class:`~wmtp.errors.StopSignal`, raised where the build was): nothing is
    trained yet, so there is nothing to wait for (a dataset build cancels its queued checks).
    Once the run has failed (:meth:`run_failed`), a first signal changes nothing."""

    def __init__(self, ctx: Any) -> None:
        self.ctx, self.signum, self._previous = ctx, 0, {}
        self.building = True
        self.failing = False
        self.kept: Callable[[], str] = lambda: "without a checkpoint"
        """What a stop at once keeps, in words (the trainer names its newest checkpoint)."""
        self.record: Callable[[str], None] = lambda said: None
        """Writes how the run ended to its ``run.log`` alone (the console has it already)."""

    def run_failed(self) -> None:
        """The run failed and says so (its log, its run directory kept or removed, its rank's
        record): a first signal now would only cut that short, and torchrun sends one to every
        rank of a launch once one has failed; a second still ends the process at once."""
        self.failing = True

    def __enter__(self) -> StopSignals:
        try:
            for sig in STOP_SIGNALS:
                self._previous[sig] = signal.signal(sig, self._handle)
        except ValueError:  # not the main thread: leave the handlers alone
            self._previous.clear()
        return self

    def __exit__(self, *exc: object) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)

    def _handle(self, signum: int, frame: Any) -> None:
        if self.signum:
            said = f"{signal.Signals(signum).name} again: stopping now, {self.kept()}"
            print(f"\n{said}", file=sys.stderr, flush=True)
            self.record(f"stopped: {said}")
            os._exit(128 + signum)
        self.signum = signum
        if self.failing:
            return
        if self.building:
            raise StopSignal(signum)
        name = signal.Signals(signum).name
        if self.ctx.is_main:
            print(
                f"\n{name}: stopping after this step with a checkpoint (again to stop at once)",
                file=sys.stderr,
                flush=True,
            )

    def requested(self) -> int:
        """The signal that asked to stop (0: none), agreed by every rank."""
        return int(float(self.agreed()))

    def agreed(self) -> int | torch.Tensor:
        """The signal that asked to stop, agreed by every rank: in a process group a device
        tensor (the largest rank's), queued and not read, so the trainer reads it with its
        step's figures (``wmtp.train.figures``); alone, the number."""
        if not self.ctx.is_distributed:
            return self.signum
        from wmtp.parallel import all_reduce_max

        return all_reduce_max(torch.full((), float(self.signum), device=self.ctx.device))


__all__ = [
    "StopSignals",
    "component_of",
    "nonfinite_flag",
    "nonfinite_gradients",
    "nonfinite_loss",
    "nonfinite_parameters",
]
