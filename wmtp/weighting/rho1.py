"""Rho-1 token selection: keep the valid tokens whose loss exceeds the reference's the most."""

from __future__ import annotations

import math
from fractions import Fraction

import torch


def _decimal(k_percent: float) -> Fraction:
    """``k_percent`` as the decimal a recipe writes (its shortest ``repr``), exactly."""
    assert 0.0 < k_percent <= 1.0, f"k_percent must be in (0, 1], got {k_percent}"
    return Fraction(repr(k_percent))


def n_selected(k_percent: float, n_valid: int) -> int:
    """``ceil(k_percent * n_valid)`` computed exactly, ``k_percent`` read as the decimal a recipe
    writes: 0.3 of 10 keeps 3 (the float product is 3.0000000000000004), 0.60001 of 40001 keeps
    24002 (the product is 24001.00001: a fraction of a token rounds up)."""
    return math.ceil(_decimal(k_percent) * n_valid)


def rho1_mask(excess: torch.Tensor, mask: torch.Tensor, *, k_percent: float) -> torch.Tensor:
    """Bool tensor: True at the ``ceil(k_percent * n_valid)`` valid entries of largest ``excess``.

    Counted over the whole tensor (the batch), never True at a masked entry (even when a valid
    excess is -Inf); ties are broken by position. Infinite excesses are ranked as the largest /
    smallest finite values; NaN is ranked as 0. Computed on the tensors' device without reading
    anything from it (the count stays there): every entry is ranked, the masked ones last.
    """
    assert excess.shape == mask.shape, f"excess {tuple(excess.shape)} vs mask {tuple(mask.shape)}"
    assert mask.dtype == torch.bool, f"mask must be bool, got {mask.dtype}"
    fraction = _decimal(k_percent)  # n_selected's rounding, computed on the device
    flat_mask = mask.reshape(-1)
    key = torch.nan_to_num(excess.reshape(-1).float())  # finite: a masked -inf ranks below all
    key = torch.where(flat_mask, key, -math.inf)
    order = torch.sort(key, descending=True, stable=True).indices
    rank = torch.empty_like(order)
    rank[order] = torch.arange(order.numel(), device=order.device)
    n_valid = flat_mask.sum()
    keep = (n_valid * fraction.numerator + fraction.denominator - 1) // fraction.denominator
    return (flat_mask & (rank < keep)).view(mask.shape)
