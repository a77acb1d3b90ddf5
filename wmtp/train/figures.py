"""A step's figures cross from the device to the host once, after its update is queued.

A figure is a number (``float`` / ``int``) or a one-element tensor, usually still being computed
on the device. Pipelines hand the trainer tensors, never reading them, so the host queues a whole
step without waiting for the GPU. The trainer then starts one copy of every figure
(:class:`PendingFigures`), queues the optimizer step behind it (a non-finite step skipped on the
device: ``wmtp.train.optim.step_unless``) and only then waits, for the copy alone: the GPU applies
the update while the host checks, logs and prepares the next step.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch

Figure = float | int | torch.Tensor
"""A number, or a tensor of one element on any device."""


Groups = Mapping[str, Mapping[str, Figure]]
"""Figures in named groups (a step's own, its loss components, its logged figures), so one name
may appear in two groups."""


class PendingFigures:
    """``groups`` on their way to the host: their tensors copied to pinned memory without
    waiting, one copy per device. :meth:`wait` waits for those copies, not for the work queued
    after them, and returns the groups as plain floats, in their order."""

    def __init__(self, groups: Groups) -> None:
        self._shape = {group: list(figures) for group, figures in groups.items()}
        self._numbers: dict[tuple[str, str], float] = {}
        tensors: dict[torch.device, dict[tuple[str, str], torch.Tensor]] = {}
        for group, figures in groups.items():
            for name, value in figures.items():
                if not isinstance(value, torch.Tensor):
                    self._numbers[group, name] = float(value)
                    continue
                assert value.numel() == 1, f"figure {name!r} has shape {tuple(value.shape)}"
                tensors.setdefault(value.device, {})[group, name] = value
        self._copies: list[tuple[list[tuple[str, str]], torch.Tensor]] = []
        self._events: list[torch.cuda.Event] = []
        for device, named in tensors.items():
            values = torch.stack([v.detach().reshape(()).double() for v in named.values()])
            self._copies.append((list(named), values.to("cpu", non_blocking=True)))  # pinned
            if device.type == "cuda":
                event = torch.cuda.Event()
                event.record(torch.cuda.current_stream(device))
                self._events.append(event)

    def wait(self) -> dict[str, dict[str, float]]:
        for event in self._events:
            event.synchronize()
        read = dict(self._numbers)
        for keys, host in self._copies:
            read.update(zip(keys, host.tolist(), strict=True))
        return {g: {name: read[g, name] for name in names} for g, names in self._shape.items()}


def read_figures(figures: Mapping[str, Figure]) -> dict[str, float]:
    """``figures`` as floats now (held-out evaluation and other reads outside the step)."""
    return PendingFigures({"": figures}).wait()[""]


def mean_figures(per_part: list[Mapping[str, Figure]]) -> dict[str, Figure]:
    """Each name's mean over ``per_part`` (a part lacking it counts 0), names sorted."""
    names = sorted({k for part in per_part for k in part})
    return {k: sum(part.get(k, 0.0) for part in per_part) / len(per_part) for k in names}
