"""The pipeline extension point: what a training pipeline may change without copying the loop.

A pipeline is a class registered as ``@register("pipeline", "<name>")`` in
``wmtp/train/pipelines/``; the trainer (``wmtp.train.loop.Trainer``) calls its hooks, in order:

1. ``correct_only``: whether it trains on correct solutions only (class attribute, default True).
2. ``model_spec()`` / ``n_future_tokens()`` / ``build_model(trainer)``: the model that trains
   (default: ``model.policy``, built fresh from its sizes or loaded from ``path``/``checkpoint``).
3. ``setup(trainer)``: load frozen helpers (a critic, a reference model) after the trainer has
   its device, tokenizer and distributed context (``trainer.ctx``).
4. ``batch_source(trainer, data)``: given the run's ``TrainData`` (``wmtp.data.dataset``), an object with ``next_step() -> list[batch]`` (this rank's
   micro-batches of one optimizer step) and ``state_dict()`` / ``load_state_dict()`` (saved in
   checkpoints); default :class:`~wmtp.train.data_source.StepBatches` over the epoch's order.
5. ``micro_batch_weights(trainer, batch) -> MicroBatchWeights``: per micro-batch token weights:
   ``weights`` is ``None`` (uniform), a ``weights_BS`` tensor (target-token weights, head k uses
   ``w[t + k]``) or a per-head callable ``fn(k, ce_BT, targets_BT) -> w_BT``
   (``wmtp.losses.HeadWeightFn``); ``denominators_K`` is this micro-batch's share of each head's
   ``sum(w)`` (needed with a callable; computed from the labels and tensor weights otherwise), and
   ``figures`` are extra metrics (averaged over the step's micro-batches and logged). All
   micro-batches of a step are weighted before the first backward, so the loop can normalise
   every head by its *global* weight sum (all micro-batches, all ranks).
6. ``step_figures(trainer, stats)``: extra metrics from the step's summed ``MTPStats``.

A pipeline whose loss is not the MTP loss (the critic) overrides ``forward_backward(trainer,
micro_batches) -> StepOutput`` instead: it must run the backward of every micro-batch (passing
``sync_grads`` on the last one under FSDP, see ``trainer.sync_context``) and return the step's
loss, its named components (checked for NaN/Inf) and figures. ``eval_loss(trainer, batches)``
does the same for held-out batches.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

import torch

from wmtp.losses.mtp import (
    HeadWeightFn,
    MTPLossConfig,
    MTPStats,
    document_ids,
    loss_and_backward,
    weight_sums,
)
from wmtp.parallel import all_reduce_sum

if TYPE_CHECKING:
    from wmtp.train.loop import Trainer


MTP_STRATEGIES = {"per_head": "sequential", "chunked": "checkpointed", "joint": "plain"}
"""``training.mtp_loss`` -> ``wmtp.losses.mtp`` strategy."""


@dataclass
class MicroBatchWeights:
    """Token weights of one micro-batch (see the module docstring, step 5)."""

    weights: torch.Tensor | HeadWeightFn | None = None
    denominators_K: torch.Tensor | None = None
    figures: dict[str, float] = field(default_factory=dict)


@dataclass
class StepOutput:
    """What one optimizer step's forward/backward produced (summed over micro-batches and ranks)."""

    loss: float
    components: dict[str, float]
    """Named parts of the loss (``loss/head1`` ...): a non-finite one stops the run by name."""
    figures: dict[str, float] = field(default_factory=dict)
    tokens: int = 0
    """Target tokens trained on in this step (all ranks), for tokens/s."""


def mtp_figures(stats: MTPStats, depth_weights) -> tuple[float, dict[str, float], dict[str, float]]:
    """``(loss, components, figures)`` of a step's summed MTP statistics."""
    losses_K = stats.head_losses().tolist()
    acc_K = stats.head_accuracy().tolist()
    components = {f"loss/head{k}": v for k, v in enumerate(losses_K, start=1)}
    figures = dict(components)
    for k, (acc, n) in enumerate(zip(acc_K, stats.n_tokens_K.tolist(), strict=True), start=1):
        figures[f"acc/head{k}"] = acc
        figures[f"tokens/head{k}"] = n
    return stats.total_loss(depth_weights).item(), components, figures


