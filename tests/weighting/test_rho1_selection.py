"""Rho-1 selection (DESIGN.md "Rho-1"): how many tokens are kept when k% of them is fractional,
which ones when excess losses tie, and that a padded and a packed layout of the same documents
keep the same tokens. References in plain Python (integers, lists)."""

import pytest
import torch

from wmtp.weighting import rho1_mask
from wmtp.weighting.rho1 import n_selected


def _ceil_of_decimal(k_percent: float, n: int) -> int:
    """ceil(k * n) in integers, k as the decimal a recipe writes ("0.60001" = 60001 / 100000)."""
    whole, _, digits = repr(k_percent).partition(".")
    numerator, denominator = int(whole + digits), 10 ** len(digits)
    return -(-numerator * n // denominator)


@pytest.mark.parametrize("k_percent", [0.3, 0.6, 0.7, 0.35, 0.60001, 0.12347, 0.999, 1.0])
def test_kept_count_is_the_ceiling_of_the_ratio_the_recipe_wrote(k_percent):
    # 0.60001 of 40001 valid targets is 24001.00001 tokens: 24002 are kept, never 24001.
    for n in [*range(0, 60), 1000, 23366, 40001, 65536, 99991]:
        assert n_selected(k_percent, n) == _ceil_of_decimal(k_percent, n), n


def test_the_mask_keeps_that_count_where_float_rounding_would_drop_a_token():
    n = 40001
    excess = torch.arange(n, dtype=torch.float32).flip(0)[None, :]  # largest first
    keep = rho1_mask(excess, torch.ones(1, n, dtype=torch.bool), k_percent=0.60001)
    assert int(keep.sum()) == 24002 and bool(keep[0, :24002].all())


def test_ties_are_broken_by_position_in_the_batch():
    # 10 valid targets, 30% -> 3 kept. The largest (5.0) is kept; four tie at 2.0 for the other
    # two places: the two that come first (row by row, then by position) win.
    excess = torch.tensor([[1.0, 2.0, 0.0, 2.0, 9.0], [2.0, 5.0, 2.0, 0.5, 0.0]])
    mask = torch.tensor([[True, True, True, True, False], [True, True, True, True, True]])
    keep = rho1_mask(excess, mask, k_percent=0.3)
    assert keep.tolist() == [
        [False, True, False, True, False],
        [False, True, False, False, False],
    ]


def _documents(gen) -> list[list[float]]:
    """Excess losses of five documents with many ties (values on a coarse grid)."""
    lengths = [7, 3, 11, 1, 6]
    return [torch.randint(0, 4, (n,), generator=gen).float().tolist() for n in lengths]


def _padded(docs):
    width = max(len(d) for d in docs)
    excess = torch.full((len(docs), width), 99.0)  # padding: never valid, would win if read
    mask = torch.zeros(len(docs), width, dtype=torch.bool)
    for i, d in enumerate(docs):
        excess[i, : len(d)], mask[i, : len(d)] = torch.tensor(d), True
    return excess, mask


def _packed(docs, row: int = 16):
    """Documents back to back (next fit) in rows of ``row`` targets, the rest padding."""
    rows, used = [[]], 0
    for d in docs:
        if used + len(d) > row:
            rows.append([])
            used = 0
        rows[-1].append(d)
        used += len(d)
    excess = torch.full((len(rows), row), 99.0)
    mask = torch.zeros(len(rows), row, dtype=torch.bool)
    for r, in_row in enumerate(rows):
        flat = [x for d in in_row for x in d]
        excess[r, : len(flat)], mask[r, : len(flat)] = torch.tensor(flat), True
    return excess, mask


def _kept_per_document(keep, mask, docs) -> list[list[bool]]:
    flat = keep[mask].tolist()  # the valid targets, in document order in both layouts
    out, start = [], 0
    for d in docs:
        out.append(flat[start : start + len(d)])
        start += len(d)
    return out


def _reference(docs, k_percent) -> list[list[bool]]:
    """Sort all targets by excess, largest first, ties by their order; keep ceil(k n)."""
    scored = [(-x, i, j) for i, d in enumerate(docs) for j, x in enumerate(d)]
    n_keep = _ceil_of_decimal(k_percent, len(scored))
    kept = {(i, j) for _, i, j in sorted(scored)[:n_keep]}
    return [[(i, j) in kept for j in range(len(d))] for i, d in enumerate(docs)]


@pytest.mark.parametrize("k_percent", [0.3, 0.6, 0.75])
def test_padded_and_packed_layouts_keep_the_same_tokens_of_each_document(gen, k_percent):
    docs = _documents(gen)
    want = _reference(docs, k_percent)
    for excess, mask in (_padded(docs), _packed(docs)):
        keep = rho1_mask(excess, mask, k_percent=k_percent)
        assert not keep[~mask].any()
        assert _kept_per_document(keep, mask, docs) == want
