"""The data a run trains on, and the resumable stream of micro-batches the loop consumes.

The trainer gets the run's ``TrainData`` from the ``dataset`` registry (``wmtp.assembly``);
:class:`StepBatches` is the default batch source of a pipeline: the epoch's global order, one
global batch (``micro_batch_size * grad_accum_steps * world_size`` rows) per optimizer step,
rank r taking its own micro-batches of it. Its ``state_dict`` (epoch, position and, when packing,
the rows packed but not handed out yet) goes into every checkpoint, so a resumed run sees exactly
the batches an uninterrupted one would, and any world size sees the same global batches (so the
losses agree). Both build a step's batches ahead on request (:class:`Lookahead`): the trainer asks
while the device still runs the step before, so the host's batch building never idles the GPU.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np

from wmtp.errors import DataError


@dataclass(frozen=True)
class PackedRows:
    """Packing by rows: a micro-batch is ``micro_batch_size`` rows of ``row_length`` tokens, each
    filled with whole examples of the epoch's order, ``window`` consecutive examples at a time
    (first fit decreasing, see :meth:`StepBatches._pack_window`; window 1 is next fit)."""

    row_length: int
    length_of: Callable[[int], int]
    """Tokens of an example (by row index)."""
    make_batch: Callable[[list[np.ndarray]], dict]
    """A packed batch from rows of example indices."""
    window: int = 1
    """Consecutive examples of the order packed together (``data.pack_window``)."""


class Lookahead:
    """A batch source that can build its next step ahead: :meth:`prefetch` builds it (once), the
    next :meth:`next_step` returns it. Until then :meth:`state_dict` is the state before it was
    built, so a checkpoint taken between the two resumes at that step, as a run that never
    looked ahead would; :meth:`load_state_dict` drops it.

    The trainer prefetches once a step's update is queued, before it waits for the step's
    figures: the host builds the next batches while the device finishes the step. A subclass
    implements ``_build_step``, ``_state`` and ``_load_state``; ``_state`` must return a copy."""

    _ahead: tuple[dict, list[dict]] | None = None
    """The state before the step built ahead, and its micro-batches."""

    def prefetch(self) -> None:
        if self._ahead is None:
            state = self._state()
            self._ahead = (state, self._build_step())

    def next_step(self) -> list[dict]:
        """This rank's micro-batches of the next optimizer step."""
        if self._ahead is None:
            return self._build_step()
        batches, self._ahead = self._ahead[1], None
        return batches

    def state_dict(self) -> dict:
        return self._state() if self._ahead is None else self._ahead[0]

    def load_state_dict(self, state: dict) -> None:
        self._ahead = None
        self._load_state(state)

    def _build_step(self) -> list[dict]:
        raise NotImplementedError

    def _state(self) -> dict:
        raise NotImplementedError

    def _load_state(self, state: dict) -> None:
        raise NotImplementedError


