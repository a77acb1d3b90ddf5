"""Training losses. ``mtp``: the weighted multi-token-prediction cross-entropy (memory-efficient).

The critic's pairwise and lambda-return losses live in ``wmtp.losses.critic``.
"""

from wmtp.losses.mtp import (
    IGNORE_INDEX,
    HeadWeightFn,
    MTPLossConfig,
    MTPStats,
    linear_cross_entropy,
    loss_and_backward,
    weight_sums,
)

__all__ = [
    "IGNORE_INDEX",
    "HeadWeightFn",
    "MTPLossConfig",
    "MTPStats",
    "linear_cross_entropy",
    "loss_and_backward",
    "weight_sums",
]
