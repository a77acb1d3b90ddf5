"""A training step's loss waits for the GPU nowhere: the heads' valid targets, whose count sets the
loss's shapes, come from the batch on the host (``wmtp.train.pipeline.host_target_index``), so the
host queues the whole forward and backward ahead of the device (CUDA: torch's sync debug mode)."""

from __future__ import annotations

import pytest
import torch

from tests.eval.tests_eval_helpers import synchronising_calls
from tests.train.train_helpers import TINY
from wmtp.parallel import init_distributed
from wmtp.recipe import load_recipe
from wmtp.train.loop import Trainer

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="synchronisations need a GPU")


@pytest.mark.parametrize("packed", [False, True])
def test_the_loss_of_a_step_never_waits_for_the_gpu(tmp_path, packed):
    overrides = [
        "parallel.device='cuda'", "training.micro_batch_size=2", "training.grad_accum_steps=2",
        f"data.packing={str(packed).lower()}",
    ]  # fmt: skip
    recipe = load_recipe(TINY, overrides).recipe
    trainer = Trainer(recipe, "", tmp_path, init_distributed("cuda"), console=False).build()
    trainer.train_step(None)  # the first step compiles and allocates
    batches = trainer.batches.next_step()
    syncs = synchronising_calls(lambda: trainer.pipeline.forward_backward(trainer, batches))
    print("\n".join(syncs))  # the rest, for the record: the step's figures, read at its end
    assert [s for s in syncs if "/wmtp/losses/" in s] == []
    assert syncs, "the step's figures are read once the step is queued: one wait at least"
