"""Advantage-weighted regression weights: ``w = exp(clamp(z / beta, ln min, ln max))``."""

from __future__ import annotations

import math

import torch


def awr_weights(
    z: torch.Tensor,
    mask: torch.Tensor,
    *,
    beta: float,
    min_weight: float,
    max_weight: float,
) -> torch.Tensor:
    """Token weights (float32, same shape as ``z``) from whitened advantages ``z``.

    Valid entries get ``exp(clamp(z / beta, ln(min_weight), ln(max_weight)))``, so every weight lies
    in ``[min_weight, max_weight]``. Masked entries are exactly 0, and ``exp`` is only evaluated on
    the valid entries (whatever a masked entry holds, NaN or Inf included, cannot reach the output).
    """
    assert z.shape == mask.shape, f"z {tuple(z.shape)} vs mask {tuple(mask.shape)}"
    assert mask.dtype == torch.bool, f"mask must be bool, got {mask.dtype}"
    assert beta > 0, f"beta must be > 0, got {beta}"
    assert 0 < min_weight < max_weight, (
        f"need 0 < min_weight < max_weight, got {min_weight}, {max_weight}"
    )
    weights = torch.zeros(z.shape, dtype=torch.float32, device=z.device)
    scaled = z[mask].float() / beta
    weights[mask] = torch.exp(scaled.clamp(math.log(min_weight), math.log(max_weight)))
    return weights