class Pipeline:
    """Uniform-weight MTP fine-tuning of ``model.policy``; every hook is meant to be overridden."""

    name: ClassVar[str] = "pipeline"

    def __init__(self, recipe: Any) -> None:
        self.recipe = recipe

    correct_only: ClassVar[bool] = True

    # --- what trains ---------------------------------------------------------------------------
    def model_spec(self) -> Any:
        return self.recipe.model.policy

    def n_future_tokens(self) -> int | None:
        """Heads of the trained model; ``None`` keeps the spec's (or the checkpoint's)."""
        return None

    def build_model(self, trainer: Trainer) -> torch.nn.Module:
        from wmtp.train.model_build import build_policy

        return build_policy(
            self.model_spec(),
            trainer.tokenizer,
            trainer.ctx.device,
            n_future_tokens=self.n_future_tokens(),
        )

    def setup(self, trainer: Trainer) -> None:
        """Load frozen helper models; nothing for the plain pipelines."""

    def frozen_flops_per_token(self, seq_len: int) -> float:
        """Forward FLOPs per token of the frozen helpers ``setup`` loaded (counted in MFU)."""
        from wmtp.models.args import training_flops_per_token

        helpers = [getattr(self, name, None) for name in ("critic", "reference")]
        return sum(
            training_flops_per_token(
                m.args, seq_len, backward=False, unembedding=not hasattr(m, "backbone")
            )
            for m in helpers
            if m is not None and hasattr(m, "args")
        )

    # --- data ------------------------------------------------------------------------------------
    def batch_source(self, trainer: Trainer, data):
        from wmtp.train.data_source import PackedRows, StepBatches

        t = self.recipe.training
        packed = None
        if data.packing:  # micro_batch_size counts rows of max_length tokens
            packed = PackedRows(data.train.max_length, data.example_length, data.packed_batch)
        return StepBatches(
            lambda epoch: data.epoch_order(epoch, correct_only=self.correct_only),
            lambda rows: next(data.batches(rows, len(rows))),
            micro_batch_size=t.micro_batch_size,
            grad_accum_steps=t.grad_accum_steps,
            rank=trainer.ctx.rank,
            world_size=trainer.ctx.world_size,
            packed=packed,
        )

    # --- the loss --------------------------------------------------------------------------------
    def micro_batch_weights(self, trainer: Trainer, batch: dict) -> MicroBatchWeights:
        return MicroBatchWeights()

    def step_figures(self, trainer: Trainer, stats: MTPStats) -> dict[str, float]:
        return {}

    def loss_config(self) -> MTPLossConfig:
        t = self.recipe.training
        strategy = MTP_STRATEGIES[t.mtp_loss]
        depth = tuple(t.head_weights) if t.head_weights is not None else None
        return MTPLossConfig(strategy=strategy, depth_weights=depth)

    def forward_backward(self, trainer: Trainer, micro_batches: list[dict]) -> StepOutput:
        """The weighted MTP loss of one step: weights first, then one backward per micro-batch."""
        n = trainer.n_heads
        cfg = self.loss_config()
        if cfg.depth_weights is not None and len(cfg.depth_weights) != n:
            from wmtp.errors import RecipeError

            raise RecipeError(
                f"training.head_weights has {len(cfg.depth_weights)} entries but the model has {n} heads"
            )
        batches = [trainer.to_device(b) for b in micro_batches]
        plans = [self.micro_batch_weights(trainer, b) for b in batches]
        denom_K = torch.zeros(n, device=trainer.ctx.device)
        for b, plan in zip(batches, plans, strict=True):
            if plan.denominators_K is not None:
                denom_K += plan.denominators_K.to(denom_K.device)
            else:
                assert not callable(plan.weights), "a per-head weight callable needs denominators_K"
                denom_K += weight_sums(
                    b["labels"], n, plan.weights, document_ids(trainer.seq_info(b), b["labels"])
                )
        all_reduce_sum(denom_K)
        total: MTPStats | None = None
        for i, (b, plan) in enumerate(zip(batches, plans, strict=True)):
            with trainer.compute_context():
                stats = loss_and_backward(
                    trainer.model,
                    b["input_ids"],
                    b["labels"],
                    n_heads=n,
                    weights=plan.weights,
                    denominators_K=denom_K,
                    seq=trainer.seq_info(b),
                    config=cfg,
                    sync_grads=i == len(batches) - 1,
                )
            total = stats if total is None else total + stats
        assert total is not None
        total = MTPStats.from_tensor(all_reduce_sum(total.as_tensor()))
        loss, components, figures = mtp_figures(total, cfg.depth_weights)
        figures.update(_mean_figures([p.figures for p in plans]))
        figures.update(self.step_figures(trainer, total))
        return StepOutput(loss, components, figures, tokens=int(total.n_tokens_K[0].item()))

    @torch.no_grad()
    def eval_loss(self, trainer: Trainer, batches) -> dict[str, float]:
        """Uniform-weight MTP loss on held-out batches: ``eval/loss`` and ``eval/loss/head{k}``."""
        total: MTPStats | None = None
        for batch in batches:
            b = trainer.to_device(batch)
            with trainer.compute_context():
                stats = loss_and_backward(
                    trainer.model,
                    b["input_ids"],
                    b["labels"],
                    n_heads=trainer.n_heads,
                    seq=trainer.seq_info(b),
                    config=self.loss_config(),
                    backward=False,
                )
            total = stats if total is None else total + stats
        if total is None:
            total = MTPStats.from_tensor(torch.zeros(5, trainer.n_heads, device=trainer.ctx.device))
        total = MTPStats.from_tensor(all_reduce_sum(total.as_tensor()))
        loss, components, _ = mtp_figures(total, self.loss_config().depth_weights)
        return {"eval/loss": loss, **{f"eval/{k}": v for k, v in components.items()}}


def _mean_figures(per_micro: list[dict[str, float]]) -> dict[str, float]:
    keys = {k for f in per_micro for k in f}
    return {k: sum(f.get(k, 0.0) for f in per_micro) / len(per_micro) for k in sorted(keys)}
