"""Rho-1 token selection: keep the valid tokens whose loss exceeds the reference's the most."""

from __future__ import annotations

import math
from fractions import Fraction

import torch

_MAX_DENOMINATOR = 10**9
"""The kept fraction's denominator is at most this, so ``n_valid * numerator`` stays far inside
int64 on the device (up to 9e9 valid targets per head)."""


def _decimal(k_percent: float) -> Fraction:
    """``k_percent`` as the decimal a recipe writes (its shortest ``repr``), exactly when it has at
    most 9 decimal places; a longer one (a repeating 0.6666666666666666, a float's noise digits
    0.30000000000000004) as the nearest fraction with a denominator up to 10^9 (2/3, 3/10), and
    one below 10^-9 as 10^-9 (never 0: a head of up to 10^9 targets keeps one, as exactly)."""
    assert 0.0 < k_percent <= 1.0, f"k_percent must be in (0, 1], got {k_percent}"
    nearest = Fraction(repr(k_percent)).limit_denominator(_MAX_DENOMINATOR)
    return max(nearest, Fraction(1, _MAX_DENOMINATOR))


def n_selected(k_percent: float, n_valid: int) -> int:
    """``ceil(k_percent * n_valid)`` computed exactly, ``k_percent`` read as the decimal a recipe
    writes (:func:`_decimal`): 0.3 of 10 keeps 3 (the float product is 3.0000000000000004),
    0.60001 of 40001 keeps 24002 (the product is 24001.00001: a fraction of a token rounds up)."""
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
    assert (mask.numel() + 1) * fraction.denominator < 2**63, "the kept count overflows int64"
    flat_mask = mask.reshape(-1)
    key = torch.nan_to_num(excess.reshape(-1).float())  # finite: a masked -inf ranks below all
    key = torch.where(flat_mask, key, -math.inf)
    order = torch.sort(key, descending=True, stable=True).indices
    rank = torch.empty_like(order)
    rank[order] = torch.arange(order.numel(), device=order.device)
    n_valid = flat_mask.sum()
    keep = (n_valid * fraction.numerator + fraction.denominator - 1) // fraction.denominator
    return (flat_mask & (rank < keep)).view(mask.shape)
