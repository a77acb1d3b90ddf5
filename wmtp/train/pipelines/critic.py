"""The ``critic`` pipeline: a value model ranks correct over incorrect solutions of one problem.

Each micro-batch is a pair batch ``{"chosen": correct solutions, "rejected": incorrect ones}``
(same problems, same length bin, padded to one length). One forward over both halves gives
per-token pre-activation scores; the pairwise loss (Bradley-Terry or hinge, ``training.critic_loss``)
compares their mean response scores, and an optional lambda-return Huber term regresses every value
on its lambda-return with R = 1 (correct) / 0 (incorrect). Logged: pairwise accuracy and mean
margin on training and held-out pairs, value statistics of both halves.
"""

from __future__ import annotations

import torch

from wmtp.losses.critic import (
    PairMetrics,
    lambda_return_loss,
    mean_response_score,
    pair_metrics,
    pairwise_loss,
)
from wmtp.losses.mtp import IGNORE_INDEX

LAMBDA_RETURN_GAMMA = 1.0
"""Discount of the critic's lambda-return targets (undiscounted, as the TD weighting's default)."""


def _stack_pair(pair: dict) -> tuple[torch.Tensor, torch.Tensor, int]:
    """``(input_ids [2P, S], response_mask [2P, S], P)``: chosen rows first, then rejected."""
    chosen, rejected = pair["chosen"], pair["rejected"]
    assert chosen["input_ids"].shape == rejected["input_ids"].shape, (
        f"pair halves differ: {tuple(chosen['input_ids'].shape)} vs {tuple(rejected['input_ids'].shape)}"
    )
    input_ids = torch.cat([chosen["input_ids"], rejected["input_ids"]])  # 2 x [P, S] -> [2P, S]
    labels = torch.cat([chosen["labels"], rejected["labels"]])
    return input_ids, labels != IGNORE_INDEX, chosen["input_ids"].shape[0]


def pair_loss(model, pair: dict, loss_spec) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """``(loss, parts)`` of one pair batch; ``loss_spec`` is ``training.critic_loss``.

    ``parts`` holds detached tensors: ``chosen``/``rejected`` mean response scores ``[P]``,
    ``pairwise`` and ``lambda_return`` losses, and the response values of each half.
    """
    input_ids, mask, P = _stack_pair(pair)
    device = next(model.parameters()).device
    input_ids, mask = input_ids.to(device), mask.to(device)
    scores = model.scores(input_ids)  # [2P, S] fp32, pre-activation
    mean_2P = mean_response_score(scores, mask)
    chosen_P, rejected_P = mean_2P[:P], mean_2P[P:]
    pairwise = pairwise_loss(chosen_P, rejected_P, kind=loss_spec.pairwise, margin=loss_spec.margin)
    values = model.head.activate(scores)
    loss = pairwise
    lam_loss = torch.zeros((), device=device)
    if loss_spec.lambda_return_weight > 0:
        rewards = torch.cat([torch.ones(P, device=device), torch.zeros(P, device=device)])
        lam_loss = lambda_return_loss(
            values,
            rewards,
            mask,
            gamma=LAMBDA_RETURN_GAMMA,
            lam=loss_spec.lam,
            huber_delta=loss_spec.huber_delta,
        )
        loss = loss + loss_spec.lambda_return_weight * lam_loss
    parts = {
        "chosen": chosen_P.detach(),
        "rejected": rejected_P.detach(),
        "pairwise": pairwise.detach(),
        "lambda_return": lam_loss.detach(),
        "values_chosen": values[:P][mask[:P]].detach(),
        "values_rejected": values[P:][mask[P:]].detach(),
    }
    return loss, parts


def pair_figures(parts: list[dict[str, torch.Tensor]], prefix: str) -> dict[str, float]:
    """Accuracy, mean margin, losses and value statistics of pair batches (one rank's share)."""
    metrics = PairMetrics(0.0, 0.0, 0.0)
    for p in parts:
        metrics = metrics + pair_metrics(p["chosen"], p["rejected"])
    figures = {
        f"{prefix}/pair_accuracy": metrics.accuracy,
        f"{prefix}/pair_margin": metrics.mean_margin,
    }
    for name in ("pairwise", "lambda_return"):
        figures[f"{prefix}/loss_{name}"] = float(torch.stack([p[name] for p in parts]).mean())
    for half in ("chosen", "rejected"):
        v = torch.cat([p[f"values_{half}"] for p in parts])
        figures[f"{prefix}/value_{half}_mean"] = float(v.mean()) if v.numel() else 0.0
        figures[f"{prefix}/value_{half}_std"] = float(v.std()) if v.numel() > 1 else 0.0
    return figures


@torch.no_grad()
def evaluate_pairs(model, pairs, loss_spec) -> dict[str, float]:
    """Held-out figures (prefix ``heldout``) of the pair batches in ``pairs``, without gradients."""
    was_training = model.training
    model.eval()
    try:
        parts = [pair_loss(model, pair, loss_spec)[1] for pair in pairs]
    finally:
        model.train(was_training)
    return pair_figures(parts, "heldout") if parts else {}
