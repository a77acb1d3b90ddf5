"""Gradient clipping as the trainer's step runs it: queued on the device once the last
micro-batch's backward is queued, and what the optimizer then sees."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch

from tests.train.train_helpers import TINY
from wmtp.bench.step import _synthetic
from wmtp.parallel import init_distributed
from wmtp.recipe import dump_recipe, load_recipe
from wmtp.train.loop import Trainer

SMALL = ["parallel.device='cpu'", "data.max_length=32", "training.grad_accum_steps=2"]


def trainer_with(tmp_path: Path, clip: float) -> tuple[Trainer, list[dict]]:
    """A tiny trainer on synthetic batches, and for each optimizer step what it started from
    (weights, gradients as the backward left them, optimizer state, settings) and the weights
    it left."""
    recipe = load_recipe(TINY, [*SMALL, f"training.grad_clip={clip}"]).recipe
    ctx = init_distributed("cpu")
    trainer = Trainer(recipe, dump_recipe(recipe), tmp_path, ctx, console=False)
    trainer.build(batch_source=_synthetic)
    steps: list[dict] = []

    def params(optimizer) -> list[torch.Tensor]:
        return [p for g in optimizer.param_groups for p in g["params"]]

    def before(optimizer, args, kwargs) -> None:
        steps.append({
            "weights": [p.detach().clone() for p in params(optimizer)],
            "grads": [p.grad.detach().clone() for p in params(optimizer)],
            "state": copy.deepcopy(optimizer.state_dict()),
        })  # fmt: skip

    def after(optimizer, args, kwargs) -> None:
        steps[-1]["after"] = [p.detach().clone() for p in params(optimizer)]

    trainer.optimizer.register_step_pre_hook(before)
    trainer.optimizer.register_step_post_hook(after)
    return trainer, steps


def reference_update(step: dict, clip: float) -> list[torch.Tensor]:
    """The same step by torch's own parts, one tensor at a time: ``clip_grad_norm_`` on the
    gradients, then the plain (unfused) AdamW from the same state."""
    weights = [w.clone().requires_grad_(True) for w in step["weights"]]
    for weight, grad in zip(weights, step["grads"], strict=True):
        weight.grad = grad.clone()
    if clip:
        torch.nn.utils.clip_grad_norm_(weights, clip, foreach=False)
    state = copy.deepcopy(step["state"])
    optimizer = torch.optim.AdamW(weights, fused=False, foreach=False)
    optimizer.load_state_dict(state)  # every setting (lr, betas, eps, decay) and the moments
    optimizer.step()
    return [w.detach() for w in weights]


@pytest.mark.parametrize("clip", [0.01, 0.0, 1e6])
def test_the_update_is_adamw_on_clipped_gradients_and_the_record_holds_the_norm_before(
    tmp_path, clip
):
    """grad_clip below the norm: the weights move as torch's clip_grad_norm_ then AdamW move
    them (the trainer divides the gradients inside the fused step instead); 0 (never clip) or
    above the norm: AdamW on the gradients as the backward left them. The logged grad_norm is
    the norm before clipping."""
    trainer, steps = trainer_with(tmp_path, clip)
    norms = [trainer.train_step(None)["grad_norm"] for _ in range(2)]
    assert all(n > 0.01 for n in norms)
    for step, norm in zip(steps, norms, strict=True):
        assert float(torch.nn.utils.get_total_norm(step["grads"])) == pytest.approx(norm)
        expected = reference_update(step, clip)
        moved = max(
            float((e - w).abs().max()) for e, w in zip(expected, step["weights"], strict=True)
        )
        assert moved > 0
        for got, want in zip(step["after"], expected, strict=True):
            torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-7)
