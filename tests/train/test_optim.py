"""The learning-rate schedule against hand-computed values."""

from __future__ import annotations

import math

import pytest
import torch

from wmtp.train.optim import build_optimizer, build_scheduler, lr_factor


def test_warmup_then_cosine_to_the_floor():
    f = lambda s: lr_factor(s, kind="cosine", warmup_steps=4, max_steps=14, min_lr_ratio=0.1)  # noqa: E731
    assert [f(s) for s in range(4)] == [0.25, 0.5, 0.75, 1.0]
    assert f(9) == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 0.5)))
    assert f(14) == pytest.approx(0.1)
    assert f(100) == pytest.approx(0.1)


def test_linear_and_constant():
    lin = lambda s: lr_factor(s, kind="linear", warmup_steps=0, max_steps=10, min_lr_ratio=0.0)  # noqa: E731
    assert [lin(s) for s in (0, 5, 10)] == pytest.approx([1.0, 0.5, 0.0])
    assert lr_factor(7, kind="constant", warmup_steps=2, max_steps=10, min_lr_ratio=0.5) == 1.0


def test_scheduler_drives_the_optimizer_lr():
    p = torch.nn.Parameter(torch.zeros(3))
    opt = build_optimizer(
        [p], lr=0.1, betas=(0.9, 0.95), eps=1e-8, weight_decay=0.0, device=torch.device("cpu")
    )
    sched = build_scheduler(opt, kind="linear", warmup_steps=2, max_steps=6, min_lr_ratio=0.0)
    seen = []
    for _ in range(6):
        seen.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert seen == pytest.approx([0.05, 0.1, 0.1, 0.075, 0.05, 0.025])
