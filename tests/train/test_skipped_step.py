"""A step whose loss or gradients are not finite is skipped on the device (the optimizer step is
queued before the host reads anything, ``wmtp.train.optim.step_unless``): nothing it touches
changes, and the run goes on exactly as one that never had that step."""

from __future__ import annotations

import math
from pathlib import Path

import torch

from tests.gpu import needs_cuda
from tests.train.train_helpers import TINY
from wmtp.bench.step import _synthetic
from wmtp.parallel import init_distributed
from wmtp.recipe import dump_recipe, load_recipe
from wmtp.train.loop import Trainer

SMALL = ["parallel.device='cpu'", "data.max_length=32", "training.max_bad_steps=1"]


def _trainer(run_dir: Path, device: str = "cpu") -> Trainer:
    recipe = load_recipe(TINY, [*SMALL, f"parallel.device='{device}'"]).recipe
    ctx = init_distributed(device)
    trainer = Trainer(recipe, dump_recipe(recipe), run_dir, ctx, console=False)
    return trainer.build(batch_source=_synthetic)


def _state(trainer: Trainer) -> dict[str, torch.Tensor]:
    weights = {f"w.{n}": p.detach().clone() for n, p in trainer.model.named_parameters()}
    moments = {
        f"opt.{i}.{k}": v.clone()
        for i, state in enumerate(trainer.optimizer.state.values())
        for k, v in state.items()
    }
    return weights | moments


def _equal(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> list[str]:
    assert a.keys() == b.keys()
    return [k for k in a if not torch.equal(a[k], b[k])]


def _nan_third_step(trainer: Trainer, monkeypatch) -> dict[str, torch.Tensor]:
    """Two good steps, then a third whose gradients are NaN, checked skipped: nothing it
    touches changed. The state before it."""
    for _ in range(2):
        trainer.train_step(None)
        trainer.step += 1
    before = _state(trainer)
    monkeypatch.setenv("WMTP_FAULT", "rank=0,step=3,kind=nan")  # head 2's gradients become NaN
    record = trainer.train_step(None)
    trainer.step += 1
    monkeypatch.delenv("WMTP_FAULT")
    assert record == {"skipped": 1.0, "bad_steps": 1.0}
    assert _equal(before, _state(trainer)) == []  # weights, moments and step counts
    return before


def test_a_nan_step_changes_nothing_and_the_next_step_trains_as_without_it(tmp_path, monkeypatch):
    faulty = _trainer(tmp_path / "faulty")
    _nan_third_step(faulty, monkeypatch)
    assert all(p.grad is None for p in faulty.model.parameters())
    faulty.train_step(None)

    # The reference never queues step 3: it draws its batches and moves the schedule on, as a
    # skipped step does, then trains step 4 on the host's say-so alone.
    clean = _trainer(tmp_path / "clean")
    for _ in range(2):
        clean.train_step(None)
    clean.batches.next_step()
    clean.scheduler.step()
    clean.train_step(None)
    assert _equal(_state(clean), _state(faulty)) == []
    assert clean.scheduler.get_last_lr() == faulty.scheduler.get_last_lr()


@needs_cuda("the GPU's fused AdamW needs a GPU")
def test_a_nan_step_on_the_gpu_changes_nothing_and_training_goes_on(tmp_path, monkeypatch):
    """The same skip through CUDA's fused AdamW kernel (its ``found_inf`` read on the device):
    nothing changes at the NaN step, and the next step updates every trained weight."""
    trainer = _trainer(tmp_path / "gpu", device="cuda")
    before = _nan_third_step(trainer, monkeypatch)
    assert all(v.is_cuda for v in before.values())
    record = trainer.train_step(None)
    assert "skipped" not in record and math.isfinite(record["loss"])
    changed = _equal(before, _state(trainer))
    trained = [n for n, p in trainer.model.named_parameters() if p.requires_grad]
    assert {f"w.{n}" for n in trained} <= set(changed)
