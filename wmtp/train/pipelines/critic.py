"""The ``critic`` pipeline: a value model ranks correct over incorrect solutions of one problem.

Each micro-batch is a pair batch ``{"chosen": correct solutions, "rejected": incorrect ones}``
(same problems, same length bin, padded to one length). One forward over both halves gives
per-token pre-activation scores; the pairwise loss (Bradley-Terry or hinge, ``training.critic_loss``)
compares their mean response scores, and an optional lambda-return Huber term regresses every value
on its lambda-return with R = 1 (correct) / 0 (incorrect). Logged: pairwise accuracy and mean
margin on training and held-out pairs, value statistics of both halves.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from wmtp.errors import DataError
from wmtp.losses.critic import (
    lambda_return_loss,
    lambda_return_positions,
    mean_response_score,
    pairwise_loss,
)
from wmtp.losses.mtp import IGNORE_INDEX
from wmtp.train.pipeline import Pipeline, StepOutput, to_device

LAMBDA_RETURN_GAMMA = 1.0
"""Discount of the critic's lambda-return targets (undiscounted, as the TD weighting's default)."""


def _stack_pair(pair: dict) -> tuple[torch.Tensor, torch.Tensor, int]:
    """``(input_ids [2P, S], response_mask [2P, S], P)``: chosen rows first, then rejected."""
    chosen, rejected = pair["chosen"], pair["rejected"]
    assert chosen["input_ids"].shape == rejected["input_ids"].shape, (
        f"pair halves differ: {tuple(chosen['input_ids'].shape)} vs {tuple(rejected['input_ids'].shape)}"
    )
    input_ids = torch.cat([chosen["input_ids"], rejected["input_ids"]])  # 2 x [P, S] -> [2P, S]
    mask = torch.cat([chosen["labels"], rejected["labels"]]) != IGNORE_INDEX
    empty = (~mask.any(dim=1)).nonzero().flatten().tolist()
    if empty:
        ids = [*chosen.get("problem_id", []), *rejected.get("problem_id", [])]
        named = [ids[i] for i in empty] if len(ids) == mask.shape[0] else empty
        raise DataError(
            f"critic pairs without a response token (truncated away?): {named}; "
            "raise data.max_length or set data.truncate = false"
        )
    return input_ids, mask, chosen["input_ids"].shape[0]


@dataclass(frozen=True)
class StepTotals:
    """What a step's losses are divided by: its pairs and its lambda-return target positions,
    over every micro-batch and rank."""

    pairs: float
    lambda_positions: float


def step_totals(micro_batches: list[dict]) -> StepTotals:
    """The step's :class:`StepTotals`, from the labels alone (summed over ranks)."""
    from wmtp.parallel import all_reduce_sum

    pairs = sum(b["chosen"]["input_ids"].shape[0] for b in micro_batches)
    positions = sum(lambda_return_positions(_stack_pair(b)[1]) for b in micro_batches)
    totals = torch.tensor([float(pairs), float(positions)], dtype=torch.float64)
    return StepTotals(*all_reduce_sum(totals).tolist())  # alone, nothing crosses to the device