class StepBatches(Lookahead):
    """Deterministic, resumable micro-batches of one rank, step by step.

    A step takes the next ``micro * accum * world`` examples of the epoch's order, or with
    ``packed`` as many rows of ``packed.row_length`` tokens filled from the order window by window;
    rank r's micro-batch i is slice ``(i * world + r) * micro`` of them, so every world size trains
    on the same global batches. Packing keeps the rows a window filled beyond the step (``ready``)
    and the row still open for the next window (``open``) in the state, with the position after
    the last window taken.
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
        source: str = "the training data",
    ) -> None:
        self.order_of_epoch, self.make_batch = order_of_epoch, make_batch
        self.source = source  # named when no row is left to train on
        self.micro, self.accum = micro_batch_size, grad_accum_steps
        self.rank, self.world = rank, world_size
        self.packed = packed
        self.epoch, self.position = 0, 0
        self.ready: list[list[int]] = []  # packed rows not handed out yet
        self.open: list[int] = []  # the row the next window fills first
        self._order_cache: tuple[int, np.ndarray] | None = None
        self._rows_per_epoch: int | None = None  # packed: see steps_per_epoch

    @property
    def global_batch(self) -> int:
        return self.micro * self.accum * self.world

    def _order(self, epoch: int) -> np.ndarray:
        if self._order_cache is None or self._order_cache[0] != epoch:
            order = self.order_of_epoch(epoch)
            if len(order) == 0:
                raise DataError(
                    f"{self.source}: no training rows are left (see the data report above)"
                )
            self._order_cache = (epoch, order)
        return self._order_cache[1]

    def steps_per_epoch(self) -> float:
        """Steps of one pass over the order: its examples, or packed, the rows epoch 0 packs
        into (rows never span two epochs; a later epoch's order packs into about as many)."""
        if self.packed is not None:
            return self._rows_of_first_epoch() / self.global_batch
        return len(self._order(0)) / self.global_batch

    def _rows_of_first_epoch(self) -> int:
        """The rows epoch 0 packs into, as a run packs them from its start (once per source)."""
        if self._rows_per_epoch is None:
            packer = StepBatches(
                self.order_of_epoch, self.make_batch, micro_batch_size=self.micro,
                grad_accum_steps=self.accum, packed=self.packed, source=self.source,
            )  # fmt: skip
            packer._order_cache = (0, self._order(0))
            while packer.epoch == 0:
                packer._pack_window()
            self._rows_per_epoch = len(packer.ready)
        return self._rows_per_epoch

    def _take(self, n: int) -> np.ndarray:
        """The next ``n`` examples of the order, on into the next epochs."""
        taken: list[np.ndarray] = []
        while n:
            taken.append(self._take_in_epoch(n))
            n -= len(taken[-1])
        return np.concatenate(taken)

    def _take_in_epoch(self, n: int) -> np.ndarray:
        """The next ``n`` examples of the order, fewer where the epoch ends before."""
        order = self._order(self.epoch)
        chunk = order[self.position : self.position + n]
        self.position += len(chunk)
        if self.position >= len(order):
            self.epoch, self.position = self.epoch + 1, 0
        return chunk

    def _take_rows(self, n: int) -> list[np.ndarray]:
        """The next ``n`` rows of at most ``packed.row_length`` tokens, packed window by window."""
        while len(self.ready) < n:
            self._pack_window()
        rows, self.ready = self.ready[:n], self.ready[n:]
        return [np.asarray(row) for row in rows]

    def _pack_window(self) -> None:
        """Pack the next ``packed.window`` examples of the order (fewer where the epoch ends) by
        first fit decreasing: longest first (ties in order), each into the first row with room,
        the open row first, else into a new row. Every row but the last opened is then ready, in
        the order opened; the last stays open for the next window (so a window of 1 is next fit)
        unless the epoch ended: rows never span two epochs, so an epoch's steps train its
        examples once each."""
        assert self.packed is not None
        rows = [list(self.open)] if self.open else []
        used = [sum(self.packed.length_of(i) for i in self.open)] if self.open else []
        epoch = self.epoch
        window = [int(i) for i in self._take_in_epoch(self.packed.window)]
        sizes = [self.packed.length_of(i) for i in window]
        for k in sorted(range(len(window)), key=lambda k: -sizes[k]):
            row = next(
                (r for r, u in enumerate(used) if u + sizes[k] <= self.packed.row_length), None
            )
            if row is None:
                rows.append([])
                used.append(0)
                row = len(rows) - 1
            rows[row].append(window[k])
            used[row] += sizes[k]
        if self.epoch != epoch:  # the epoch's last window: its last row is ready too
            self.ready += rows
            self.open = []
        else:
            self.ready += rows[:-1]
            self.open = rows[-1]

    def _build_step(self) -> list[dict]:
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

    def _state(self) -> dict:
        state = {"epoch": self.epoch, "position": self.position}
        if self.packed is not None:
            state |= {"ready": [list(row) for row in self.ready], "open": list(self.open)}
        return state

    def _load_state(self, state: dict) -> None:
        self.epoch, self.position = int(state["epoch"]), int(state["position"])
        # a state saved before windows had neither: next fit ended every step with no open row
        self.ready = [[int(i) for i in row] for row in state.get("ready", [])]
        self.open = [int(i) for i in state.get("open", [])]


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
