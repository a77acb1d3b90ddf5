"""Critic losses: pairwise ranking of a correct over an incorrect solution, and lambda returns.

The pairwise losses compare the *mean response score* of the two solutions of one problem, on
pre-sigmoid scores (a sigmoid head's squashing would flatten the gradient of confident pairs):

- Bradley-Terry: ``-logsigmoid(v+ - v- - margin)``
- hinge: ``relu(margin - (v+ - v-))``

The optional auxiliary loss regresses each value on its lambda-return (Huber), with the sequence's
reward R = 1 (correct) or 0 (incorrect) as the terminal value, in the conventions of
``wmtp.weighting.td``. Everything is computed in float32.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F

from wmtp.weighting.td import gae, last_response_token, td_errors

PairwiseKind = Literal["bradley_terry", "hinge"]


def mean_response_score(scores_BS: torch.Tensor, response_mask_BS: torch.Tensor) -> torch.Tensor:
    """``[B]`` mean of the scores over each row's response tokens (every row needs one)."""
    assert scores_BS.shape == response_mask_BS.shape, (
        f"scores {tuple(scores_BS.shape)} vs mask {tuple(response_mask_BS.shape)}"
    )
    n_B = response_mask_BS.sum(dim=1)
    assert bool((n_B > 0).all()), f"every row needs a response token; counts {n_B.tolist()}"
    masked_BS = torch.where(
        response_mask_BS, scores_BS.float(), torch.zeros((), device=scores_BS.device)
    )
    return masked_BS.sum(dim=1) / n_B


def pairwise_loss(
    chosen_B: torch.Tensor,
    rejected_B: torch.Tensor,
    *,
    kind: PairwiseKind = "bradley_terry",
    margin: float = 0.0,
) -> torch.Tensor:
    """Mean over pairs of the ranking loss of ``chosen`` (correct) over ``rejected`` (incorrect)."""
    assert chosen_B.shape == rejected_B.shape, (
        f"{tuple(chosen_B.shape)} vs {tuple(rejected_B.shape)}"
    )
    gap_B = chosen_B.float() - rejected_B.float()
    if kind == "bradley_terry":
        return -F.logsigmoid(gap_B - margin).mean()
    if kind == "hinge":
        return F.relu(margin - gap_B).mean()
    raise AssertionError(f"unknown pairwise loss kind {kind!r}")


@dataclass(frozen=True)
class PairMetrics:
    """Detached figures of a batch of pairs: sums, so they add over batches and ranks."""

    n_pairs: float
    n_correct_order: float
    """Pairs whose correct solution scores strictly higher."""
    margin_sum: float
    """Sum of ``v+ - v-``."""

    @property
    def accuracy(self) -> float:
        return self.n_correct_order / self.n_pairs if self.n_pairs else 0.0

    @property
    def mean_margin(self) -> float:
        return self.margin_sum / self.n_pairs if self.n_pairs else 0.0

    def __add__(self, other: PairMetrics) -> PairMetrics:
        return PairMetrics(
            self.n_pairs + other.n_pairs,
            self.n_correct_order + other.n_correct_order,
            self.margin_sum + other.margin_sum,
        )


def pair_metrics(chosen_B: torch.Tensor, rejected_B: torch.Tensor) -> PairMetrics:
    """Pairwise accuracy and margin sums of one batch of pairs."""
    gap_B = (chosen_B.float() - rejected_B.float()).detach()
    return PairMetrics(float(gap_B.numel()), float((gap_B > 0).sum()), float(gap_B.sum()))


def lambda_return_targets(
    values_BS: torch.Tensor,
    rewards_B: torch.Tensor,
    response_mask_BS: torch.Tensor,
    *,
    gamma: float,
    lam: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(targets_BS, target_mask_BS)``: the lambda-return of every value that TD reads.

    The value before response token t (``V[t-1]``, from the last prompt token on) has the target
    ``V[t-1] + A[t]`` (GAE advantage, detached); the value after the last response token has the
    target R. With gamma = lam = 1 every target is R (Monte Carlo); with lam = 0 it is the
    one-step TD target. Targets are detached float32.
    """
    v_BS = values_BS.detach().float()
    adv_BS = gae(
        td_errors(v_BS, rewards_B, response_mask_BS, gamma=gamma),
        response_mask_BS,
        gamma=gamma,
        lam=lam,
    )
    # Position t-1 takes the advantage of token t: shift the advantages left by one.
    adv_prev_BS = torch.cat([adv_BS[:, 1:], torch.zeros_like(adv_BS[:, :1])], dim=1)
    before_BS = _before_response_token(response_mask_BS)
    is_last_BS = last_response_token(response_mask_BS)
    targets_BS = torch.where(before_BS, v_BS + adv_prev_BS, torch.zeros_like(v_BS))
    targets_BS = torch.where(is_last_BS, rewards_B.float()[:, None].expand_as(v_BS), targets_BS)
    return targets_BS, before_BS | is_last_BS


def _before_response_token(response_mask_BS: torch.Tensor) -> torch.Tensor:
    """Bool [B, S]: True at t-1 for every response token t (the values TD reads as V[t-1])."""
    return torch.cat([response_mask_BS[:, 1:], torch.zeros_like(response_mask_BS[:, :1])], dim=1)


def lambda_return_positions(response_mask_BS: torch.Tensor) -> int:
    """How many values have a lambda-return target: one per response token, plus each row's
    last response token (from the mask alone, so a step's total is known before any forward)."""
    where_BS = _before_response_token(response_mask_BS) | last_response_token(response_mask_BS)
    return int(where_BS.sum())


def lambda_return_loss(
    values_BS: torch.Tensor,
    rewards_B: torch.Tensor,
    response_mask_BS: torch.Tensor,
    *,
    gamma: float = 1.0,
    lam: float = 0.95,
    huber_delta: float = 1.0,
    positions: float | None = None,
) -> torch.Tensor:
    """Huber loss of the values against their lambda-returns, summed over the target positions
    and divided by ``positions`` (default: this batch's; a step passes its total over every
    micro-batch and rank, so accumulating micro-batches equals one larger batch).

    ``values_BS`` are in the reward's units (after a sigmoid head's sigmoid). A batch without a
    response token gives 0 (with a gradient path, so every rank runs the same backward).
    """
    targets_BS, where_BS = lambda_return_targets(
        values_BS, rewards_B, response_mask_BS, gamma=gamma, lam=lam
    )
    # Untargeted positions are replaced by their (zero) targets, so nothing there reaches the loss
    # or the gradient.
    v_BS = torch.where(where_BS, values_BS.float(), targets_BS)
    per_token_BS = F.huber_loss(v_BS, targets_BS, reduction="none", delta=huber_delta)
    denominator = where_BS.sum().clamp_min(1) if positions is None else max(positions, 1.0)
    return per_token_BS.sum() / denominator
