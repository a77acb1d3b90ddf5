"""Whitening of advantages over valid tokens: one batch, or an EMA of batches, across ranks.

``whiten(x, mask)`` is the single-process primitive. ``BatchWhitener`` and ``EMAWhitener`` are the
two strategies a recipe chooses (``weighting.normalize.kind = "batch" | "ema"``); both gather their
statistics (count, sum, sum of squares, in float64) with one all-reduce when a process group is
initialised, so every rank whitens with identical numbers.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.distributed as dist

_EPS = 1e-8
"""Added to the variance before the square root (a constant batch whitens to 0, never NaN)."""


@dataclass(frozen=True)
class Moments:
    """Mean and unbiased variance of the valid entries, and how many there were."""

    count: float
    mean: float
    var: float

    @staticmethod
    def from_sums(count: float, total: float, total_sq: float) -> Moments:
        """Moments from the count, sum and sum of squares (variance 0 below two entries)."""
        if count <= 0:
            return Moments(0.0, 0.0, 0.0)
        mean = total / count
        if count < 2:
            return Moments(count, mean, 0.0)
        var = max(total_sq - total * mean, 0.0) / (count - 1)
        return Moments(count, mean, var)


def _apply(x: torch.Tensor, mask: torch.Tensor, mean: float, var: float) -> torch.Tensor:
    x32 = x.float()
    z = (x32 - mean) * (1.0 / (var + _EPS) ** 0.5)
    return torch.where(mask, z, torch.zeros_like(z))


def masked_moments(x: torch.Tensor, mask: torch.Tensor, *, all_reduce: bool = True) -> Moments:
    """Moments of ``x[mask]``; summed over every rank when a process group is initialised."""
    assert x.shape == mask.shape, f"x {tuple(x.shape)} vs mask {tuple(mask.shape)}"
    assert mask.dtype == torch.bool, f"mask must be bool, got {mask.dtype}"
    x64 = torch.where(mask, x.double(), torch.zeros((), dtype=torch.float64, device=x.device))
    sums = torch.stack([mask.sum().double(), x64.sum(), (x64 * x64).sum()])
    if all_reduce and dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        dist.all_reduce(sums, op=dist.ReduceOp.SUM)
    count, total, total_sq = sums.tolist()
    return Moments.from_sums(count, total, total_sq)


def whiten(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """``(x - mean) / std`` over the valid entries (unbiased variance), 0 at masked entries.

    Local to this process. One valid entry gives 0; a constant input gives 0; never NaN.
    """
    m = masked_moments(x, mask, all_reduce=False)
    return _apply(x, mask, m.mean, m.var)


class BatchWhitener:
    """Whitens with the statistics of the current global batch (all ranks together)."""

    def __call__(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        m = masked_moments(x, mask)
        self.last = m
        return _apply(x, mask, m.mean, m.var)

    def stats(self) -> dict[str, float]:
        """The last batch's statistics, for logging."""
        m = getattr(self, "last", Moments(0.0, 0.0, 0.0))
        return {"mean": m.mean, "std": m.var**0.5}

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        assert not state, f"BatchWhitener has no state, got {sorted(state)}"


class EMAWhitener:
    """Whitens with exponential moving averages of the global batch mean and variance.

    Each update moves the averages by ``max(momentum, 1 / updates)`` towards the batch's statistics
    (so the first batch sets them, the next ones average until ``1 / updates`` falls below the
    momentum). For the first ``warmup_steps`` updates the batch's own statistics are used to
    whiten while the averages settle. Batches without a valid token leave the averages unchanged.
    The averages are part of the run's checkpoint (``state_dict``).
    """

    def __init__(self, *, momentum: float, warmup_steps: int) -> None:
        assert 0.0 < momentum <= 1.0, f"momentum must be in (0, 1], got {momentum}"
        assert warmup_steps >= 0, f"warmup_steps must be >= 0, got {warmup_steps}"
        self.momentum = momentum
        self.warmup_steps = warmup_steps
        self.updates = 0
        self.mean = 0.0
        self.var = 1.0

    def update(self, batch: Moments) -> None:
        """Fold one global batch's moments into the averages."""
        if batch.count <= 0:
            return
        self.updates += 1
        rate = max(self.momentum, 1.0 / self.updates)
        self.mean = (1.0 - rate) * self.mean + rate * batch.mean
        self.var = (1.0 - rate) * self.var + rate * batch.var

    def __call__(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        batch = masked_moments(x, mask)
        self.update(batch)
        if self.updates <= self.warmup_steps:
            return _apply(x, mask, batch.mean, batch.var)
        return _apply(x, mask, self.mean, self.var)

    def stats(self) -> dict[str, float]:
        """The running statistics, for logging."""
        return {"mean": self.mean, "std": self.var**0.5, "updates": float(self.updates)}

    def state_dict(self) -> dict:
        return {"updates": self.updates, "mean": self.mean, "var": self.var}

    def load_state_dict(self, state: dict) -> None:
        self.updates = int(state["updates"])
        self.mean = float(state["mean"])
        self.var = float(state["var"])
