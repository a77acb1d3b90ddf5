"""The ``verifiable`` pipeline: MTP weighted token by token by a frozen critic's TD advantages.

Per micro-batch: the frozen critic (no grad, its own dtype and attention backend) gives values
``[B, S]``, and the weighting (``td`` or a control: ``random_matched``, ``shuffled``) turns them
into TD errors and GAE advantages; per step, it whitens the advantages of all the step's
micro-batches as one batch (batch or EMA statistics, all-reduced across ranks, the EMA updated
once a step) and turns them into AWR weights ``w[t]`` of the target tokens; the MTP loss gives
head k at position t the weight ``w[t + k]`` and normalises each head by the sum of its weights
over the whole step.
The reward of a sequence is 1 when its solution is correct, else 0.
"""

from __future__ import annotations

from typing import NamedTuple

import torch

from wmtp.errors import DataError
from wmtp.losses.mtp import IGNORE_INDEX, MTPStats
from wmtp.train.figures import Figure
from wmtp.train.pipeline import MicroBatchWeights, Pipeline, to_device


def rewards_of(batch: dict) -> torch.Tensor:
    """Float rewards, one per sequence (per example of a packed batch): 1.0 for a correct solution,
    0.0 for an incorrect one."""
    flags = batch.get("is_correct")
    docs = batch.get("example_of_document")
    n = int((docs >= 0).sum()) if docs is not None else batch["input_ids"].shape[0]
    if flags is None or len(flags) != n:
        raise DataError(
            f"the verifiable pipeline needs 'is_correct' for each of the {n} sequences of a batch; got {flags!r}"
        )
    rewards = torch.tensor([1.0 if bool(f) else 0.0 for f in flags])
    return to_device(rewards, batch["input_ids"].device)


def response_mask_of(batch: dict) -> torch.Tensor:
    """``[B, S]`` bool: the target tokens (labels are unshifted, prompt and padding -100)."""
    return batch["labels"] != IGNORE_INDEX


