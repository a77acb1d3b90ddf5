"""Control weightings: the batch's own TD weights, with the critic's token choice destroyed.

``random_matched`` draws every valid token's weight independently from the empirical distribution
of the batch's valid TD weights (same distribution, no relation to the token); ``shuffled`` permutes
the batch's valid weights among its valid tokens (same multiset of weights). If these train as well
as ``td``, the critic's choice of tokens does not matter.
"""

from __future__ import annotations

import torch


def random_matched(
    weights: torch.Tensor, mask: torch.Tensor, *, generator: torch.Generator
) -> torch.Tensor:
    """Weights drawn with replacement from ``weights[mask]``; 0 at masked entries."""
    assert weights.shape == mask.shape, (
        f"weights {tuple(weights.shape)} vs mask {tuple(mask.shape)}"
    )
    out = torch.zeros(weights.shape, dtype=torch.float32, device=weights.device)
    pool = weights[mask].float()
    if pool.numel() == 0:
        return out
    draw = torch.randint(
        pool.numel(), (pool.numel(),), generator=generator, device=generator.device
    )
    out[mask] = pool[draw.to(pool.device)]
    return out


def shuffled(
    weights: torch.Tensor, mask: torch.Tensor, *, generator: torch.Generator
) -> torch.Tensor:
    """``weights[mask]`` permuted at random among the valid entries; 0 at masked entries."""
    assert weights.shape == mask.shape, (
        f"weights {tuple(weights.shape)} vs mask {tuple(mask.shape)}"
    )
    out = torch.zeros(weights.shape, dtype=torch.float32, device=weights.device)
    pool = weights[mask].float()
    perm = torch.randperm(pool.numel(), generator=generator, device=generator.device)
    out[mask] = pool[perm.to(pool.device)]
    return out
