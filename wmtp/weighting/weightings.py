"""The weighting objects the registry builds from a ``[weighting]`` section.

- ``UniformWeighting``: weight 1 on every valid token.
- ``TDWeighting``: values -> ``td_errors`` -> ``gae`` -> whitening (batch or EMA, synchronised
  across ranks) -> ``awr_weights``; optionally followed by a control (``random_matched`` or
  ``shuffled``) that keeps the batch's weight distribution but destroys the critic's token choice.
- ``Rho1Selection``: per head, weight 1 on the top k% valid tokens by excess loss.

Each returns float32 weights ``[B, S]`` that belong to the target token at the same position (the
MTP loss gives head k at position t the weight ``w[t + k]``), plus figures to log.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
import torch.distributed as dist

from wmtp.recipe.specs.weighting import EMANormalizeSpec, TDWeightingSpec
from wmtp.weighting.ablations import random_matched, shuffled
from wmtp.weighting.awr import awr_weights
from wmtp.weighting.normalize import BatchWhitener, EMAWhitener
from wmtp.weighting.rho1 import rho1_mask
from wmtp.weighting.td import gae, td_errors

Control = Literal["random_matched", "shuffled"]


def _distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def masked_summary(x: torch.Tensor, mask: torch.Tensor) -> dict[str, float]:
    """Count, mean, std (unbiased), min and max of ``x[mask]`` over every rank (0s when empty)."""
    x64 = x.detach().double()
    zero = torch.zeros((), dtype=torch.float64, device=x.device)
    sums = torch.stack(
        [
            mask.sum().double(),
            torch.where(mask, x64, zero).sum(),
            torch.where(mask, x64 * x64, zero).sum(),
        ]
    )
    inf = torch.tensor(math.inf, dtype=torch.float64, device=x.device)
    lo = torch.where(mask, x64, inf).min() if x.numel() else inf
    hi = -(torch.where(mask, -x64, inf).min() if x.numel() else inf)
    if _distributed():
        dist.all_reduce(sums)
        dist.all_reduce(lo, op=dist.ReduceOp.MIN)
        dist.all_reduce(hi, op=dist.ReduceOp.MAX)
    n, total, total_sq = sums.tolist()
    if n == 0:
        return {"count": 0.0, "mean": 0.0, "std": 0.0, "min": 0.0, "max": 0.0}
    mean = total / n
    var = max(total_sq - total * mean, 0.0) / (n - 1) if n > 1 else 0.0
    return {"count": n, "mean": mean, "std": var**0.5, "min": float(lo), "max": float(hi)}


class UniformWeighting:
    """Weight 1 on every valid target token (no critic)."""

    needs_critic = False

    def __call__(self, response_mask_BS: torch.Tensor) -> torch.Tensor:
        return response_mask_BS.float()


class TDWeighting:
    """Critic values to AWR token weights (DESIGN.md "TD errors and GAE", "AWR weights")."""

    needs_critic = True

    def __init__(self, spec: TDWeightingSpec, *, control: Control | None = None) -> None:
        self.spec = spec
        self.control = control
        if isinstance(spec.normalize, EMANormalizeSpec):
            self.whitener: BatchWhitener | EMAWhitener = EMAWhitener(
                momentum=spec.normalize.momentum, warmup_steps=spec.normalize.warmup_steps
            )
        else:
            self.whitener = BatchWhitener()
        self.generator: torch.Generator | None = None

    def seed(self, seed: int, device: torch.device | str = "cpu") -> None:
        """Seed the controls' random draws (each rank passes its own seed)."""
        self.generator = torch.Generator(device=device).manual_seed(seed)

    def __call__(
        self, values_BS: torch.Tensor, rewards_B: torch.Tensor, response_mask_BS: torch.Tensor
    ) -> tuple[torch.Tensor, dict[str, float]]:
        """``(weights_BS, figures)`` of a step of one micro-batch: weights 0 outside the response,
        in [min, max] inside."""
        adv_BS = self.advantages(values_BS, rewards_B, response_mask_BS)
        (w_BS,), figures = self.step_weights([(adv_BS, response_mask_BS)])
        return w_BS, figures

    def advantages(
        self, values_BS: torch.Tensor, rewards_B: torch.Tensor, response_mask_BS: torch.Tensor
    ) -> torch.Tensor:
        """GAE advantages ``[B, S]`` of one micro-batch's responses (0 outside them)."""
        s = self.spec
        deltas_BS = td_errors(values_BS, rewards_B, response_mask_BS, gamma=s.gamma)
        return gae(deltas_BS, response_mask_BS, gamma=s.gamma, lam=s.lam)

    def step_weights(
        self, parts: list[tuple[torch.Tensor, torch.Tensor]]
    ) -> tuple[list[torch.Tensor], dict[str, float]]:
        """The weights of one optimizer step from its micro-batches' ``(advantages, mask)``.

        The step is one batch: whitened with the statistics of every micro-batch (all ranks
        together; an EMA updated once), a control drawing from all of it; so one process
        accumulating N micro-batches weights as N ranks of one micro-batch each do. Returns each
        micro-batch's ``weights_BS`` and the step's figures.
        """
        s = self.spec
        pieces = [adv_BS[mask_BS].float() for adv_BS, mask_BS in parts]  # valid tokens, in order
        adv_N = torch.cat(pieces)
        valid_N = torch.ones_like(adv_N, dtype=torch.bool)
        z_N = self.whitener(adv_N, valid_N)
        w_N = awr_weights(
            z_N, valid_N, beta=s.beta, min_weight=s.min_weight, max_weight=s.max_weight
        )
        if self.control is not None:
            w_N = self._apply_control(w_N, valid_N)
        weights = []
        for (adv_BS, mask_BS), w_n in zip(parts, w_N.split([len(p) for p in pieces]), strict=True):
            w_BS = torch.zeros(adv_BS.shape, dtype=torch.float32, device=adv_BS.device)
            weights.append(w_BS.masked_scatter_(mask_BS, w_n))
        return weights, self._figures(adv_N, w_N, valid_N)

    def _apply_control(self, w_BS: torch.Tensor, mask_BS: torch.Tensor) -> torch.Tensor:
        assert self.generator is not None, "call .seed(...) before using a control weighting"
        if self.control == "random_matched":
            return random_matched(w_BS, mask_BS, generator=self.generator)
        return shuffled(w_BS, mask_BS, generator=self.generator)

    def _figures(self, adv_BS, w_BS, mask_BS) -> dict[str, float]:
        """Statistics of the weights used (after a control), the advantages and the whitener."""
        s = self.spec
        # Clipped = at a bound, up to the float32 rounding of exp(ln(bound)).
        at_min = mask_BS & (w_BS <= s.min_weight * (1 + 1e-6))
        at_max = mask_BS & (w_BS >= s.max_weight * (1 - 1e-6))
        weight = masked_summary(w_BS, mask_BS)
        figures = {f"weight/{k}": v for k, v in weight.items() if k != "count"}
        figures["weight/clipped_min"] = masked_summary(at_min.float(), mask_BS)["mean"]
        figures["weight/clipped_max"] = masked_summary(at_max.float(), mask_BS)["mean"]
        adv = masked_summary(adv_BS, mask_BS)
        figures["advantage/mean"], figures["advantage/std"] = adv["mean"], adv["std"]
        for k, v in self.whitener.stats().items():
            figures[f"whiten/{k}"] = v
        return figures

    def state_dict(self) -> dict:
        state: dict = {"whitener": self.whitener.state_dict()}
        if self.generator is not None:
            state["generator"] = self.generator.get_state()
        return state

    def load_state_dict(self, state: dict) -> None:
        self.whitener.load_state_dict(state["whitener"])
        if "generator" in state and self.generator is not None:
            self.generator.set_state(state["generator"])


class Rho1Selection:
    """Rho-1: per head, weight 1 on the top ``k_percent`` of the batch's valid target tokens."""

    needs_critic = False

    def __init__(self, *, k_percent: float) -> None:
        self.k_percent = k_percent

    def __call__(self, excess_BT: torch.Tensor, valid_BT: torch.Tensor) -> torch.Tensor:
        """Float32 0/1 weights of one head's targets from their excess losses."""
        return rho1_mask(excess_BT, valid_BT, k_percent=self.k_percent).float()
