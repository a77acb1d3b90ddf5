"""Parallelism applied from outside the model: process groups, FSDP2, activation checkpointing,
compilation and mixed precision. Model code holds none of it.

:func:`parallelize` is the one entry point the trainer calls for the model that trains: float8
linears if asked (a module swap, so first), activation checkpointing, then ``torch.compile``, then
FSDP2 (the order torchtitan uses), each per block;
:func:`shard_frozen` shards the frozen models a pipeline uses; :func:`set_gradient_sync` is how
the trainer switches gradient synchronisation on for the last micro-batch of a step only.
"""

from __future__ import annotations

import contextlib

import torch
import torch.nn as nn

from wmtp.parallel.checkpointing import apply_activation_checkpointing, apply_compile
from wmtp.parallel.dist import (
    DistContext,
    all_reduce_max,
    all_reduce_sum,
    barrier,
    init_distributed,
    model_init_seed,
    seed_everything,
    teardown,
)
from wmtp.parallel.float8 import apply_float8, check_float8
from wmtp.parallel.fsdp import apply_fsdp, set_gradient_sync, to_dtype


def parallelize(
    model: nn.Module,
    ctx: DistContext,
    *,
    sharding: str = "full_shard",
    activation_checkpointing: bool | int = False,
    compile: bool = False,
    dtype: str = "bfloat16",
    reduce_dtype: str = "float32",
    float8: str | None = None,
) -> nn.Module:
    """Prepare ``model`` (with ``blocks()``) for training on ``ctx``; parameters stay fp32.

    ``float8``: torchao's float8 recipe for the blocks' linears (``tensorwise``, ``rowwise``;
    ``None``: off), refused with a ComponentError where it cannot run."""
    blocks = list(model.blocks())
    if float8 is not None:
        check_float8(ctx.device)
        apply_float8(blocks, float8)
    apply_activation_checkpointing(blocks, activation_checkpointing)
    if compile:
        apply_compile(blocks)
    cast_parameters(model, ctx.device, to_dtype(dtype))
    if ctx.is_distributed:
        apply_fsdp(
            model,
            blocks,
            ctx,
            sharding=sharding,
            param_dtype=to_dtype(dtype),
            reduce_dtype=to_dtype(reduce_dtype),
        )
    return model


def shard_frozen(model: nn.Module, ctx: DistContext, *, sharding: str, dtype: str) -> nn.Module:
    """A frozen model sharded per block like the trained one when there is a process group,
    its parameters kept in their storage dtype (nothing trains: no fp32 masters)."""
    if not ctx.is_distributed:
        return model
    return apply_fsdp(
        model,
        list(model.blocks()),
        ctx,
        sharding=sharding,
        param_dtype=to_dtype(dtype),
        reduce_dtype=to_dtype(dtype),
    )


def cast_parameters(model: nn.Module, device: torch.device, compute_dtype: torch.dtype) -> None:
    """Trained parameters in fp32 (the optimizer's master weights); frozen ones (a LoRA base, a
    frozen norm) in the compute dtype: they are never updated, so fp32 copies would only double
    their memory and the bytes FSDP gathers. Buffers move to ``device`` unchanged in dtype."""
    model.to(device=device)
    for param in model.parameters():
        want = torch.float32 if param.requires_grad else compute_dtype
        if param.dtype != want:
            param.data = param.data.to(want)


def compute_context(ctx: DistContext, dtype: str) -> contextlib.AbstractContextManager:
    """Mixed precision without FSDP: autocast to ``dtype`` (FSDP2 casts parameters itself)."""
    if ctx.is_distributed or dtype == "float32":
        return contextlib.nullcontext()
    return torch.autocast(ctx.device.type, dtype=to_dtype(dtype))


__all__ = [
    "DistContext",
    "all_reduce_max",
    "all_reduce_sum",
    "apply_activation_checkpointing",
    "apply_compile",
    "apply_fsdp",
    "barrier",
    "cast_parameters",
    "compute_context",
    "init_distributed",
    "model_init_seed",
    "parallelize",
    "seed_everything",
    "set_gradient_sync",
    "shard_frozen",
    "teardown",
]
