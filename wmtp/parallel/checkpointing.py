"""Activation checkpointing and ``torch.compile`` per transformer block, keeping parameter names.

Both wrap a block's ``forward`` on the instance instead of replacing the module, so state-dict
keys (and therefore checkpoints) are the same with and without them.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import torch.nn as nn
from torch.utils.checkpoint import checkpoint

from wmtp.errors import linked_exceptions


def selected_blocks(blocks: Sequence[nn.Module], every: bool | int) -> list[nn.Module]:
    """The blocks to checkpoint: all (``True``), every k-th (``k``: blocks k-1, 2k-1, ...), none."""
    if every is False or every == 0:
        return []
    k = 1 if every is True else int(every)
    return [b for i, b in enumerate(blocks) if (i + 1) % k == 0]


def apply_activation_checkpointing(blocks: Sequence[nn.Module], every: bool | int) -> int:
    """Recompute the chosen blocks' activations in backward; returns how many were wrapped."""
    chosen = selected_blocks(blocks, every)
    for block in chosen:
        inner = block.forward

        @functools.wraps(inner)
        def forward(*args, _inner=inner, **kwargs):
            return checkpoint(_inner, *args, use_reentrant=False, **kwargs)

        block.forward = forward
    return len(chosen)


RECOMPILE_LIMIT = 64
"""Compiled variants a block may have: one per (micro-batch rows, length bucket, grad mode)."""


def apply_compile(blocks: Sequence[nn.Module]) -> None:
    """``torch.compile`` each block in place (names unchanged), with static shapes: a new batch
    shape compiles anew (padded lengths come in few buckets: ``ParallelSpec.pad_multiple``).

    Dynamo's default of 8 variants per function is raised to :data:`RECOMPILE_LIMIT`, as past
    its limit Dynamo runs new shapes eagerly without saying so in the run's output."""
    import torch._dynamo.config

    limit = torch._dynamo.config.recompile_limit
    torch._dynamo.config.recompile_limit = max(limit, RECOMPILE_LIMIT)
    for block in blocks:
        block.compile(dynamic=False)


def compile_failure(exc: BaseException) -> str | None:
    """What went wrong when ``exc`` (or an exception it was raised from) is torch.compile's own
    failure (Dynamo's or Inductor's): its first line; ``None`` for any other exception. Blocks
    compile at their first call, so a failure surfaces from the first training step."""
    from torch._dynamo.exc import TorchDynamoException
    from torch._inductor.exc import InductorError

    for link in linked_exceptions(exc):
        if isinstance(link, (TorchDynamoException, InductorError)):
            lines = str(link).strip().splitlines()
            return f"{type(link).__name__}: {lines[0] if lines else ''}".strip()
    return None
