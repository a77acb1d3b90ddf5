"""The unbiased pass@k estimator of Chen et al. (2021), and its mean over problems.

With ``n`` samples of a problem of which ``c`` pass, pass@k = 1 - C(n - c, k) / C(n, k): the
chance that at least one of ``k`` samples drawn without replacement from the ``n`` passes. The
naive ``1 - (1 - c/n)**k`` draws *with* replacement and underestimates it (n=10, c=3, k=5: 0.8319
against the unbiased 0.9167).

A benchmark's score is the mean of the per-problem values; its standard error
(:func:`pass_at_k_stderr`) is the standard error of that mean across problems.
"""

from __future__ import annotations

import math
from collections.abc import Iterable


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k of one problem with ``n`` samples, ``c`` of them correct.

    Computed as the product ``1 - prod_{i = n-c+1}^{n} (1 - k / i)``, which equals
    ``1 - C(n-c, k) / C(n, k)`` but never forms the binomials (they overflow floats for n in the
    hundreds). Returns 1.0 when ``n - c < k`` (every draw of ``k`` holds a correct sample).

    Raises ``ValueError`` when ``k > n``: pass@k is not defined with fewer samples than ``k``, and
    dropping such problems silently would bias the mean.
    """
    if not (isinstance(n, int) and isinstance(c, int) and isinstance(k, int)):
        raise TypeError(f"pass_at_k takes integers, got n={n!r}, c={c!r}, k={k!r}")
    if k < 1:
        raise ValueError(f"pass@k needs k >= 1, got k={k}")
    if not 0 <= c <= n:
        raise ValueError(f"pass@k needs 0 <= c <= n, got n={n}, c={c}")
    if k > n:
        raise ValueError(f"pass@{k} needs at least {k} samples per problem, got n={n}")
    if n - c < k:
        return 1.0
    all_fail = 1.0
    for i in range(n - c + 1, n + 1):
        all_fail *= 1.0 - k / i
    return 1.0 - all_fail


def mean_pass_at_k(counts: Iterable[tuple[int, int]], k: int) -> float:
    """Mean pass@k over problems given ``(n, c)`` per problem; every problem must have n >= k."""
    values = [pass_at_k(n, c, k) for n, c in counts]
    if not values:
        raise ValueError("pass@k over zero problems is undefined")
    return sum(values) / len(values)


def pass_at_k_stderr(counts: Iterable[tuple[int, int]], k: int) -> float | None:
    """Standard error of :func:`mean_pass_at_k` across problems; ``None`` for one problem.

    The estimator: the standard error of the mean of the per-problem unbiased pass@k values
    ``x_1..x_m``, ``s / sqrt(m)`` with ``s`` their sample standard deviation (``m - 1`` in its
    denominator). It measures how the score would move with another draw of ``m`` problems like
    these (the spread within a problem's ``n`` samples is part of each ``x_i``); it is the
    error bar to put on a comparison of two models on the same problems only as an upper bound
    (a paired difference is tighter).
    """
    values = [pass_at_k(n, c, k) for n, c in counts]
    if len(values) < 2:
        return None
    mean = sum(values) / len(values)
    variance = sum((x - mean) ** 2 for x in values) / (len(values) - 1)
    return math.sqrt(variance / len(values))


__all__ = ["mean_pass_at_k", "pass_at_k", "pass_at_k_stderr"]
