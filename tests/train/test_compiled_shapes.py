"""Compiled blocks see static shapes: padded rows round up to a few lengths, and every length
compiles its own graph (dynamic shapes failed in Inductor on CUDA: ``ParallelSpec.pad_multiple``)."""

from __future__ import annotations

import pytest
import torch

from tests.gpu import cuda_marks
from tests.parallel.parallel_toy import ToyMTP
from tests.train.train_helpers import TINY
from wmtp.parallel import init_distributed, parallelize
from wmtp.recipe import load_recipe
from wmtp.recipe.specs.training import COMPILED_PAD_MULTIPLE
from wmtp.train.loop import Trainer


def test_every_new_length_compiles_a_static_graph():
    """Dynamo's default makes the second length's graph dynamic, serving the third without a
    compile; static blocks compile one graph per length."""
    from torch._dynamo.utils import counters

    torch._dynamo.reset()
    model = parallelize(ToyMTP(), init_distributed("cpu"), compile=True)
    before = counters["stats"]["unique_graphs"]
    with torch.no_grad():
        for length in (5, 7, 9):
            model.trunk(torch.zeros(1, length, dtype=torch.long))
    assert counters["stats"]["unique_graphs"] - before == 3
    assert torch._dynamo.config.recompile_limit >= 64


@pytest.mark.parametrize("compile", [False, True])
def test_a_run_pads_its_rows_as_its_blocks_need(tmp_path, compile, caplog):
    """Compiled blocks need rows padded to few lengths; the run's log says so, and that a new
    length compiles."""
    overrides = [f"parallel.compile={str(compile).lower()}", "training.micro_batch_size=3"]
    recipe = load_recipe(TINY, overrides).recipe
    with caplog.at_level("INFO", logger="wmtp"):
        trainer = Trainer(recipe, "", tmp_path, init_distributed("cpu"), console=False).build()
    said = any("the first step of each new length compiles" in r.message for r in caplog.records)
    assert said == compile
    multiple = COMPILED_PAD_MULTIPLE if compile else 1
    assert trainer.data.pad_multiple == multiple
    max_length = recipe.data.max_length
    for _ in range(4):
        (batch,) = trainer.batches.next_step()
        longest = int(batch["attention_mask"].sum(1).max())
        length = batch["input_ids"].shape[1]
        assert length == min(-(-longest // multiple) * multiple, max_length)


def test_packed_batches_with_other_document_counts_reuse_the_compiled_blocks(tmp_path):
    """A packed run's batches hold different numbers of documents: the blocks get the layout
    as their attention reads it (document ids, not ``cu_seqlens``, whose length is the count;
    ``eager`` here, as ``flex`` on a GPU), so compiled blocks run every batch on the graphs of
    the first."""
    from torch._dynamo.utils import counters

    overrides = [
        "parallel.compile=true", "data.packing=true", "training.micro_batch_size=1",
        "model.policy.attention='eager'", "data.max_length=2048", "model.policy.max_seq_len=2048",
    ]  # fmt: skip
    recipe = load_recipe(TINY, overrides).recipe
    trainer = Trainer(recipe, "", tmp_path, init_distributed("cpu"), console=False).build()
    torch._dynamo.reset()
    counts, graphs = set(), []
    with torch.no_grad():
        while len(counts) < 3 and len(graphs) < 24:
            (batch,) = trainer.batches.next_step()
            counts.add(len(batch["cu_seqlens"]))
            seq = trainer.seq_info(batch)
            assert seq.cu_seqlens is None and seq.document_ids is not None
            trainer.model.trunk(batch["input_ids"], seq=seq)
            graphs.append(counters["stats"]["unique_graphs"])
    assert len(counts) > 1, "the batches should differ in their count of documents"
    assert graphs[1:] == graphs[:1] * (len(graphs) - 1), graphs


def _packed_trainer(tmp_path, device: str, compile: bool) -> Trainer:
    overrides = [
        f"parallel.compile={str(compile).lower()}", f"parallel.device='{device}'",
        "data.packing=true", "training.micro_batch_size=2", "data.max_length=2048",
        "model.policy.max_seq_len=2048", "parallel.activation_checkpointing=true",
    ]  # fmt: skip
    if device == "cpu":  # sdpa reads cu_seqlens on the CPU; eager reads document ids, as flex
        overrides.append("model.policy.attention='eager'")
    recipe = load_recipe(TINY, overrides).recipe
    ctx = init_distributed(device)
    return Trainer(recipe, "", tmp_path / str(compile), ctx, console=False).build()


@pytest.mark.parametrize(
    "device",
    [
        "cpu",
        pytest.param(
            "cuda",
            marks=cuda_marks("flex trains on CUDA"),
        ),
    ],
)
def test_compiled_packed_steps_reusing_graphs_equal_uncompiled_steps(tmp_path, device):
    """Packed batches of different document counts run on the first batch's compiled graphs
    (above): each batch's loss and gradients must be its own, as the uncompiled model's, not
    the first batch's document mask replayed (on CUDA: flex, the GPU's packed attention)."""
    from wmtp.losses.mtp import loss_and_backward

    compiled, plain = (_packed_trainer(tmp_path, device, c) for c in (True, False))
    named = dict(plain.model.named_parameters())
    for name, p in compiled.model.named_parameters():
        torch.testing.assert_close(p, named[name.replace("_orig_mod.", "")], rtol=0, atol=0)
    counts = set()
    for _ in range(4):
        (batch,) = compiled.batches.next_step()
        counts.add(len(batch["cu_seqlens"]))
        sums = []
        for trainer in (compiled, plain):
            b = trainer.to_device(batch)
            trainer.model.zero_grad(set_to_none=True)
            stats = loss_and_backward(
                trainer.model, b["input_ids"], b["labels"], n_heads=trainer.n_heads,
                seq=trainer.seq_info(b), config=trainer.loss_config,
            )  # fmt: skip
            grads = {
                n.replace("_orig_mod.", ""): p.grad for n, p in trainer.model.named_parameters()
            }
            sums.append((stats.as_tensor(), grads))
        (stats_c, grads_c), (stats_p, grads_p) = sums
        torch.testing.assert_close(stats_c, stats_p, rtol=1e-4, atol=1e-4)
        for name, grad in grads_p.items():
            torch.testing.assert_close(grads_c[name], grad, rtol=1e-3, atol=1e-4, msg=name)
    assert len(counts) > 1, "the batches should differ in their count of documents"