def documents_of(batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """A packed batch's examples as rows: ``(index_DL, valid_DL)``, where ``index_DL[d, i]`` is the
    flat ``[B * S]`` position of token i of example d (padding documents left out) and
    ``valid_DL`` marks the tokens that exist (rows are padded to the longest example)."""
    cu = batch["cu_seqlens"].long()
    starts, lengths = cu[:-1], cu[1:] - cu[:-1]
    real = batch["example_of_document"].to(cu.device) >= 0
    starts, lengths = starts[real], lengths[real]
    offsets_L = torch.arange(int(lengths.max()) if lengths.numel() else 0, device=cu.device)
    valid_DL = offsets_L[None, :] < lengths[:, None]
    index_DL = torch.where(valid_DL, starts[:, None] + offsets_L[None, :], 0)
    return index_DL, valid_DL


@torch.no_grad()
def critic_values(critic, batch: dict, seq=None) -> torch.Tensor:
    """``[B, S]`` float32 values of the frozen critic (value after each token)."""
    values_BS = critic(batch["input_ids"], seq=seq)
    assert values_BS.shape == batch["input_ids"].shape, (
        f"critic values {tuple(values_BS.shape)} vs tokens {tuple(batch['input_ids'].shape)}"
    )
    return values_BS.float()


def step_token_weights(
    critic, weighting, batches: list[dict], seqs: list
) -> tuple[list[torch.Tensor], dict[str, Figure]]:
    """``(weights_BS of each micro-batch, figures)`` of one step from the critic's values.

    Each micro-batch is scored as it is (in a packed one the critic attends within documents);
    a packed batch's examples are laid out one per row for the TD/GAE recursion, which runs per
    sequence exactly as on a padded batch. The weighting then turns the whole step's advantages
    into weights (whitened over the step, every rank's together) and they are put back in place.

    Every micro-batch's critic forward is queued before any is scored: scoring reads from the
    device (masks, counts), and each read would otherwise leave the GPU idle while the host
    queued the next forward.
    """
    values = [critic_values(critic, b, seq) for b, seq in zip(batches, seqs, strict=True)]
    scored = [_scored(weighting, b, v) for b, v in zip(batches, values, strict=True)]
    weights, figures = weighting.step_weights([(s.advantages, s.mask) for s in scored])
    placed = [
        w if s.layout is None else _in_place(w, s.layout, batch["labels"].shape)
        for w, s, batch in zip(weights, scored, batches, strict=True)
    ]
    value_sum = torch.stack([s.response_value_sum for s in scored]).sum()
    n_values = sum(s.n_response_values for s in scored)
    figures["value/mean"] = value_sum / n_values.clamp_min(1)  # 0 without a response token
    return placed, figures


class _Scored(NamedTuple):
    """One micro-batch's advantages, in the weighting's layout: a packed batch's examples one
    per row (``layout``: their flat places and valid tokens), a padded batch as it is."""

    advantages: torch.Tensor
    mask: torch.Tensor
    layout: tuple[torch.Tensor, torch.Tensor] | None
    response_value_sum: torch.Tensor
    """The sum of the critic's values of the response tokens (for the step's ``value/mean``)."""
    n_response_values: torch.Tensor
    """Their number."""


def _scored(weighting, batch: dict, values_BS: torch.Tensor) -> _Scored:
    """A micro-batch's critic values turned into GAE advantages (see :class:`_Scored`)."""
    mask_BS = response_mask_of(batch)
    value_sum = torch.where(mask_BS, values_BS, 0.0).sum()
    n_values = mask_BS.sum()
    layout = None
    if batch.get("cu_seqlens") is not None:
        index_DL, valid_DL = (t.to(values_BS.device) for t in documents_of(batch))
        layout = (index_DL, valid_DL)
        mask_BS = mask_BS.reshape(-1)[index_DL] & valid_DL
        values_BS = values_BS.reshape(-1)[index_DL]
    advantages = weighting.advantages(values_BS, rewards_of(batch), mask_BS)
    return _Scored(advantages, mask_BS, layout, value_sum, n_values)


def _in_place(weights_DL: torch.Tensor, layout, shape) -> torch.Tensor:
    """A packed batch's weights, laid out one example per row, back at their ``[B, S]`` places."""
    index_DL, valid_DL = layout
    flat = torch.zeros(shape.numel(), dtype=weights_DL.dtype, device=weights_DL.device)
    flat[index_DL[valid_DL]] = weights_DL[valid_DL]
    return flat.view(shape)


def loss_figures(stats: MTPStats) -> dict[str, Figure]:
    """Per-head weighted and unweighted losses and the weighted-to-unweighted loss ratio (0
    when no unweighted loss), on the device.

    ``stats`` are the step's summed ``MTPStats`` (all micro-batches and ranks).
    """
    weighted_K = stats.head_losses()
    unweighted_K = stats.ce_sum_K / stats.n_tokens_K.clamp_min(1)
    figures: dict[str, Figure] = {}
    for k in range(1, len(weighted_K) + 1):
        figures[f"loss/head{k}_weighted"] = weighted_K[k - 1]
        figures[f"loss/head{k}_unweighted"] = unweighted_K[k - 1]
    total_u = unweighted_K.mean()
    ratio = weighted_K.mean() / total_u.clamp_min(torch.finfo(total_u.dtype).tiny)
    figures["loss/weighted_to_unweighted"] = torch.where(total_u > 0, ratio, 0.0)
    return figures


# --- the pipeline -------------------------------------------------------------------------------


class WeightedBatches:
    """A batch source whose checkpoint state also holds the weighting's (EMA statistics, the
    controls' random generator), so a resumed run weights exactly as an uninterrupted one."""

    def __init__(self, inner, weighting) -> None:
        self.inner, self.weighting = inner, weighting

    def steps_per_epoch(self) -> float:
        return self.inner.steps_per_epoch()

    def next_step(self) -> list[dict]:
        return self.inner.next_step()

    def prefetch(self) -> None:
        self.inner.prefetch()

    def state_dict(self) -> dict:
        state = dict(self.weighting.state_dict())
        if "generator" in state:  # trainer.json is JSON: the generator state as a list of bytes
            state["generator"] = state["generator"].tolist()
        return {"data": self.inner.state_dict(), "weighting": state}

    def load_state_dict(self, state: dict) -> None:
        self.inner.load_state_dict(state["data"])
        weighting = dict(state["weighting"])
        if "generator" in weighting:
            weighting["generator"] = torch.tensor(weighting["generator"], dtype=torch.uint8)
        self.weighting.load_state_dict(weighting)


class VerifiablePipeline(Pipeline):
    """MTP on correct solutions, each target token weighted by the frozen critic's TD advantage.

    The data are the baseline's (correct solutions); only the weights differ, so ``td`` against
    ``baseline``, ``random_matched`` and ``shuffled`` isolates what the critic's token choice does.
    """

    def setup(self, trainer) -> None:
        self.critic = trainer.frozen["critic"]
        self.weighting = trainer.weighting
        # Each rank draws its own control weights, reproducibly.
        self.weighting.seed(
            self.recipe.experiment.seed * 1_000_003 + trainer.ctx.rank, device=trainer.ctx.device
        )

    def batch_source(self, trainer, data) -> WeightedBatches:
        return WeightedBatches(super().batch_source(trainer, data), self.weighting)

    def step_weights(self, trainer, batches: list[dict]) -> list[MicroBatchWeights]:
        seqs = [trainer.seq_info(b) for b in batches]
        weights, figures = step_token_weights(self.critic, self.weighting, batches, seqs)
        return [MicroBatchWeights(weights=w, figures=figures) for w in weights]

    def step_figures(self, trainer, stats: MTPStats) -> dict[str, Figure]:
        return loss_figures(stats)
