"""Evaluation on several processes (``wmtp eval --nproc-per-node N``, or ``wmtp run`` of an
evaluation recipe under torchrun): each rank generates and checks its share of the problems on
its own device, and rank 0 gathers the shares and writes the results.

Shares are dealt round-robin in the scored problems' order, so every rank decodes about the same
number of rows. A sample's random stream depends on the recipe's seed, its problem and its index
only (``wmtp.eval.completions.sample_seed``), so N ranks write the samples one process writes.
One process is the same code with a share of everything.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, TypeVar

T = TypeVar("T")

GATHER_TIMEOUT = timedelta(hours=24)
"""How long rank 0 waits for the slowest rank's share: shares take different times, and a long
evaluation outlasts the collective timeout of training (``WMTP_DIST_TIMEOUT_S``). A rank that
fails ends the job through torchrun, not through this timeout."""


@dataclass(frozen=True)
class EvalRanks:
    """This process's place among the evaluating processes."""

    rank: int = 0
    world_size: int = 1
    local_world_size: int = 1
    """Ranks on this machine: they share its cores for checking programs."""
    group: Any = None
    """The gloo group the results travel in (None: one process)."""

    @classmethod
    def joined(cls, ctx) -> EvalRanks:
        """The ranks of ``ctx`` (a ``wmtp.parallel.DistContext``), with a gloo group of their
        own for the results: pickled objects on the host, waiting as long as a share takes.
        Every rank must call it, in the same order as its other collectives."""
        if ctx.world_size == 1:
            return cls()
        import torch.distributed as dist

        group = dist.new_group(backend="gloo", timeout=GATHER_TIMEOUT)
        local = int(os.environ.get("LOCAL_WORLD_SIZE", ctx.world_size))
        return cls(ctx.rank, ctx.world_size, local, group)

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def share(self, items: Sequence[T]) -> tuple[T, ...]:
        """This rank's items: every ``world_size``-th, from its rank on."""
        return tuple(items[self.rank :: self.world_size])

    def gather(self, value: T) -> list[T] | None:
        """Every rank's ``value`` in rank order on rank 0; None on the others."""
        if self.group is None:
            return [value]
        import torch.distributed as dist

        received: list[T] | None = [None] * self.world_size if self.is_main else None
        dist.gather_object(value, received, dst=0, group=self.group)
        return received


__all__ = ["EvalRanks"]
