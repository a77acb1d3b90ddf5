"""Which rows train, in what order: splits, subsets, uniform and difficulty-binned orders,
length-balanced correct/incorrect pairs, and each rank's share.

Every function is a pure function of its arguments and a seed (``numpy.random.default_rng`` on a
tuple of seed, epoch and a purpose tag), so every rank computes the same global order and then
takes its own slice with :func:`shard`: no communication, and a rerun reproduces it exactly.
"""

from __future__ import annotations

import zlib
from collections.abc import Mapping

import numpy as np

from wmtp.data.metadata import NO_DIFFICULTY
from wmtp.errors import DataError, RecipeDataError


def rng_for(seed: int, epoch: int, purpose: str) -> np.random.Generator:
    """A generator fixed by (seed, epoch, purpose), independent across purposes."""
    return np.random.default_rng([seed, epoch, zlib.crc32(purpose.encode())])


def split_problems(
    problem_ids: list[str], heldout_fraction: float, seed: int
) -> tuple[set[str], set[str]]:
    """(train, held-out) problem ids: ``round(fraction * n)`` problems held out, at least one
    when the fraction is positive and there are two or more problems."""
    ordered = sorted(problem_ids)
    n_heldout = round(heldout_fraction * len(ordered))
    if heldout_fraction > 0 and len(ordered) > 1:
        n_heldout = min(max(n_heldout, 1), len(ordered) - 1)
    chosen = rng_for(seed, 0, "split").permutation(len(ordered))[:n_heldout]
    heldout = {ordered[i] for i in chosen}
    return set(ordered) - heldout, heldout


def subsample(indices: np.ndarray, n_samples: int | None, seed: int) -> np.ndarray:
    """``n_samples`` of ``indices`` chosen with the seed (all when None or more than there are),
    kept in their original order."""
    if n_samples is None or n_samples >= len(indices):
        return indices
    keep = rng_for(seed, 0, "subsample").choice(len(indices), size=n_samples, replace=False)
    return indices[np.sort(keep)]


def uniform_order(indices: np.ndarray, seed: int, epoch: int) -> np.ndarray:
    """``indices`` shuffled, differently each epoch."""
    return indices[rng_for(seed, epoch, "uniform").permutation(len(indices))]


def difficulty_bins(
    indices: np.ndarray, difficulty: np.ndarray, bins: Mapping[str, tuple[int, int]]
) -> tuple[dict[str, np.ndarray], int]:
    """Rows of each bin (inclusive ranges), and how many rows fall in no bin. A row of unknown
    difficulty (``metadata.NO_DIFFICULTY``) is in no bin, whatever the ranges."""
    members = {}
    covered = np.zeros(len(indices), dtype=bool)
    values = difficulty[indices]
    known = values != NO_DIFFICULTY
    for name, (low, high) in bins.items():
        inside = known & (values >= low) & (values <= high)
        members[name] = indices[inside]
        covered |= inside
    return members, int((~covered).sum())


