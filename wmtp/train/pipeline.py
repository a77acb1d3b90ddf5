"""The pipeline extension point: what a training pipeline may change without copying the loop.

A pipeline is described once in :mod:`wmtp.pipelines` (which models it uses and trains, the
weightings it accepts, its heads, what an example is); the trainer builds from that description
the model that trains, the frozen ones, the weighting and the data, then hands them to the
pipeline's implementation: a subclass of :class:`Pipeline` (named by the description's
``implementation``) whose hooks the trainer (``wmtp.train.loop.Trainer``) calls, in order:

1. ``setup(trainer)``: per-run state, after the trainer has its device, tokenizer, model, frozen
   models (``trainer.frozen[role]``), weighting (``trainer.weighting``) and distributed context.
2. ``batch_source(trainer, data)``: given the run's ``TrainData`` (``wmtp.data.dataset``), an
   object with ``next_step() -> list[batch]`` (this rank's micro-batches of one optimizer step),
   ``prefetch()`` (build the next step ahead, while the device still works: the trainer asks
   once a step's update is queued), ``steps_per_epoch()`` and ``state_dict()`` /
   ``load_state_dict()`` (saved in checkpoints; the state before a step built ahead); default
   :class:`~wmtp.train.data_source.StepBatches` over the epoch's correct solutions (a
   :class:`~wmtp.train.data_source.Lookahead`, which implements ``prefetch``).
3. ``micro_batch_weights(trainer, batch) -> MicroBatchWeights``: per micro-batch token weights
   (``batch`` is on the device and carries its heads' valid targets under ``valid_index_K``,
   found on the host: :func:`batch_on_device`):
   ``weights`` is ``None`` (uniform), a ``weights_BS`` tensor (target-token weights, head k uses
   ``w[t + k]``) or a per-head callable ``fn(k, ce_BT, targets_BT) -> w_BT``
   (``wmtp.losses.HeadWeightFn``); ``denominators_K`` is this micro-batch's share of each head's
   ``sum(w)`` (needed with a callable; computed from the labels and tensor weights otherwise), and
   ``figures`` are extra metrics (averaged over the step's micro-batches and logged). All
   micro-batches of a step are weighted before the first backward, so the loop can normalise
   every head by its *global* weight sum (all micro-batches, all ranks). A pipeline whose
   weights depend on the whole step (the verifiable pipeline whitens the step's advantages as
   one batch) overrides ``step_weights(trainer, batches) -> list[MicroBatchWeights]`` instead,
   which by default weights each micro-batch on its own.
4. ``step_figures(trainer, stats)``: extra metrics from the step's summed ``MTPStats``.

Figures (``wmtp.train.figures.Figure``) are numbers or one-element device tensors, left unread: the
trainer reads a step's figures once, after its update is queued, so a hook that reads one
(``.item()``, ``float(t)``, ``.tolist()``) makes the host wait for the GPU mid-step.

A pipeline whose loss is not the MTP loss (the critic) overrides ``forward_backward(trainer,
micro_batches) -> StepOutput`` instead: it runs the forward and backward of every micro-batch it
gets from ``trainer.accumulate(micro_batches)`` (the trainer owns gradient synchronisation across
ranks) and returns the step's loss, its named components (checked for NaN/Inf) and figures.
``eval_loss(trainer, batches)`` does the same for held-out batches.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch

from wmtp.losses.mtp import (
    HeadWeightFn,
    MTPStats,
    document_ids,
    loss_and_backward,
    valid_target_index,
    weight_sums,
)
from wmtp.parallel import all_reduce_sum
from wmtp.train.figures import Figure, mean_figures, read_figures

if TYPE_CHECKING:
    from wmtp.train.loop import Trainer


def to_device(value, device: torch.device):
    """``value`` on ``device`` if it is a tensor. To a GPU it goes from pinned memory without
    waiting: a copy from pageable memory holds the host until the GPU has finished the work
    queued before it (:meth:`Trainer.to_device` does this for a whole batch)."""
    if not isinstance(value, torch.Tensor) or value.device == device:
        return value
    if device.type == "cuda" and value.device.type == "cpu":
        return value.pin_memory().to(device, non_blocking=True)
    return value.to(device)


VALID_INDEX = "valid_index_K"
"""The key under which a batch on the device carries its heads' valid targets
(:func:`batch_on_device`)."""


def batch_on_device(trainer: Trainer, batch: dict) -> dict:
    """``batch`` on the run's device, carrying under :data:`VALID_INDEX` its heads' valid targets
    found on the host (:func:`host_target_index`): the loss, and a pipeline that selects targets
    (Rho-1), read them there instead of finding them on the device, which would wait for it."""
    return {**trainer.to_device(batch), VALID_INDEX: host_target_index(trainer, batch)}


def host_target_index(trainer: Trainer, batch: dict) -> list[torch.Tensor] | None:
    """The heads' valid targets of a micro-batch (:func:`wmtp.losses.mtp.valid_target_index`),
    computed from its labels on the host before the batch is copied, then copied with it. Their
    count sets the loss's shapes: found on a GPU, it would make the host wait mid-step for the
    device to finish the trunk, and the GPU then idle while the host queues the rest of the step.
    ``None`` for a batch already on the device (the loss computes them there)."""
    labels_BS = batch["labels"]
    if labels_BS.device.type != "cpu":
        return None
    doc_ids_BS = document_ids(trainer.seq_info(batch), labels_BS)
    index_K = valid_target_index(labels_BS, trainer.n_heads, doc_ids_BS)
    return [trainer.to_device(index_N) for index_N in index_K]


def phase(name: str):
    """A named range of the training step (``wmtp.<name>``) in torch.profiler traces, which
    ``wmtp.bench.trace`` reads to say what the host was doing while the GPU waited."""
    return torch.profiler.record_function(f"wmtp.{name}")


@dataclass
class MicroBatchWeights:
    """Token weights of one micro-batch (see the module docstring, step 3)."""

    weights: torch.Tensor | HeadWeightFn | None = None
    denominators_K: torch.Tensor | None = None
    figures: dict[str, Figure] = field(default_factory=dict)


@dataclass
class StepOutput:
    """What one optimizer step's forward/backward produced (summed over micro-batches and ranks)."""

    loss: Figure
    components: dict[str, Figure]
    """Named parts of the loss (``loss/head1`` ...): a non-finite one stops the run by name."""
    figures: dict[str, Figure] = field(default_factory=dict)
    tokens: Figure = 0
    """Target tokens trained on in this step (all ranks), for tokens/s."""


