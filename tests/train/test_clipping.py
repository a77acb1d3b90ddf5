"""Gradient clipping as the trainer's step runs it: queued on the device once the last
micro-batch's backward is queued, and what the optimizer then sees."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from tests.train.train_helpers import TINY
from wmtp.bench.step import _synthetic
from wmtp.parallel import init_distributed
from wmtp.recipe import dump_recipe, load_recipe
from wmtp.train.loop import Trainer

SMALL = ["parallel.device='cpu'", "data.max_length=32", "training.grad_accum_steps=2"]


def trainer_with(tmp_path: Path, clip: float) -> tuple[Trainer, list[float]]:
    """A tiny trainer on synthetic batches, and the gradient norm each optimizer step sees."""
    recipe = load_recipe(TINY, [*SMALL, f"training.grad_clip={clip}"]).recipe
    ctx = init_distributed("cpu")
    trainer = Trainer(recipe, dump_recipe(recipe), tmp_path, ctx, console=False)
    trainer.build(batch_source=_synthetic)
    seen: list[float] = []

    def record_norm(optimizer, args, kwargs) -> None:
        grads = [p.grad for g in optimizer.param_groups for p in g["params"] if p.grad is not None]
        seen.append(float(torch.nn.utils.get_total_norm(grads)))

    trainer.optimizer.register_step_pre_hook(record_norm)
    return trainer, seen


@pytest.mark.parametrize("clip", [0.01, 0.0, 1e6])
def test_the_update_sees_gradients_clipped_and_the_record_holds_the_norm_before(tmp_path, clip):
    """grad_clip below the norm: the optimizer sees a norm of grad_clip; 0 (never clip) or above
    the norm: the gradients as the backward left them. The logged grad_norm is the norm before."""
    trainer, seen = trainer_with(tmp_path, clip)
    norms = [trainer.train_step(None)["grad_norm"] for _ in range(2)]
    assert all(n > 0.01 for n in norms)
    expected = [min(n, clip) if clip else n for n in norms]
    assert seen == pytest.approx(expected, rel=1e-3)
