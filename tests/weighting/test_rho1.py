import math

import pytest
import torch

from wmtp.weighting import rho1_mask
from wmtp.weighting.rho1 import n_selected


def test_worked_example():
    excess = torch.tensor([[0.5, -1.0, 2.0, 9.0], [1.5, 0.1, 3.0, 0.0]])
    mask = torch.tensor([[True, True, True, False], [True, True, True, False]])
    # 6 valid, k = 50% -> 3 kept: 3.0, 2.0, 1.5 (9.0 is masked)
    keep = rho1_mask(excess, mask, k_percent=0.5)
    assert keep.tolist() == [[False, False, True, False], [True, False, True, False]]


@pytest.mark.parametrize("k_percent", [0.01, 0.1, 0.3, 0.6, 0.999, 1.0])
def test_selects_ceil_k_n_valid_and_never_a_masked_entry(gen, k_percent):
    excess = torch.randn(5, 37, generator=gen)
    mask = torch.rand(5, 37, generator=gen) > 0.4
    excess[~mask] = 1e9  # masked entries would win if they were ranked
    keep = rho1_mask(excess, mask, k_percent=k_percent)
    n_valid = int(mask.sum())
    assert int(keep.sum()) == math.ceil(round(k_percent * n_valid, 6))
    assert not keep[~mask].any()
    # The kept entries are the largest valid ones.
    kept, dropped = excess[keep], excess[mask & ~keep]
    if dropped.numel():
        assert float(kept.min()) >= float(dropped.max())


def test_float_products_round_as_intended():
    assert n_selected(0.3, 10) == 3  # 0.3 * 10 = 3.0000000000000004 in floats
    assert n_selected(0.35, 10) == 4
    assert n_selected(0.5, 1) == 1
    assert n_selected(1.0, 0) == 0


def test_masked_never_chosen_even_against_minus_infinity():
    excess = torch.tensor([[float("-inf"), 0.0, float("nan")]])
    mask = torch.tensor([[True, False, True]])
    keep = rho1_mask(excess, mask, k_percent=1.0)
    assert keep.tolist() == [[True, False, True]]


def test_all_masked_and_single_valid_entry():
    none = rho1_mask(torch.randn(2, 4), torch.zeros(2, 4, dtype=torch.bool), k_percent=0.5)
    assert not none.any()
    mask = torch.zeros(2, 4, dtype=torch.bool)
    mask[1, 2] = True
    assert rho1_mask(torch.randn(2, 4), mask, k_percent=0.1).tolist() == mask.tolist()
