"""The ``rho1`` pipeline: MTP on the tokens where the policy lags a tuned reference the most.

Per micro-batch, a frozen reference model scores every target token (no grad, its own dtype);
the policy's loss runs head by head, and for head k the excess
``CE_policy_k(t) - CE_reference(t + k)`` picks the top ``k_percent`` of the valid targets of the
micro-batch (``wmtp.weighting.rho1_mask``, weight 1, the rest 0). Each head's loss is normalised
by the number of tokens it keeps over the whole step (every micro-batch and rank).

Which reference head scores head k's targets: a reference with as many heads as the policy
scores with its head k (like against like); a one-head reference scores every target with its
next-token loss (Rho-1's original reference loss). Any other head count is an error.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from wmtp.errors import CheckpointError
from wmtp.losses.mtp import (
    IGNORE_INDEX,
    MTPStats,
    document_ids,
    linear_cross_entropy,
    valid_target_index,
)
from wmtp.train.figures import Figure
from wmtp.train.pipeline import VALID_INDEX, MicroBatchWeights, Pipeline
from wmtp.weighting.rho1 import n_selected
from wmtp.weighting.weightings import Rho1Selection


def check_reference_heads(policy_heads: int, reference_heads: int) -> None:
    """A reference scores like against like (same heads) or with its next-token head (one)."""
    if reference_heads not in (1, policy_heads):
        raise CheckpointError(
            f"model.reference has {reference_heads} heads and model.policy {policy_heads}: Rho-1 "
            "needs a reference with the policy's number of heads (head k scores head k's targets) "
            "or with one head (its next-token loss scores every target)"
        )


@torch.no_grad()
def reference_head_ce(
    reference,
    h_BSD: torch.Tensor,
    labels_BS: torch.Tensor,
    k: int,
    index_N: torch.Tensor,
    seq=None,
    chunk_size: int = 1024,
) -> torch.Tensor:
    """``[B, S-k]`` fp32 cross-entropy of the reference's head k on ``labels[:, k:]`` at the
    flat positions ``index_N`` (head k's valid targets, :func:`valid_target_index`), 0 elsewhere."""
    targets_BT = labels_BS[:, k:]
    hidden_BSD = reference.head_hidden(h_BSD, k, seq=seq)
    B, S, D = hidden_BSD.shape
    hidden_ND = (
        hidden_BSD[:, : S - k].reshape(B * (S - k), D).index_select(0, index_N)
    )  # [B*T, D] -> [N, D]
    coef_N = torch.zeros(index_N.numel(), device=h_BSD.device)
    _, ce_N, _ = linear_cross_entropy(
        hidden_ND, reference.output.weight, targets_BT.reshape(-1)[index_N], coef_N, chunk_size
    )
    ce_flat = torch.zeros(B * (S - k), dtype=torch.float32, device=h_BSD.device)
    return ce_flat.index_copy(0, index_N, ce_N).view(B, S - k)


@torch.no_grad()
def reference_ce_by_head(
    reference,
    input_ids_BS,
    labels_BS,
    n_heads: int,
    seq=None,
    chunk_size: int = 1024,
    index_K: list[torch.Tensor] | None = None,
) -> list[torch.Tensor]:
    """Per policy head k (1..n): the reference's ``[B, S-k]`` cross-entropy of head k's valid
    targets (0 at the others). ``index_K``: the policy heads' :func:`valid_target_index` (the
    batch carries them from the host); ``None`` finds them here, waiting for the device.

    A one-head reference scores target ``t + k`` with its next-token loss at position
    ``t + k - 1`` (the same token, from its own prefix, in the same document: among head 1's
    valid targets).
    """
    check_reference_heads(n_heads, reference.n_heads)
    if index_K is None:
        index_K = valid_target_index(labels_BS, n_heads, document_ids(seq, labels_BS))
    h_BSD = reference.trunk(input_ids_BS, seq=seq)
    if reference.n_heads == n_heads:
        return [
            reference_head_ce(reference, h_BSD, labels_BS, k, index_K[k - 1], seq, chunk_size)
            for k in range(1, n_heads + 1)
        ]
    next_BT = reference_head_ce(reference, h_BSD, labels_BS, 1, index_K[0], seq, chunk_size)
    return [next_BT[:, k - 1 :] for k in range(1, n_heads + 1)]  # target j scored at j - 1


@dataclass
class Rho1HeadWeights:
    """The ``HeadWeightFn`` of one micro-batch: excess loss -> top-k% selection, per head."""

    selection: Rho1Selection
    reference_ce_K: list[torch.Tensor]

    def __call__(self, k: int, ce_BT: torch.Tensor, targets_BT: torch.Tensor) -> torch.Tensor:
        valid_BT = targets_BT != IGNORE_INDEX
        ref_BT = self.reference_ce_K[k - 1]
        assert ref_BT.shape == ce_BT.shape, (
            f"head {k}: reference {tuple(ref_BT.shape)} vs policy {tuple(ce_BT.shape)}"
        )
        return self.selection(ce_BT.float() - ref_BT, valid_BT)


def kept_per_head(
    labels_BS: torch.Tensor,
    n_heads: int,
    k_percent: float,
    document_ids_BS=None,
    index_K: list[torch.Tensor] | None = None,
) -> torch.Tensor:
    """``[K]`` tokens Rho-1 keeps per head in this micro-batch: ``ceil(k_percent * n_valid)``, on
    the host.

    Known from the labels alone, so the step's loss denominators exist before any forward;
    ``n_valid`` counts head k's targets as the loss does (none across a packed row's documents):
    the length of its valid targets ``index_K[k - 1]`` (found here when ``None``).
    """
    if index_K is None:
        index_K = valid_target_index(labels_BS, n_heads, document_ids_BS)
    counts = [n_selected(k_percent, index_N.numel()) for index_N in index_K]
    return torch.tensor(counts, dtype=torch.float32)


# --- the pipeline -------------------------------------------------------------------------------


class Rho1Pipeline(Pipeline):
    """MTP on correct solutions, keeping per head the top k% tokens by excess loss."""

    def setup(self, trainer) -> None:
        self.reference = trainer.frozen["reference"]
        check_reference_heads(trainer.n_heads, self.reference.n_heads)
        self.selection = trainer.weighting

    def micro_batch_weights(self, trainer, batch: dict) -> MicroBatchWeights:
        """The reference's losses at the valid targets the batch carries from the host, and the
        counts kept from their lengths: nothing waits for the device."""
        n, seq, labels_BS = trainer.n_heads, trainer.seq_info(batch), batch["labels"]
        index_K = batch.get(VALID_INDEX)
        ref_K = reference_ce_by_head(
            self.reference, batch["input_ids"], labels_BS, n, seq=seq, index_K=index_K
        )
        k_percent = self.selection.k_percent
        return MicroBatchWeights(
            weights=Rho1HeadWeights(self.selection, ref_K),
            denominators_K=kept_per_head(
                labels_BS, n, k_percent, document_ids(seq, labels_BS), index_K=index_K
            ),
        )

    def step_figures(self, trainer, stats: MTPStats) -> dict[str, Figure]:
        """k% and, per head, the fraction of valid targets kept (weights are 0/1)."""
        kept_K = stats.weight_sum_K / stats.n_tokens_K.clamp_min(1)
        unweighted_K = stats.ce_sum_K / stats.n_tokens_K.clamp_min(1)
        figures: dict[str, Figure] = {"rho1/k_percent": self.selection.k_percent}
        for k in range(1, len(kept_K) + 1):
            figures[f"rho1/kept_fraction_head{k}"] = kept_K[k - 1]
        for k in range(1, len(kept_K) + 1):
            figures[f"loss/head{k}_all_tokens"] = unweighted_K[k - 1]
        return figures
