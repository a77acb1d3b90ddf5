"""Slow, independent references in plain Python (lists and loops, no torch), for the tests."""

from __future__ import annotations

import math


def td_errors_ref(
    values: list[float], reward: float, response: list[bool], gamma: float
) -> list[float]:
    """TD errors of one row, straight from the definition."""
    positions = [t for t, r in enumerate(response) if r]
    deltas = [0.0] * len(values)
    for i, t in enumerate(positions):
        is_last = i == len(positions) - 1
        target = reward if is_last else gamma * values[t]
        deltas[t] = target - values[t - 1]
    return deltas


def gae_ref(deltas: list[float], response: list[bool], gamma: float, lam: float) -> list[float]:
    """Advantages of one row: a right-to-left loop over the response tokens."""
    adv = [0.0] * len(deltas)
    following = 0.0
    for t in reversed(range(len(deltas))):
        if response[t]:
            adv[t] = deltas[t] + gamma * lam * following
            following = adv[t]
    return adv


def whiten_ref(xs: list[float], valid: list[bool]) -> list[float]:
    """(x - mean) / sqrt(unbiased var + 1e-8) over valid entries, 0 elsewhere."""
    vals = [x for x, v in zip(xs, valid, strict=True) if v]
    n = len(vals)
    if n == 0:
        return [0.0] * len(xs)
    mean = sum(vals) / n
    var = sum((x - mean) ** 2 for x in vals) / (n - 1) if n > 1 else 0.0
    return [
        (x - mean) / math.sqrt(var + 1e-8) if v else 0.0 for x, v in zip(xs, valid, strict=True)
    ]


def awr_ref(zs: list[float], valid: list[bool], beta: float, lo: float, hi: float) -> list[float]:
    """exp(clamp(z / beta, ln lo, ln hi)) at valid entries, 0 elsewhere."""
    return [
        math.exp(min(max(z / beta, math.log(lo)), math.log(hi))) if v else 0.0
        for z, v in zip(zs, valid, strict=True)
    ]


def random_rows(gen, batch: int, seq: int, *, allow_empty: bool = True):
    """``(values [B, S], rewards [B], response_mask [B, S])``: prompt, one response, padding.

    Values at the padding are NaN: the functions under test must never read them.
    """
    import torch

    values = torch.rand(batch, seq, generator=gen)
    rewards = torch.randint(0, 2, (batch,), generator=gen).float()
    mask = torch.zeros(batch, seq, dtype=torch.bool)
    for b in range(batch):
        prompt = int(torch.randint(1, max(2, seq // 2), (1,), generator=gen))
        low = 0 if allow_empty else 1
        response = int(torch.randint(low, seq - prompt + 1, (1,), generator=gen))
        mask[b, prompt : prompt + response] = True
        values[b, prompt + response :] = float("nan")
    return values, rewards, mask
