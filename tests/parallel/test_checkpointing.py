"""Activation checkpointing and mixed precision on one process (no group): same math, same names."""

from __future__ import annotations

import torch

from tests.parallel.parallel_toy import ToyMTP
from wmtp.losses import loss_and_backward
from wmtp.parallel import compute_context, init_distributed, parallelize
from wmtp.parallel.checkpointing import selected_blocks


def test_every_kth_block_is_selected():
    blocks = list(range(7))
    assert selected_blocks(blocks, True) == blocks
    assert selected_blocks(blocks, False) == []
    assert selected_blocks(blocks, 3) == [2, 5]


def _grads(ac):
    torch.manual_seed(0)
    model = parallelize(ToyMTP(), init_distributed("cpu"), activation_checkpointing=ac)
    tokens = torch.randint(0, 61, (2, 9), generator=torch.Generator().manual_seed(5))
    loss_and_backward(model, tokens, tokens, n_heads=2)
    return {n: p.grad for n, p in model.named_parameters()}


def test_activation_checkpointing_keeps_names_and_gradients():
    plain, every, second = _grads(False), _grads(True), _grads(2)
    assert plain.keys() == every.keys() == second.keys()
    for name, g in plain.items():
        torch.testing.assert_close(every[name], g)
        torch.testing.assert_close(second[name], g)


def test_single_process_bf16_autocasts_and_keeps_fp32_params():
    ctx = init_distributed("cpu")
    assert not ctx.is_distributed
    model = parallelize(ToyMTP(), ctx, dtype="bfloat16")
    assert all(p.dtype == torch.float32 for p in model.parameters())
    with compute_context(ctx, "bfloat16"):
        logits = model.output(model.trunk(torch.zeros(1, 3, dtype=torch.long)))
    assert logits.dtype == torch.bfloat16


def test_only_torch_compiles_own_failures_are_reworded_and_a_looping_chain_ends():
    from torch._dynamo.exc import TorchDynamoException

    from wmtp.parallel.checkpointing import compile_failure

    first, second = RuntimeError("out of memory"), ValueError("bad value")
    first.__cause__, second.__context__ = second, first  # a chain that loops back
    assert compile_failure(first) is None
    behind = TorchDynamoException("backend failed\nmore lines")
    outer = RuntimeError("while training")
    outer.__cause__ = behind
    assert compile_failure(outer) == "TorchDynamoException: backend failed"
