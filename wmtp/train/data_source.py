"""The data a run trains on, and the resumable stream of micro-batches the loop consumes.

The trainer gets the run's ``TrainData`` from the ``dataset`` registry (``wmtp.assembly``);
:class:`StepBatches` is the default batch source of a pipeline: the epoch's global order, one
global batch (``micro_batch_size * grad_accum_steps * world_size`` rows) per optimizer step,
rank r taking its own micro-batches of it. Its ``state_dict`` (epoch, position) goes into every
checkpoint, so a resumed run sees exactly the batches an uninterrupted one would, and any world
size sees the same global batches (so the losses agree).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np

from wmtp.errors import DataError


@dataclass(frozen=True)
class PackedRows:
    """Packing by rows: a micro-batch is ``micro_batch_size`` rows of ``row_length`` tokens, each
    filled with whole examples in the epoch's order (next fit: an example that does not fit
    closes the row and opens the next)."""

    row_length: int
    length_of: Callable[[int], int]
    """Tokens of an example (by row index)."""
    make_batch: Callable[[list[np.ndarray]], dict]
    """A packed batch from rows of example indices."""


class StepBatches:
    """Deterministic, resumable micro-batches of one rank, step by step.

    A step takes the next ``micro * accum * world`` examples of the epoch's order, or with
    ``packed`` the examples that fill as many rows of ``packed.row_length`` tokens; rank r's
    micro-batch i is slice ``(i * world + r) * micro`` of them, so every world size trains on the
    same global batches.
    """

    def __init__(
        self,
        order_of_epoch: Callable[[int], np.ndarray],
        make_batch: Callable[[np.ndarray], dict],
        *,
        micro_batch_size: int,
        grad_accum_steps: int,
        rank: int = 0,
        world_size: int = 1,
        packed: PackedRows | None = None,
    ) -> None:
        self.order_of_epoch, self.make_batch = order_of_epoch, make_batch
        self.micro, self.accum = micro_batch_size, grad_accum_steps
        self.rank, self.world = rank, world_size
        self.packed = packed
        self.epoch, self.position = 0, 0
        self._order_cache: tuple[int, np.ndarray] | None = None

    @property
    def global_batch(self) -> int:
        return self.micro * self.accum * self.world

    def _order(self, epoch: int) -> np.ndarray:
        if self._order_cache is None or self._order_cache[0] != epoch:
            order = self.order_of_epoch(epoch)
            if len(order) == 0:
                raise DataError("no training rows are left (see the data report above)")
            self._order_cache = (epoch, order)
        return self._order_cache[1]

    def steps_per_epoch(self) -> float:
        if self.packed is not None:  # rows are filled to at most row_length: a lower bound
            tokens = sum(self.packed.length_of(int(i)) for i in self._order(0))
            return tokens / (self.global_batch * self.packed.row_length)
        return len(self._order(0)) / self.global_batch

    def _take(self, n: int) -> np.ndarray:
        taken: list[np.ndarray] = []
        need = n
        while need:
            order = self._order(self.epoch)
            chunk = order[self.position : self.position + need]
            taken.append(chunk)
            need -= len(chunk)
            self.position += len(chunk)
            if self.position >= len(order):
                self.epoch, self.position = self.epoch + 1, 0
        return np.concatenate(taken)

    def _take_rows(self, n: int) -> list[np.ndarray]:
        """The next examples, packed into ``n`` rows of at most ``packed.row_length`` tokens."""
        assert self.packed is not None
        rows: list[np.ndarray] = []
        row: list[int] = []
        used = 0
        while len(rows) < n:
            index = int(self._order(self.epoch)[self.position])
            size = self.packed.length_of(index)
            if row and used + size > self.packed.row_length:
                rows.append(np.asarray(row))
                row, used = [], 0
                continue
            row.append(index)
            used += size
            self._take(1)
        return rows

    def next_step(self) -> list[dict]:
        """This rank's ``grad_accum_steps`` micro-batches of the next optimizer step."""
        if self.packed is not None:
            rows = self._take_rows(self.global_batch)
            make = self.packed.make_batch
        else:
            rows, make = self._take(self.global_batch), self.make_batch
        out = []
        for i in range(self.accum):
            start = (i * self.world + self.rank) * self.micro
            out.append(make(rows[start : start + self.micro]))
        return out

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "position": self.position}

    def load_state_dict(self, state: dict) -> None:
        self.epoch, self.position = int(state["epoch"]), int(state["position"])


def rank_share(batches: list[dict], rank: int, world: int) -> Iterator[dict]:
    """This rank's held-out batches; every rank gets the same count (collectives stay matched):
    a rank short of one repeats its last batch with every label masked (it adds nothing)."""
    mine = batches[rank::world]
    per_rank = -(-len(batches) // world)
    yield from mine
    for _ in range(per_rank - len(mine)):
        filler = dict(batches[-1])
        filler["labels"] = filler["labels"].new_full(filler["labels"].shape, -100)
        yield filler
