"""A training step never makes the host wait for the GPU (CUDA: torch's sync debug mode). The heads'
valid targets, whose count sets the loss's shapes, come from the batch on the host
(``wmtp.train.pipeline.host_target_index``); the figures stay on the device until the update is
queued, skipped there if they are not finite; then one copy of them is waited for through an
event (``wmtp.train.figures``), which is no synchronisation of the stream: the GPU goes on with the
update while the host logs and queues the next step."""

from __future__ import annotations

import pytest
import torch

from tests.eval.tests_eval_helpers import synchronising_calls
from tests.gpu import cuda_marks
from tests.train.train_helpers import TINY
from wmtp.parallel import init_distributed
from wmtp.recipe import load_recipe
from wmtp.train.loop import Trainer

pytestmark = cuda_marks("synchronisations need a GPU")


RHO1 = TINY.with_name("tiny_rho1.toml")


@pytest.mark.parametrize("packed", [False, True])
@pytest.mark.parametrize("recipe_path", [TINY, RHO1], ids=["base", "rho1"])
def test_a_training_step_never_waits_for_the_gpu(tmp_path, recipe_path, packed):
    """Rho-1 too: its reference scores and its selection work at the valid targets the batch
    carries from the host, and count what they keep on the device."""
    overrides = [
        "parallel.device='cuda'", "training.micro_batch_size=2", "training.grad_accum_steps=2",
        f"data.packing={str(packed).lower()}",
    ]  # fmt: skip
    if packed:  # the production recipes' attention: the tiny one's sdpa loops over documents
        overrides.append("model.policy.attention='auto'")
    if recipe_path == RHO1:
        overrides.append("model.reference.checkpoint=''")  # random weights: no reference run
        overrides.append(f"model.reference.attention='{'auto' if packed else 'sdpa'}'")
    recipe = load_recipe(recipe_path, overrides).recipe
    trainer = Trainer(recipe, "", tmp_path, init_distributed("cuda"), console=False).build()
    trainer.train_step(None)  # the first step compiles and allocates
    records: list[dict] = []
    syncs = synchronising_calls(lambda: records.append(trainer.train_step(None)))
    assert syncs == []
    assert records[0]["loss"] > 0 and "skipped" not in records[0]


PRODUCTION_IN_SMALL = (
    "model.policy.dtype='bfloat16'",
    "model.policy.lora={rank=4, alpha=8.0, dropout=0.05}",
    "parallel.compile=true",
    "parallel.activation_checkpointing=2",
    "training.micro_batch_size=1",
    "training.grad_accum_steps=4",
)
"""The production recipes' settings (``recipes/base.toml``) at the tiny model's size: bf16, LoRA
with dropout, compiled blocks, some of them recomputed, one sequence a micro-batch, accumulated."""


def test_a_step_with_the_production_settings_never_waits_for_the_gpu(tmp_path):
    """The settings users train with: LoRA adapters, compiled and partly checkpointed blocks,
    micro-batch 1, four micro-batches a step. Not one wait in a step's micro-batches or its
    update (at micro-batch 1 a wait would leave the GPU idle while the host queues the next)."""
    recipe = load_recipe(TINY, ["parallel.device='cuda'", *PRODUCTION_IN_SMALL]).recipe
    trainer = Trainer(recipe, "", tmp_path, init_distributed("cuda"), console=False).build()
    assert trainer.lora
    # the first steps compile each padded length (256 apart) anew, which may time kernels:
    # the seeded order's lengths of 512, 768 and 1024 rows all come in the first three
    for _ in range(3):
        trainer.train_step(None)
    graphs = torch._dynamo.utils.counters["stats"]["unique_graphs"]
    records: list[dict] = []
    syncs = synchronising_calls(lambda: records.append(trainer.train_step(None)))
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] == graphs, "compiled anew"
    assert syncs == []
    assert records[0]["loss"] > 0 and "skipped" not in records[0]
