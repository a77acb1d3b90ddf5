from collections import Counter

import torch

from wmtp.weighting import random_matched, shuffled


def _weights_and_mask(gen):
    weights = torch.rand(4, 30, generator=gen) * 3
    mask = torch.rand(4, 30, generator=gen) > 0.3
    weights[~mask] = 0.0
    return weights, mask


def test_shuffled_is_a_permutation_of_the_valid_weights(gen):
    weights, mask = _weights_and_mask(gen)
    out = shuffled(weights, mask, generator=torch.Generator().manual_seed(0))
    assert torch.equal(out[~mask], torch.zeros(int((~mask).sum())))
    assert torch.equal(out[mask].sort().values, weights[mask].sort().values)
    assert not torch.equal(out, weights)


def test_random_matched_draws_from_the_batch_weights(gen):
    weights, mask = _weights_and_mask(gen)
    out = random_matched(weights, mask, generator=torch.Generator().manual_seed(0))
    assert torch.equal(out[~mask], torch.zeros(int((~mask).sum())))
    pool = set(weights[mask].tolist())
    assert set(out[mask].tolist()) <= pool
    # Drawn with replacement: some weight repeats (80+ draws from 80+ values).
    assert max(Counter(out[mask].tolist()).values()) > 1


def test_random_matched_matches_the_distribution():
    # Two values in proportion 1:3; 40k draws reproduce the proportion.
    weights = torch.tensor([[0.5] * 10 + [2.0] * 30])
    mask = torch.ones_like(weights, dtype=torch.bool)
    big_w, big_m = weights.repeat(1000, 1), mask.repeat(1000, 1)
    out = random_matched(big_w, big_m, generator=torch.Generator().manual_seed(1))
    share = float((out == 2.0).float().mean())
    assert abs(share - 0.75) < 0.01  # 5 standard errors


def test_seeded_and_empty():
    weights = torch.tensor([[1.0, 2.0, 3.0]])
    mask = torch.tensor([[True, True, True]])
    a = shuffled(weights, mask, generator=torch.Generator().manual_seed(5))
    b = shuffled(weights, mask, generator=torch.Generator().manual_seed(5))
    assert torch.equal(a, b)
    empty = torch.zeros(1, 3, dtype=torch.bool)
    gen = torch.Generator().manual_seed(0)
    assert torch.equal(random_matched(weights, empty, generator=gen), torch.zeros(1, 3))
    assert torch.equal(shuffled(weights, empty, generator=gen), torch.zeros(1, 3))
