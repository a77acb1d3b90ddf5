"""The learning-rate schedule against hand-computed values; a step skipped on the device against
torch's own AdamW."""

from __future__ import annotations

import math

import pytest
import torch

from wmtp.train.optim import build_optimizer, build_scheduler, lr_factor, step_unless


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
    opt = build_optimizer([p], lr=0.1, betas=(0.9, 0.95), eps=1e-8, weight_decay=0.0)
    sched = build_scheduler(opt, kind="linear", warmup_steps=2, max_steps=6, min_lr_ratio=0.0)
    seen = []
    for _ in range(6):
        seen.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert seen == pytest.approx([0.05, 0.1, 0.1, 0.075, 0.05, 0.025])


def _pair(dtype):
    """Two copies of one bf16/fp32 parameter: wmtp's optimizer on one, torch's reference on the
    other (fused too: the reference differs from ours only in never being told to skip)."""
    torch.manual_seed(0)
    a = torch.nn.Parameter(torch.randn(64, dtype=dtype))
    b = torch.nn.Parameter(a.detach().clone())
    ours = build_optimizer([a], lr=1e-2, betas=(0.9, 0.95), eps=1e-8, weight_decay=0.1)
    ref = torch.optim.AdamW([b], lr=1e-2, betas=(0.9, 0.95), eps=1e-8, weight_decay=0.1, fused=True)
    return a, b, ours, ref


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_a_skipped_step_changes_nothing_and_the_next_ones_match_a_run_without_it(dtype):
    a, b, ours, ref = _pair(dtype)
    grads = [torch.randn(64, dtype=dtype) for _ in range(4)]
    for i, g in enumerate(grads):
        if (
            i == 2
        ):  # a bad step: non-finite gradients, flagged on the device; the reference skips it
            a.grad = torch.full_like(g, float("nan"))
            before = {k: v.clone() for k, v in ours.state[a].items()}, a.detach().clone()
            step_unless(ours, torch.tensor(True))
            assert torch.equal(a.detach(), before[1])
            assert all(torch.equal(v, ours.state[a][k]) for k, v in before[0].items())
            assert not hasattr(ours, "found_inf")  # the flag is the one step's
        a.grad, b.grad = g.clone(), g.clone()
        step_unless(ours, torch.tensor(False))
        ref.step()
    assert torch.equal(a.detach(), b.detach())
    assert {k: v.tolist() for k, v in ours.state[a].items()} == {
        k: v.tolist() for k, v in ref.state[b].items()
    }