def difficulty_order(
    members: Mapping[str, np.ndarray],
    weights: Mapping[str, float],
    seed: int,
    epoch: int,
    n_draws: int | None = None,
) -> np.ndarray:
    """``n_draws`` rows (default: all binned rows): each draw picks a bin with probability
    proportional to its weight, then that bin's next row; a bin's rows are reshuffled when used
    up, so rare bins repeat rather than run dry."""
    names = [name for name in sorted(members) if weights.get(name, 0) > 0]
    assert all(len(members[name]) for name in names), "DifficultySampler.check_drawable first"
    if not names:
        raise DataError("data.sampling.weights: no bin with a positive weight has examples")
    total = n_draws if n_draws is not None else sum(len(members[n]) for n in names)
    rng = rng_for(seed, epoch, "difficulty")
    p = np.array([weights[n] for n in names], dtype=np.float64)
    picks = rng.choice(len(names), size=total, p=p / p.sum())
    order = np.empty(total, dtype=np.int64)
    for b, name in enumerate(names):
        slots = np.flatnonzero(picks == b)
        rows = members[name]
        rounds = -(-len(slots) // len(rows)) if len(slots) else 0
        stream = np.concatenate(
            [rows[rng.permutation(len(rows))] for _ in range(rounds)] or [rows[:0]]
        )
        order[slots] = stream[: len(slots)]
    return order


def length_bin(n_tokens: np.ndarray, edges: list[int]) -> np.ndarray:
    """Bin of every length: bin i holds lengths in (edges[i-1], edges[i]]; longer ones the last."""
    return np.searchsorted(np.asarray(edges), n_tokens, side="left")


def length_balanced_pairs(
    rows: np.ndarray,
    problem_of_row: np.ndarray,
    is_correct: np.ndarray,
    n_tokens: np.ndarray,
    *,
    length_bins: list[int],
    max_pairs_per_problem: int,
    unique: bool,
    seed: int,
    epoch: int,
) -> np.ndarray:
    """(correct, incorrect) row pairs ``[P, 2]`` of the same problem and the same length bin, so a
    critic cannot rank a pair by length. Pairs are distinct; with ``unique`` every solution is in
    at most one pair. At most ``max_pairs_per_problem`` per problem; shuffled."""
    rng = rng_for(seed, epoch, "pairs")
    bins = length_bin(n_tokens[rows], length_bins)
    pairs = []
    for problem in np.unique(problem_of_row[rows]):
        mine = problem_of_row[rows] == problem
        candidates = []
        for b in np.unique(bins[mine]):
            in_bin = mine & (bins == b)
            good = rows[in_bin & is_correct[rows]]
            bad = rows[in_bin & ~is_correct[rows]]
            candidates.extend(_pairs_in_bin(good, bad, unique, max_pairs_per_problem, rng))
        if candidates:
            keep = rng.permutation(len(candidates))[:max_pairs_per_problem]
            pairs.extend(candidates[i] for i in keep)
    if not pairs:
        return np.zeros((0, 2), dtype=np.int64)
    out = np.asarray(pairs, dtype=np.int64)
    return out[rng.permutation(len(out))]


def _pairs_in_bin(good: np.ndarray, bad: np.ndarray, unique: bool, cap: int, rng) -> list:
    if len(good) == 0 or len(bad) == 0:
        return []
    if unique:  # each solution once: match shuffled lists
        g, b = good[rng.permutation(len(good))], bad[rng.permutation(len(bad))]
        n = min(len(g), len(b))
        return list(zip(g[:n].tolist(), b[:n].tolist(), strict=True))
    total = len(good) * len(bad)
    flat = rng.choice(total, size=min(total, cap), replace=False)  # distinct pairs
    return [(int(good[i // len(bad)]), int(bad[i % len(bad)])) for i in flat]


def shard(order: np.ndarray, rank: int, world_size: int) -> np.ndarray:
    """This rank's share of a global ``order``: every ``world_size``-th item from ``rank``, after
    cutting the tail so every rank gets the same count (the cut is ``len(order) % world_size``)."""
    assert 0 <= rank < world_size, (rank, world_size)
    usable = len(order) - len(order) % world_size
    return order[:usable][rank::world_size]


class UniformSampler:
    """Every training row once per epoch, shuffled anew each epoch."""

    def order(self, rows: np.ndarray, difficulty: np.ndarray, seed: int, epoch: int) -> np.ndarray:
        return uniform_order(rows, seed, epoch)

    def left_out(self, rows: np.ndarray, difficulty: np.ndarray) -> dict[str, int]:
        return {}


class DifficultySampler:
    """Rows drawn by difficulty bin with fixed bin probabilities (as many draws per epoch as there
    are rows in bins of positive weight); rows in no bin, or in a bin of weight 0, are never
    drawn, and counted."""

    def __init__(self, bins: Mapping[str, tuple[int, int]], weights: Mapping[str, float]):
        self.bins, self.weights = dict(bins), dict(weights)

    def order(self, rows: np.ndarray, difficulty: np.ndarray, seed: int, epoch: int) -> np.ndarray:
        self.check_drawable(rows, difficulty)
        members, _ = difficulty_bins(rows, difficulty, self.bins)
        return difficulty_order(members, self.weights, seed, epoch)

    def check_drawable(self, rows: np.ndarray, difficulty: np.ndarray) -> None:
        """Each bin of positive weight holds some of ``rows``: a :class:`RecipeDataError` at the
        recipe key to change where one holds none (no row with a difficulty at all: the key
        that chose difficulty sampling)."""
        if len(rows) and bool((difficulty[rows] == NO_DIFFICULTY).all()):
            raise RecipeDataError(
                "data.sampling.kind",
                f"'difficulty', but none of the {len(rows):,} training rows it draws from has a "
                "difficulty (train.jsonl's optional field): set data.sampling = { kind = "
                "'uniform' }, or give the rows a difficulty",
            )
        members, _ = difficulty_bins(rows, difficulty, self.bins)
        for name in sorted(members):
            if self.weights.get(name, 0) > 0 and len(members[name]) == 0:
                raise RecipeDataError(
                    f"data.sampling.weights.{name}",
                    f"{self.weights[name]}, but no training row's difficulty is in "
                    f"data.sampling.bins.{name}: set its weight to 0 or widen the bin",
                )

    def left_out(self, rows: np.ndarray, difficulty: np.ndarray) -> dict[str, int]:
        members, outside = difficulty_bins(rows, difficulty, self.bins)
        unweighted = sum(len(m) for name, m in members.items() if self.weights.get(name, 0) <= 0)
        return {
            "difficulty unknown or in no bin (never drawn)": outside,
            "in a difficulty bin of weight 0 (never drawn)": unweighted,
        }
