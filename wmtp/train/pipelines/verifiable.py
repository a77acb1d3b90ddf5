"""The ``verifiable`` pipeline: MTP weighted token by token by a frozen critic's TD advantages.

Per micro-batch: the frozen critic (no grad, its own dtype and attention backend) gives values
``[B, S]``; the weighting (``td`` or a control: ``random_matched``, ``shuffled``) turns them into
TD errors, GAE advantages, whitened advantages (batch or EMA statistics, all-reduced across
ranks) and AWR weights ``w[t]`` of the target tokens; the MTP loss gives head k at position t the
weight ``w[t + k]`` and normalises each head by the sum of its weights over the whole step.
The reward of a sequence is 1 when its solution is correct, else 0.
"""

from __future__ import annotations

import torch

from wmtp.errors import DataError
from wmtp.losses.mtp import IGNORE_INDEX, MTPStats


def rewards_of(batch: dict) -> torch.Tensor:
    """``[B]`` float rewards: 1.0 for a correct solution, 0.0 for an incorrect one."""
    flags = batch.get("is_correct")
    n = batch["input_ids"].shape[0]
    if flags is None or len(flags) != n:
        raise DataError(
            f"the verifiable pipeline needs 'is_correct' for each of the {n} sequences of a batch; got {flags!r}"
        )
    return torch.tensor([1.0 if bool(f) else 0.0 for f in flags], device=batch["input_ids"].device)


def response_mask_of(batch: dict) -> torch.Tensor:
    """``[B, S]`` bool: the target tokens (labels are unshifted, prompt and padding -100)."""
    if "cu_seqlens" in batch and batch["cu_seqlens"] is not None:
        raise DataError(
            "the verifiable pipeline needs one sequence per row (a padded batch): set data.packing = false"
        )
    return batch["labels"] != IGNORE_INDEX


@torch.no_grad()
def critic_values(critic, batch: dict, seq=None) -> torch.Tensor:
    """``[B, S]`` float32 values of the frozen critic (value after each token)."""
    values_BS = critic(batch["input_ids"], seq=seq)
    assert values_BS.shape == batch["input_ids"].shape, (
        f"critic values {tuple(values_BS.shape)} vs tokens {tuple(batch['input_ids'].shape)}"
    )
    return values_BS.float()


def token_weights(
    critic, weighting, batch: dict, seq=None
) -> tuple[torch.Tensor, dict[str, float]]:
    """``(weights_BS, figures)`` of one micro-batch from the critic's values."""
    mask_BS = response_mask_of(batch)
    values_BS = critic_values(critic, batch, seq)
    weights_BS, figures = weighting(values_BS, rewards_of(batch), mask_BS)
    value = values_BS[mask_BS]
    figures["value/mean"] = float(value.mean()) if value.numel() else 0.0
    return weights_BS, figures


def loss_figures(stats: MTPStats) -> dict[str, float]:
    """Per-head weighted and unweighted losses and the weighted-to-unweighted loss ratio.

    ``stats`` are the step's summed ``MTPStats`` (all micro-batches and ranks).
    """
    weighted_K = stats.head_losses()
    unweighted_K = stats.ce_sum_K / stats.n_tokens_K.clamp_min(1)
    figures = {}
    for k, (w, u) in enumerate(
        zip(weighted_K.tolist(), unweighted_K.tolist(), strict=True), start=1
    ):
        figures[f"loss/head{k}_weighted"] = w
        figures[f"loss/head{k}_unweighted"] = u
    total_u = float(unweighted_K.mean())
    figures["loss/weighted_to_unweighted"] = (
        float(weighted_K.mean()) / total_u if total_u > 0 else 0.0
    )
    return figures