def mtp_figures(
    stats: MTPStats, depth_weights
) -> tuple[torch.Tensor, dict[str, Figure], dict[str, Figure]]:
    """``(loss, components, figures)`` of a step's summed MTP statistics, on the device."""
    losses_K, acc_K, n_K = stats.head_losses(), stats.head_accuracy(), stats.n_tokens_K
    components: dict[str, Figure] = {
        f"loss/head{k}": losses_K[k - 1] for k in range(1, len(n_K) + 1)
    }
    figures = dict(components)
    for k in range(1, len(n_K) + 1):
        figures[f"acc/head{k}"] = acc_K[k - 1]
        figures[f"tokens/head{k}"] = n_K[k - 1]
    return stats.total_loss(depth_weights), components, figures


class Pipeline:
    """Uniform-weight MTP fine-tuning of the trained model; every hook is meant to be overridden."""

    def __init__(self, recipe: Any) -> None:
        self.recipe = recipe

    def setup(self, trainer: Trainer) -> None:
        """Per-run state from what the trainer built; nothing for the plain pipelines."""

    # --- data ------------------------------------------------------------------------------------
    def batch_source(self, trainer: Trainer, data):
        """Correct solutions in the epoch's order (packed into rows when ``data.packing``)."""
        from wmtp.train.data_source import PackedRows, StepBatches

        t = self.recipe.training
        packed = None
        if data.packing:  # micro_batch_size counts rows of max_length tokens
            window = self.recipe.data.pack_window
            packed = PackedRows(
                data.train.max_length, data.example_length, data.packed_batch, window
            )
        return StepBatches(
            lambda epoch: data.epoch_order(epoch, correct_only=True),
            lambda rows: next(data.batches(rows, len(rows))),
            micro_batch_size=t.micro_batch_size,
            grad_accum_steps=t.grad_accum_steps,
            rank=trainer.ctx.rank,
            world_size=trainer.ctx.world_size,
            packed=packed,
            source=str(data.train.file.path),
        )

    # --- the loss --------------------------------------------------------------------------------
    def micro_batch_weights(self, trainer: Trainer, batch: dict) -> MicroBatchWeights:
        return MicroBatchWeights()

    def step_weights(self, trainer: Trainer, batches: list[dict]) -> list[MicroBatchWeights]:
        """The weights of a step's micro-batches (on the device), each weighted on its own."""
        return [self.micro_batch_weights(trainer, b) for b in batches]

    def step_figures(self, trainer: Trainer, stats: MTPStats) -> dict[str, Figure]:
        return {}

    def forward_backward(self, trainer: Trainer, micro_batches: list[dict]) -> StepOutput:
        """The weighted MTP loss of one step: weights first, then one backward per micro-batch."""
        n = trainer.n_heads
        cfg = trainer.loss_config
        with phase("to_device"):
            batches = [batch_on_device(trainer, b) for b in micro_batches]
        with phase("weights"):
            plans = self.step_weights(trainer, batches)
        denom_K = torch.zeros(n, device=trainer.ctx.device)
        for b, plan in zip(batches, plans, strict=True):
            if plan.denominators_K is not None:
                denom_K += trainer.to_device(plan.denominators_K)
            else:
                assert not callable(plan.weights), "a per-head weight callable needs denominators_K"
                denom_K += weight_sums(
                    b["labels"], n, plan.weights, document_ids(trainer.seq_info(b), b["labels"])
                )
        all_reduce_sum(denom_K)
        total: MTPStats | None = None
        for b, plan in zip(trainer.accumulate(batches), plans, strict=True):
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
                    valid_index_K=b[VALID_INDEX],
                )
            total = stats if total is None else total + stats
        assert total is not None
        total = MTPStats.from_tensor(all_reduce_sum(total.as_tensor()))
        loss, components, figures = mtp_figures(total, cfg.depth_weights)
        figures.update(mean_figures([p.figures for p in plans]))
        figures.update(self.step_figures(trainer, total))
        return StepOutput(loss, components, figures, tokens=total.n_tokens_K[0])

    @torch.no_grad()
    def eval_loss(self, trainer: Trainer, batches) -> dict[str, float]:
        """Uniform-weight MTP loss on held-out batches: ``eval/loss`` and ``eval/loss/head{k}``."""
        total: MTPStats | None = None
        for batch in batches:
            b = batch_on_device(trainer, batch)
            with trainer.compute_context():
                stats = loss_and_backward(
                    trainer.model,
                    b["input_ids"],
                    b["labels"],
                    n_heads=trainer.n_heads,
                    seq=trainer.seq_info(b),
                    config=trainer.loss_config,
                    backward=False,
                    valid_index_K=b[VALID_INDEX],
                )
            total = stats if total is None else total + stats
        if total is None:
            total = MTPStats.from_tensor(torch.zeros(5, trainer.n_heads, device=trainer.ctx.device))
        total = MTPStats.from_tensor(all_reduce_sum(total.as_tensor()))
        loss, components, _ = mtp_figures(total, trainer.loss_config.depth_weights)
        return read_figures({"eval/loss": loss, **{f"eval/{k}": v for k, v in components.items()}})
