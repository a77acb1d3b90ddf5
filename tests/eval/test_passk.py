"""pass@k against worked values and an exact rational computation."""

from __future__ import annotations

import math
from fractions import Fraction

import pytest

from wmtp.eval import mean_pass_at_k, pass_at_k, pass_at_k_stderr


def exact_pass_at_k(n: int, c: int, k: int) -> Fraction:
    """1 - C(n-c, k) / C(n, k) in exact rationals (math.comb is 0 when n - c < k)."""
    return 1 - Fraction(math.comb(n - c, k), math.comb(n, k))


def test_worked_value_beats_naive_estimate():
    assert pass_at_k(10, 3, 5) == pytest.approx(0.916667, abs=1e-6)
    # 1 - C(7,5)/C(10,5) = 1 - 21/252 = 11/12
    assert pass_at_k(10, 3, 5) == pytest.approx(11 / 12, rel=1e-12)
    naive = 1 - (1 - 3 / 10) ** 5
    assert naive == pytest.approx(0.83193, abs=1e-5)


@pytest.mark.parametrize("n", [1, 2, 5, 10, 20, 37])
def test_matches_exact_fractions_everywhere(n):
    for c in range(n + 1):
        for k in range(1, n + 1):
            assert pass_at_k(n, c, k) == pytest.approx(float(exact_pass_at_k(n, c, k)), abs=1e-12)


def test_large_n_stays_finite_and_exact():
    # C(1000, 500) overflows a float; the product form does not.
    value = pass_at_k(1000, 7, 500)
    assert value == pytest.approx(float(exact_pass_at_k(1000, 7, 500)), rel=1e-12)
    assert 0.99 < value <= 1.0


def test_edges():
    assert pass_at_k(10, 0, 1) == 0.0
    assert pass_at_k(10, 10, 10) == 1.0
    assert pass_at_k(10, 6, 5) == 1.0  # n - c < k: every 5-subset holds a correct sample
    assert pass_at_k(10, 3, 1) == pytest.approx(0.3)  # pass@1 is the fraction correct


def test_k_larger_than_n_is_an_error():
    with pytest.raises(ValueError, match=r"pass@11 needs at least 11 samples"):
        pass_at_k(10, 3, 11)
    with pytest.raises(ValueError, match="0 <= c <= n"):
        pass_at_k(5, 6, 1)
    with pytest.raises(ValueError, match="k >= 1"):
        pass_at_k(5, 1, 0)


def test_mean_over_problems():
    assert mean_pass_at_k([(10, 3), (10, 0)], 5) == pytest.approx((11 / 12) / 2)
    with pytest.raises(ValueError):
        mean_pass_at_k([(10, 3), (4, 1)], 5)


def test_standard_error_across_problems_by_hand():
    """Three problems of n = 4: c = 4, 2, 0 -> pass@1 = 1, 1/2, 0 (mean 1/2); their sample
    variance is ((1/2)^2 + 0 + (1/2)^2) / (3 - 1) = 1/4, so the s.e. is sqrt(1/4 / 3)."""
    counts = [(4, 4), (4, 2), (4, 0)]
    assert mean_pass_at_k(counts, 1) == pytest.approx(0.5)
    assert pass_at_k_stderr(counts, 1) == pytest.approx(math.sqrt(0.25 / 3))
    # pass@2 per problem: 1, 1 - C(2,2)/C(4,2) = 5/6, 0 -> mean 11/18
    values = [1.0, 5 / 6, 0.0]
    mean = sum(values) / 3
    by_hand = math.sqrt(sum((x - mean) ** 2 for x in values) / 2 / 3)
    assert pass_at_k_stderr(counts, 2) == pytest.approx(by_hand)


def test_standard_error_edges():
    assert pass_at_k_stderr([(4, 1)], 1) is None  # one problem: no spread to measure
    assert pass_at_k_stderr([(4, 1), (4, 1)], 1) == 0.0  # identical problems
