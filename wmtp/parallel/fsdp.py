"""FSDP2 on an unmodified model: one ``fully_shard`` per transformer block, then the root.

Strategies (``parallel.sharding``): ``full_shard`` reshards each block after its forward (least
memory), ``shard_grad_op`` keeps blocks unsharded from forward to backward (no re-gather) and, with
gradient accumulation, from the first micro-batch of a step to the last (one all-gather per
step instead of two per micro-batch: more memory, far less traffic),
``no_shard`` replicates parameters on a world mesh of one shard group (plain data parallel through
FSDP2's replicate mesh). Mixed precision: parameters stay fp32 (the optimizer's master weights),
compute runs in the recipe's dtype, gradients are reduced in ``reduce_dtype`` and *summed* over
ranks (the MTP loss divides by the global weight sum itself, see ``wmtp.losses.mtp``).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn as nn
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard, register_fsdp_forward_method

from wmtp.parallel.dist import DistContext

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}

FORWARD_METHODS = ("trunk", "scores")
"""Model methods that run outside ``forward`` and must trigger FSDP's unshard hooks (the MTP
model's trunk, the value model's pre-activation scores)."""


def to_dtype(name: str) -> torch.dtype:
    return DTYPES[name]


def apply_fsdp(
    model: nn.Module,
    blocks: Sequence[nn.Module],
    ctx: DistContext,
    *,
    sharding: str = "full_shard",
    param_dtype: torch.dtype = torch.bfloat16,
    reduce_dtype: torch.dtype = torch.float32,
) -> nn.Module:
    """Shard ``blocks`` one by one, then ``model`` as the root; returns ``model`` (now FSDP)."""
    assert sharding in ("full_shard", "shard_grad_op", "no_shard"), sharding
    if sharding == "no_shard":
        mesh = init_device_mesh(
            ctx.device.type, (ctx.world_size, 1), mesh_dim_names=("dp", "shard")
        )
    else:
        mesh = init_device_mesh(ctx.device.type, (ctx.world_size,), mesh_dim_names=("dp",))
    mp = MixedPrecisionPolicy(param_dtype=param_dtype, reduce_dtype=reduce_dtype)
    reshard = sharding == "full_shard"
    for block in blocks:
        fully_shard(block, mesh=mesh, mp_policy=mp, reshard_after_forward=reshard)
    # The root's own parameters (embedding, final norm, unembedding) stay gathered after forward:
    # the heads use them outside any FSDP forward, and the backward needs them at once anyway.
    fully_shard(model, mesh=mesh, mp_policy=mp, reshard_after_forward=False)
    # The loss is already normalised by the global token count (all ranks and micro-batches),
    # so gradients are summed across ranks, not averaged.
    for module in [*blocks, model]:
        module.set_gradient_divide_factor(1.0)
        module.set_force_sum_reduction_for_comms(True)  # plain SUM (gloo has no PREMUL_SUM)
    for name in FORWARD_METHODS:
        if hasattr(model, name):
            register_fsdp_forward_method(model, name)
    model._wmtp_sharding = sharding  # read by set_gradient_sync
    return model


def set_gradient_sync(model: nn.Module, enabled: bool) -> None:
    """Turn the gradient reduce-scatter on (last micro-batch) or off (the others); no-op w/o FSDP.

    Under ``shard_grad_op`` the parameters also stay gathered after the backward of a micro-batch
    without sync, so the next micro-batch of the step needs no all-gather.
    """
    if not hasattr(model, "set_requires_gradient_sync"):
        return
    model.set_requires_gradient_sync(enabled)
    if getattr(model, "_wmtp_sharding", None) == "shard_grad_op":
        model.set_reshard_after_backward(enabled)
