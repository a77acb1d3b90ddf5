"""Fused AdamW, its step skipped on the device when the step is bad, and the learning-rate
schedule.

Schedule: linear warm-up from 0 to ``lr`` over ``warmup_steps``, then cosine or linear decay to
``min_lr_ratio * lr`` at ``max_steps``, or constant. Step ``s`` (0-based) uses ``lr * factor(s)``.
"""

from __future__ import annotations

import math

import torch


def lr_factor(
    step: int, *, kind: str, warmup_steps: int, max_steps: int, min_lr_ratio: float
) -> float:
    """The multiplier of the peak learning rate at optimizer step ``step`` (0-based)."""
    if warmup_steps > 0 and step < warmup_steps:
        return (step + 1) / warmup_steps
    if kind == "constant":
        return 1.0
    span = max(max_steps - warmup_steps, 1)
    progress = min(max(step - warmup_steps, 0) / span, 1.0)
    if kind == "cosine":
        decay = 0.5 * (1.0 + math.cos(math.pi * progress))
    else:
        assert kind == "linear", kind
        decay = 1.0 - progress
    return min_lr_ratio + (1.0 - min_lr_ratio) * decay


def build_optimizer(params, *, lr: float, betas, eps: float, weight_decay: float):
    """Fused AdamW over ``params`` (those with ``requires_grad``): one kernel per group of
    tensors on CUDA and on CPU, and the only form that can skip a step on the device
    (:func:`step_unless`)."""
    trainable = [p for p in params if p.requires_grad]
    assert trainable, "no trainable parameters"
    return torch.optim.AdamW(
        trainable, lr=lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay, fused=True
    )


def step_unless(
    optimizer: torch.optim.Optimizer,
    skip: torch.Tensor,
    divide_gradients_by: torch.Tensor | None = None,
) -> None:
    """Queue ``optimizer``'s step, to be skipped on the device where ``skip`` (a one-element
    tensor, 1 or 0) is 1: weights, moments and step count stay as they were. The host decides
    nothing and waits for nothing, so the update is queued before the step's figures are read.
    ``divide_gradients_by`` (a one-element tensor) scales the gradients as the step reads them:
    gradient clipping without a pass of its own. Fused AdamW reads both in its kernel
    (``found_inf`` and ``grad_scale``, the arguments ``torch.amp``'s gradient scaler skips steps
    and unscales gradients with)."""
    optimizer.found_inf = skip.float().reshape(())
    if divide_gradients_by is not None:
        optimizer.grad_scale = divide_gradients_by.float().reshape(())
    try:
        optimizer.step()
    finally:
        del optimizer.found_inf
        optimizer.__dict__.pop("grad_scale", None)


def build_scheduler(
    optimizer, *, kind: str, warmup_steps: int, max_steps: int, min_lr_ratio: float
):
    """A LambdaLR applying :func:`lr_factor`; its state dict saves the step."""
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer,
        lambda step: lr_factor(
            step,
            kind=kind,
            warmup_steps=warmup_steps,
            max_steps=max_steps,
            min_lr_ratio=min_lr_ratio,
        ),
    )