def pair_loss(
    model, pair: dict, loss_spec, *, step: StepTotals | None = None
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """``(loss, parts)`` of one pair batch; ``loss_spec`` is ``training.critic_loss``.

    Alone (``step`` None) the loss is this batch's: the mean pairwise loss plus the weighted mean
    lambda-return loss. Within a step, this batch's share of the step's loss: the pairwise loss
    weighted by its share of the step's pairs, the lambda-return errors summed and divided by the
    step's target positions (so accumulated micro-batches equal one batch of all their pairs).
    ``parts`` holds detached tensors: ``chosen``/``rejected`` mean response scores ``[P]``, the
    ``pairwise`` and ``lambda_return`` (mean) losses, ``lambda_positions`` and the response values
    of each half.
    """
    input_ids, mask, P = _stack_pair(pair)
    positions = lambda_return_positions(mask)  # before the move: no wait for the device
    device = next(model.parameters()).device
    input_ids, mask = to_device(input_ids, device), to_device(mask, device)
    scores = model.scores(input_ids)  # [2P, S] fp32, pre-activation
    mean_2P = mean_response_score(scores, mask)
    chosen_P, rejected_P = mean_2P[:P], mean_2P[P:]
    pairwise = pairwise_loss(chosen_P, rejected_P, kind=loss_spec.pairwise, margin=loss_spec.margin)
    values = model.head.activate(scores)
    lam_sum = torch.zeros((), device=device)
    if loss_spec.lambda_return_weight > 0:
        rewards = torch.cat([torch.ones(P, device=device), torch.zeros(P, device=device)])
        lam_sum = lambda_return_loss(
            values,
            rewards,
            mask,
            gamma=LAMBDA_RETURN_GAMMA,
            lam=loss_spec.lam,
            huber_delta=loss_spec.huber_delta,
            positions=1.0,  # the sum: divided below
        )
    if step is None:
        step = StepTotals(pairs=float(P), lambda_positions=float(positions))
    lam_share = lam_sum / max(step.lambda_positions, 1.0)
    loss = pairwise * (P / step.pairs) + loss_spec.lambda_return_weight * lam_share
    parts = {
        "chosen": chosen_P.detach(),
        "rejected": rejected_P.detach(),
        "pairwise": pairwise.detach(),
        "lambda_return": lam_sum.detach() / max(positions, 1),
        "lambda_positions": torch.tensor(float(positions)),
        "values_chosen": values[:P][mask[:P]].detach(),
        "values_rejected": values[P:][mask[P:]].detach(),
    }
    return loss, parts


_SUMS = (
    "pairs",
    "correct_order",
    "margin",
    "pairwise",
    "lambda_return",
    "lambda_positions",
    "chosen_n",
    "chosen_sum",
    "chosen_sq",
    "rejected_n",
    "rejected_sum",
    "rejected_sq",
)


def _sums(parts: dict[str, torch.Tensor]) -> torch.Tensor:
    """One micro-batch's figures as float64 sums on its device, in ``_SUMS`` order (they add
    over micro-batches and ranks); nothing is read from the device."""
    gap = (parts["chosen"] - parts["rejected"]).double()
    vc, vr = parts["values_chosen"].double(), parts["values_rejected"].double()
    positions = float(parts["lambda_positions"])  # a host tensor

    def count(n: float) -> torch.Tensor:
        return torch.full((), float(n), dtype=torch.float64, device=gap.device)

    row = [
        count(gap.numel()),
        (gap > 0).sum().double(),
        gap.sum(),
        parts["pairwise"].double() * gap.numel(),
        parts["lambda_return"].double() * positions,
        count(positions),
        count(vc.numel()),
        vc.sum(),
        (vc * vc).sum(),
        count(vr.numel()),
        vr.sum(),
        (vr * vr).sum(),
    ]
    return torch.stack(row)


def _std(n: float, total: float, total_sq: float) -> float:
    if n < 2:
        return 0.0
    return (max(total_sq - total * total / n, 0.0) / (n - 1)) ** 0.5


def pair_figures(
    parts: list[dict[str, torch.Tensor]], prefix: str, *, all_reduce: bool = True
) -> dict[str, float]:
    """Pair accuracy, mean margin, mean losses and value statistics of pair batches.

    Summed over every rank when a process group exists (``all_reduce``), so every rank logs the
    global figures. Accuracy counts pairs whose correct solution scores strictly higher.
    """
    sums = (
        torch.stack([_sums(p) for p in parts]).sum(0)
        if parts
        else torch.zeros(len(_SUMS), dtype=torch.float64)
    )  # one read below
    if all_reduce:
        from wmtp.parallel import all_reduce_sum

        all_reduce_sum(sums)
    s = dict(zip(_SUMS, sums.tolist(), strict=True))
    n = max(s["pairs"], 1.0)
    figures = {
        f"{prefix}/pair_accuracy": s["correct_order"] / n,
        f"{prefix}/pair_margin": s["margin"] / n,
        f"{prefix}/loss_pairwise": s["pairwise"] / n,
        f"{prefix}/loss_lambda_return": s["lambda_return"] / max(s["lambda_positions"], 1.0),
        f"{prefix}/pairs": s["pairs"],
    }
    for half in ("chosen", "rejected"):
        count = s[f"{half}_n"]
        figures[f"{prefix}/value_{half}_mean"] = s[f"{half}_sum"] / count if count else 0.0
        figures[f"{prefix}/value_{half}_std"] = _std(count, s[f"{half}_sum"], s[f"{half}_sq"])
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


# --- pair batches -------------------------------------------------------------------------------


def pair_batches(trainer, data):
    """Resumable pair micro-batches: each epoch's length-balanced (correct, incorrect) pairs of
    ``data`` (``TrainData.epoch_pairs``), ``micro * accum * world`` pairs per step, rank r its own."""
    from wmtp.train.data_source import StepBatches

    if len(data.epoch_pairs(0)) == 0:
        raise DataError(
            f"{data.train.file.path}: no (correct, incorrect) pair of one problem in one length "
            "bin among the "
            f"{len(data.train_rows)} training rows: the critic needs both kinds per problem "
            f"(data.pairs.length_bins = {list(data.pairs.length_bins)})"
        )
    t = trainer.recipe.training
    # epoch_pairs without a rank is the global draw; StepBatches takes this rank's share of it.
    return StepBatches(
        lambda epoch: data.epoch_pairs(epoch),
        lambda pairs: next(data.pair_batches(pairs, len(pairs))),
        micro_batch_size=t.micro_batch_size,
        grad_accum_steps=t.grad_accum_steps,
        rank=trainer.ctx.rank,
        world_size=trainer.ctx.world_size,
        source=str(data.train.file.path),
    )


def heldout_pair_batches(
    data, *, batch_size: int, rank: int = 0, world_size: int = 1
) -> list[dict]:
    """This rank's share of the held-out problems' pairs (the epoch-0 draw), as many batches on
    every rank (the tail that does not divide by the world size is left out), so no rank waits
    in a collective the others skip."""
    from wmtp.data.dataset import TrainData
    from wmtp.data.samplers import shard

    source = data.heldout or data.train
    view = TrainData(
        source, data.heldout_rows, None, data.heldout_rows[:0], data.seed, pairs=data.pairs
    )
    mine = shard(view.epoch_pairs(0), rank, world_size)  # the same count on every rank
    return list(view.pair_batches(mine, batch_size))


# --- the pipeline -------------------------------------------------------------------------------


class CriticPipeline(Pipeline):
    """Train ``model.critic`` (a value model) on correct/incorrect pairs of the same problem."""

    def setup(self, trainer) -> None:
        self._heldout: list[dict] | None = None

    def batch_source(self, trainer, data):
        return pair_batches(trainer, data)

    def forward_backward(self, trainer, micro_batches: list[dict]) -> StepOutput:
        """The step's loss (all micro-batches and ranks: pairwise mean over its pairs,
        lambda-return mean over its target positions); one backward per micro-batch."""
        from wmtp.parallel import all_reduce_sum

        spec = self.recipe.training.critic_loss
        totals = step_totals(micro_batches)
        parts, tokens = [], 0
        for pair in trainer.accumulate(micro_batches):
            with trainer.compute_context():
                loss, p = pair_loss(trainer.model, pair, spec, step=totals)
            loss.backward()  # this micro-batch's share; gradients are summed over ranks
            parts.append(p)
            tokens += int(p["values_chosen"].numel() + p["values_rejected"].numel())
        figures = pair_figures(parts, "train")
        total_tokens = all_reduce_sum(torch.full((), float(tokens), device=trainer.ctx.device))
        pairwise, lam_loss = figures["train/loss_pairwise"], figures["train/loss_lambda_return"]
        loss_value = pairwise + spec.lambda_return_weight * lam_loss
        components = {"loss/pairwise": pairwise, "loss/lambda_return": lam_loss}
        return StepOutput(loss_value, components, figures, tokens=total_tokens)

    @torch.no_grad()
    def eval_loss(self, trainer, batches) -> dict[str, float]:
        """Held-out pair accuracy, margin and losses (the SFT ``batches`` are not used)."""
        if self._heldout is None:
            self._heldout = heldout_pair_batches(
                trainer.data,
                batch_size=self.recipe.training.micro_batch_size,
                rank=trainer.ctx.rank,
                world_size=trainer.ctx.world_size,
            )
        spec = self.recipe.training.critic_loss
        with trainer.compute_context():
            parts = [pair_loss(trainer.model, pair, spec)[1] for pair in self._heldout]
        return pair_figures(parts, "heldout")
