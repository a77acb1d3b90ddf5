"""TD weights (DESIGN.md "TD errors and GAE", "AWR weights") of two real gloo ranks, through the
object training calls (``TDWeighting.advantages`` per micro-batch, ``step_weights`` per step),
with EMA whitening: every rank weights its micro-batches with the statistics of the whole global
step (both ranks, every micro-batch), the EMA updated once a step and identical on both ranks.

The reference is plain Python over the global step: TD errors and GAE per row, the EMA of the
step's mean and unbiased variance moved by ``max(momentum, 1 / updates)`` (the step's own
statistics during warm-up), whitening, then ``exp(clamp(z / beta, ln min, ln max))``.
"""

import math
import os
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from .weighting_reference import awr_ref, gae_ref, random_rows, td_errors_ref

GAMMA, LAM, BETA, W_MIN, W_MAX = 0.95, 0.9, 0.7, 0.3, 3.0
MOMENTUM, WARMUP, STEPS = 0.25, 1, 3
SHAPES = [[(3, 11), (1, 6)], [(2, 9), (4, 14)]]
"""Per rank, its two micro-batches' ``(rows, seq)``: different counts of valid tokens."""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _micro_batches(step: int, rank: int) -> list[tuple[torch.Tensor, ...]]:
    gen = torch.Generator().manual_seed(1000 * step + 10 * rank)
    return [random_rows(gen, rows, seq) for rows, seq in SHAPES[rank]]


def _weighting():
    from wmtp import registry
    from wmtp.recipe.specs.weighting import EMANormalizeSpec, TDWeightingSpec

    normalize = EMANormalizeSpec(momentum=MOMENTUM, warmup_steps=WARMUP)
    spec = TDWeightingSpec(
        gamma=GAMMA, lam=LAM, beta=BETA, min_weight=W_MIN, max_weight=W_MAX, normalize=normalize
    )
    return registry.get("weighting", "td")(spec)


def _worker(rank: int, port: int, out_dir: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=2)
    try:
        weighting, out = _weighting(), {"weights": [], "ema": []}
        for step in range(STEPS):
            parts = [(weighting.advantages(v, r, m), m) for v, r, m in _micro_batches(step, rank)]
            weights, _ = weighting.step_weights(parts)
            out["weights"].append(weights)
            out["ema"].append(weighting.state_dict()["whitener"])
        torch.save(out, os.path.join(out_dir, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


def _advantages_ref(values, rewards, mask) -> list[list[float]]:
    out = []
    for v, r, m in zip(values.tolist(), rewards.tolist(), mask.tolist(), strict=True):
        out.append(gae_ref(td_errors_ref(v, r, m, GAMMA), m, GAMMA, LAM))
    return out


def _reference_steps() -> tuple[list[list[list[list[list[float]]]]], list[dict]]:
    """Per step: per rank, per micro-batch, the weights of each row; and the EMA after it."""
    ema = {"updates": 0, "mean": 0.0, "var": 1.0}
    steps, states = [], []
    for step in range(STEPS):
        batches = [_micro_batches(step, rank) for rank in range(2)]
        advs = [[_advantages_ref(*b) for b in per_rank] for per_rank in batches]
        pool = [
            a
            for per_rank, adv_rank in zip(batches, advs, strict=True)
            for (_, _, m), adv in zip(per_rank, adv_rank, strict=True)
            for adv_row, m_row in zip(adv, m.tolist(), strict=True)
            for a, valid in zip(adv_row, m_row, strict=True)
            if valid
        ]
        n = len(pool)
        mean = sum(pool) / n
        var = sum((a - mean) ** 2 for a in pool) / (n - 1)
        ema["updates"] += 1
        rate = max(MOMENTUM, 1 / ema["updates"])
        ema["mean"] = (1 - rate) * ema["mean"] + rate * mean
        ema["var"] = (1 - rate) * ema["var"] + rate * var
        use_mean, use_var = (mean, var) if ema["updates"] <= WARMUP else (ema["mean"], ema["var"])
        per_step = []
        for per_rank, adv_rank in zip(batches, advs, strict=True):
            per_mb = []
            for (_, _, m), adv in zip(per_rank, adv_rank, strict=True):
                rows = []
                for adv_row, m_row in zip(adv, m.tolist(), strict=True):
                    z = [(a - use_mean) / math.sqrt(use_var + 1e-8) for a in adv_row]
                    rows.append(awr_ref(z, m_row, BETA, W_MIN, W_MAX))
                per_mb.append(rows)
            per_step.append(per_mb)
        steps.append(per_step)
        states.append(dict(ema))
    return steps, states


@pytest.mark.slow
def test_two_ranks_weight_each_micro_batch_with_the_global_steps_ema(tmp_path):
    mp.start_processes(_worker, args=(_free_port(), str(tmp_path)), nprocs=2, start_method="spawn")
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in range(2)]
    want, states = _reference_steps()
    assert ranks[0]["ema"] == ranks[1]["ema"]  # one EMA, updated once a step on every rank
    for step in range(STEPS):
        assert ranks[0]["ema"][step] == pytest.approx(states[step], rel=1e-6)
        for rank in range(2):
            for got, ref in zip(ranks[rank]["weights"][step], want[step][rank], strict=True):
                torch.testing.assert_close(got, torch.tensor(ref), atol=1e-5, rtol=1e-5)
    # The example clamps at both bounds somewhere.
    every = torch.cat([w.flatten() for r in ranks for ws in r["weights"] for w in ws])
    assert bool(((every - W_MIN).abs() < 1e-6).any()) and bool(((every - W_MAX).abs() < 1e-5).any())
