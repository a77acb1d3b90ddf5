"""Splits, orders and pairs: deterministic for a seed, rank-aware, and doing what they say."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest

from wmtp.data import samplers
from wmtp.data.metadata import NO_DIFFICULTY
from wmtp.errors import RecipeDataError


def test_split_is_by_problem_deterministic_and_seed_dependent():
    ids = [f"P{i}" for i in range(100)]
    train, held = samplers.split_problems(ids, 0.1, seed=3)
    assert len(held) == 10 and train | held == set(ids) and not train & held
    assert samplers.split_problems(list(reversed(ids)), 0.1, seed=3) == (train, held)
    assert samplers.split_problems(ids, 0.1, seed=4)[1] != held
    assert samplers.split_problems(["a", "b"], 0.01, seed=0)[1] != set()  # at least one
    assert samplers.split_problems(ids, 0.0, seed=0) == (set(ids), set())


def test_subsample_keeps_n_in_order():
    idx = np.arange(100, 200)
    sub = samplers.subsample(idx, 10, seed=1)
    assert len(sub) == 10 and np.all(np.diff(sub) > 0) and set(sub) <= set(idx)
    assert np.array_equal(sub, samplers.subsample(idx, 10, seed=1))
    assert samplers.subsample(idx, None, 1) is idx and len(samplers.subsample(idx, 500, 1)) == 100


def test_uniform_order_is_a_permutation_that_changes_per_epoch():
    idx = np.arange(50)
    a, b = samplers.uniform_order(idx, 0, 0), samplers.uniform_order(idx, 0, 1)
    assert sorted(a) == list(idx) and not np.array_equal(a, b)
    assert np.array_equal(a, samplers.uniform_order(idx, 0, 0))


def test_difficulty_order_follows_the_weights():
    difficulty = np.array([1] * 50 + [10] * 30 + [20] * 20 + [-1] * 7)
    idx = np.arange(len(difficulty))
    bins = {"easy": (1, 8), "medium": (9, 15), "hard": (16, 25)}
    members, outside = samplers.difficulty_bins(idx, difficulty, bins)
    assert outside == 7 and [len(members[k]) for k in ("easy", "medium", "hard")] == [50, 30, 20]
    weights = {"easy": 0.2, "medium": 0.5, "hard": 0.3}
    order = samplers.difficulty_order(members, weights, seed=0, epoch=0, n_draws=20_000)
    share = Counter(
        "easy" if d <= 8 else "medium" if d <= 15 else "hard" for d in difficulty[order]
    )
    for name, w in weights.items():  # binomial sd ~ 0.0035: 0.02 is > 5 sd
        assert abs(share[name] / 20_000 - w) < 0.02, (name, share)
    # Within a bin, rows are drawn without replacement until the bin is used up.
    easy_draws = [i for i in order[:200] if difficulty[i] == 1]
    assert len(set(easy_draws[:50])) == min(50, len(easy_draws))
    assert np.array_equal(order, samplers.difficulty_order(members, weights, 0, 0, 20_000))


def test_a_weighted_bin_without_rows_is_an_error_at_its_key():
    sampler = samplers.DifficultySampler({"easy": (0, 5), "hard": (6, 10)}, {"easy": 1, "hard": 1})
    difficulty = np.array([1, 2, 3, NO_DIFFICULTY])
    with pytest.raises(RecipeDataError, match=r"^data.sampling.weights.hard: 1, but no training"):
        sampler.order(np.arange(4), difficulty, seed=0, epoch=0)
    unknown = np.full(4, NO_DIFFICULTY)
    with pytest.raises(RecipeDataError, match=r"^data.sampling.kind: 'difficulty', but none of"):
        sampler.order(np.arange(4), unknown, seed=0, epoch=0)


def _pairs_fixture():
    rng = np.random.default_rng(0)
    n = 400
    problem = rng.integers(0, 20, n)
    correct = rng.random(n) < 0.5
    n_tokens = rng.integers(10, 1000, n)
    return np.arange(n), problem, correct, n_tokens


@pytest.mark.parametrize("unique", [True, False])
def test_pairs_are_same_problem_same_length_bin_distinct_and_capped(unique):
    rows, problem, correct, n_tokens = _pairs_fixture()
    edges = [128, 256, 512]
    pairs = samplers.length_balanced_pairs(
        rows, problem, correct, n_tokens,
        length_bins=edges, max_pairs_per_problem=6, unique=unique, seed=0, epoch=0,
    )  # fmt: skip
    assert len(pairs) > 50
    good, bad = pairs[:, 0], pairs[:, 1]
    assert correct[good].all() and not correct[bad].any()
    assert np.array_equal(problem[good], problem[bad])
    bins = samplers.length_bin(n_tokens, edges)
    assert np.array_equal(bins[good], bins[bad])
    assert len({tuple(p) for p in pairs.tolist()}) == len(pairs)  # distinct pairs
    assert max(Counter(problem[good].tolist()).values()) <= 6
    if unique:
        assert len(set(good)) == len(good) and len(set(bad)) == len(bad)


def test_length_bins_are_upper_inclusive_edges():
    assert samplers.length_bin(np.array([1, 128, 129, 256, 257, 9999]), [128, 256]).tolist() == [
        0, 0, 1, 1, 2, 2,
    ]  # fmt: skip


def test_pairs_are_deterministic_for_a_seed_and_epoch():
    args = _pairs_fixture()
    kw = dict(length_bins=[256], max_pairs_per_problem=4, unique=True)
    a = samplers.length_balanced_pairs(*args, **kw, seed=1, epoch=0)
    assert np.array_equal(a, samplers.length_balanced_pairs(*args, **kw, seed=1, epoch=0))
    assert not np.array_equal(a, samplers.length_balanced_pairs(*args, **kw, seed=1, epoch=1))


def test_ranks_take_disjoint_equal_slices_that_cover_the_order():
    order = np.random.default_rng(0).permutation(103)
    shards = [samplers.shard(order, r, 4) for r in range(4)]
    assert {len(s) for s in shards} == {25}
    together = np.concatenate(shards)
    assert len(set(together)) == 100 and set(together) == set(order[:100])
