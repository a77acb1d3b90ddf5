"""Rho-1 (DESIGN.md "Rho-1") on the path training takes: the tokens a head keeps
(``Rho1HeadWeights``, which calls ``rho1_mask`` on the device) are as many as the loss divides
by (``kept_per_head``, which calls ``n_selected`` on the host), whatever decimal ``k_percent`` is.

A ``k_percent`` with many digits (2/3 written as 0.6666666666666666, or 0.1 + 0.2 written out as
0.30000000000000004) once made ``n_valid * numerator`` overflow int64 on the device: a head of
3000 valid targets kept 0 tokens (or 163) while the loss divided by 2000 (or 901).
"""

import math

import pytest
import torch

from wmtp import registry
from wmtp.recipe.specs.weighting import Rho1WeightingSpec
from wmtp.train.pipelines.rho1 import Rho1HeadWeights, kept_per_head

N_VALID = 3000


def _head_one(k_percent: float) -> tuple[torch.Tensor, torch.Tensor]:
    """``(kept by the weights, the loss's denominator)`` of head 1 of one row of ``N_VALID``
    targets after a one-token prompt, excess losses all distinct."""
    labels_BS = torch.arange(N_VALID + 1)[None, :]
    labels_BS[0, 0] = -100
    selection = registry.get("weighting", "rho1")(Rho1WeightingSpec(k_percent=k_percent))
    targets_BT = labels_BS[:, 1:]
    policy_ce_BT = torch.linspace(0.0, 5.0, N_VALID)[None, :]
    weights = Rho1HeadWeights(selection, [torch.zeros_like(policy_ce_BT)])
    kept_BT = weights(1, policy_ce_BT, targets_BT)
    return kept_BT, kept_per_head(labels_BS, 1, k_percent)[0]


@pytest.mark.parametrize(("k_percent", "meant"), [(0.6666666666666666, 2 / 3), (0.1 + 0.2, 0.3)])
def test_a_many_digit_k_percent_keeps_as_many_tokens_as_the_loss_divides_by(k_percent, meant):
    kept_BT, denominator = _head_one(k_percent)
    n_kept = int(kept_BT.sum())
    assert n_kept == int(denominator)
    assert n_kept == math.ceil(round(meant * N_VALID, 9))  # 2000 and 900 of 3000
    # The kept ones are the largest excesses: the last n_kept targets.
    assert kept_BT[0, -n_kept:].all() and not kept_BT[0, :-n_kept].any()


@pytest.mark.parametrize(("k_percent", "n_kept"), [(0.60001, 1801), (1e-12, 1), (1.0, N_VALID)])
def test_other_decimals_still_round_up_exactly(k_percent, n_kept):
    # 0.60001 of 3000 is 1800.03 tokens: 1801 kept; 1e-12 of 3000 rounds up to one token.
    kept_BT, denominator = _head_one(k_percent)
    assert int(kept_BT.sum()) == int(denominator) == n_kept
