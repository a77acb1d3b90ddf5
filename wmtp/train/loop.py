"""The training loop: one ``Trainer`` for every pipeline.

``Trainer.build()`` assembles the run from its recipe through the registry (``wmtp.assembly``):
the tokenizer, the model the pipeline trains (``wmtp.pipelines`` says which, and its heads),
parallelism, the MTP loss strategy, the frozen models it uses, the weighting, the pipeline's
hooks, the data and the optimizer. ``Trainer.run()`` then runs per optimizer step: the pipeline's
``forward_backward`` (weights, loss, one backward per micro-batch, gradients synchronised across
ranks on the last one only: :meth:`Trainer.accumulate`), gradient clipping, the optimizer and
scheduler steps (a step whose loss or gradient norm is not finite skipped on the device), one read
of the step's figures (``wmtp.train.figures``) and, for a skipped step, the components that went
non-finite; then metrics, periodic held-out loss and checkpoints. Pipelines change the loop only
through the hooks of ``wmtp.train.pipeline``.
``wmtp bench step`` times this same step on synthetic batches (``build(batch_source=...)``).
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, NamedTuple

import torch

from wmtp import assembly
from wmtp.errors import CheckpointError, Interrupted, RecipeError, RunError
from wmtp.losses.mtp import MTPLossConfig
from wmtp.models.args import bf16_peak_tflops, mfu
from wmtp.parallel import (
    DistContext,
    compute_context,
    model_init_seed,
    parallelize,
    seed_everything,
    set_gradient_sync,
    shard_frozen,
)
from wmtp.train import checkpoint as ckpt_io
from wmtp.train import faults
from wmtp.train.figures import Figure, PendingFigures
from wmtp.train.guards import (
    StopSignals,
    nonfinite_flag,
    nonfinite_gradients,
    nonfinite_loss,
    nonfinite_parameters,
)
from wmtp.train.metrics import MetricsLogger, keep_metrics_until
from wmtp.train.optim import build_optimizer, build_scheduler, step_unless
from wmtp.train.pipeline import Pipeline, StepOutput, phase, to_device
from wmtp.train.run_dir import DATA_FILES, pin_inputs_against_pruning, resume_command

log = logging.getLogger(__name__)


class Gradients(NamedTuple):
    """A step's complete gradients, as device tensors (nothing waits for them)."""

    norm: torch.Tensor
    """The global gradient norm, over every rank's shard."""
    clip_divisor: torch.Tensor | None
    """What the optimizer divides the gradients by (in its own kernel) to clip them to
    ``training.grad_clip``: at least 1, and 1 when the norm is not finite (a NaN would spread
    over every gradient and hide where it began); None without clipping."""


def queue_clipping(model: torch.nn.Module, clip: float) -> Gradients:
    """``model``'s gradient norm, and the divisor clipping them to ``clip`` (0: measured, never
    clipped). The gradients are not touched: the fused AdamW step divides them as it reads them
    (``step_unless``), instead of a pass over every gradient to scale it first. The divisor is
    the inverse of ``torch.nn.utils.clip_grads_with_norm_``'s factor: ``(norm + 1e-6) / clip``,
    at least 1."""
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    total = torch.nn.utils.get_total_norm(grads)
    total = total.full_tensor() if hasattr(total, "full_tensor") else total
    if not clip:  # 0 (TOML has no null)
        return Gradients(total, None)
    finite = torch.where(torch.isfinite(total), total, torch.zeros_like(total))
    return Gradients(total, ((finite.float() + 1e-6) / clip).clamp_(min=1.0))


class Trainer:
    """Holds what a run needs; pipelines read ``ctx``, ``tokenizer``, ``model``, ``recipe``."""

    def __init__(
        self,
        recipe: Any,
        recipe_text: str,
        run_dir: Path,
        ctx: DistContext,
        *,
        stop_at_step: int | None = None,
        console: bool = True,
    ) -> None:
        self.recipe, self.recipe_text, self.run_dir, self.ctx = (
            recipe,
            recipe_text,
            Path(run_dir),
            ctx,
        )
        self.stop_at_step = stop_at_step
        self.console = console
        self.step = 0
        self.bad_steps = 0
        """Steps not applied for a non-finite loss or gradient (``training.max_bad_steps``)."""
        self.tokens_seen = 0
        """Input tokens of every step so far, all ranks (logged as ``tokens_seen``)."""
        self.saved_step: int | None = None
        self.last_checkpoint: Path | None = None
        self._gradients: Gradients | None = None
        """The step's gradient norm and clipping divisor once :meth:`accumulate` has queued them."""
        self.signals: StopSignals | None = None
        """SIGINT / SIGTERM while :meth:`run` runs."""
        self.stop_signal = 0
        """In a process group, the signal every rank agreed, with the last step's figures, had
        asked to stop (0: none)."""

    # --- building --------------------------------------------------------------------------------
    def build(self, batch_source: Callable[[Trainer], Any] | None = None) -> Trainer:
        """Assemble the run (see the module docstring). ``batch_source(trainer)`` replaces the
        recipe's data with another source of micro-batches (``wmtp bench step``'s synthetic
        ones); it is called once the trainer has its tokenizer and model."""
        r = self.recipe
        info = r.pipeline
        model_init_seed(r.experiment.seed)
        self.tokenizer = assembly.tokenizer(r)
        self.model_spec = getattr(r.model, info.trains)
        model = assembly.model(
            r,
            info.trains,
            tokenizer=self.tokenizer,
            device=self.ctx.device,
            trainable=True,
            n_future_tokens=info.heads,
        )
        self.n_heads = getattr(model, "n_heads", 1)  # a value model has one output per token
        self.model_args = model.args
        self.lora = hasattr(model, "lora_config")
        self.model = self._parallelize(model)
        self.loss_config = self._loss_config()
        self.frozen = {role: self._frozen(role) for role in info.frozen}
        self.weighting = assembly.weighting(r)
        self.pipeline: Pipeline = info.load()(r)
        self.pipeline.setup(self)
        self.data = None
        if batch_source is None:
            self.data = assembly.dataset(r, self.tokenizer, progress=self.console)
            self.data.pad_multiple = r.parallel.pad_multiple(self.ctx.device.type)
            if r.training.eval_every and not len(self.data.heldout_rows):
                log.warning(
                    "training.eval_every = %d, but no held-out row is left (see the data lines "
                    "above): nothing will be evaluated",
                    r.training.eval_every,
                )
            self.batches = self.pipeline.batch_source(self, self.data)
        else:
            self.batches = batch_source(self)
        self.max_steps = self._max_steps()
        self._optimizer()
        seed_everything(r.experiment.seed, self.ctx.rank)
        if self.ctx.device.type == "cuda":  # peak memory counts training, not building
            torch.cuda.reset_peak_memory_stats(self.ctx.device)
        return self

    def _parallelize(self, model: torch.nn.Module) -> torch.nn.Module:
        p = self.recipe.parallel
        if p.compiles(self.ctx.device.type):
            log.info(
                "parallel.compile: blocks compiled with static shapes (rows padded to a multiple "
                "of %d tokens): the first step of each new length compiles (tens of seconds)",
                p.pad_multiple(self.ctx.device.type),
            )
        return parallelize(
            model,
            self.ctx,
            sharding=p.sharding,
            activation_checkpointing=p.activation_checkpointing,
            compile=p.compiles(self.ctx.device.type),
            dtype=self.model_spec.dtype,
            reduce_dtype=p.reduce_dtype,
            float8=p.float8_scaling(),
        )

    def _loss_config(self) -> MTPLossConfig:
        """``training.mtp_loss`` as it runs here: ``per_head`` in one backward under FSDP."""
        t = self.recipe.training
        depth = tuple(t.head_weights) if t.head_weights is not None else None
        if depth is not None and len(depth) != self.n_heads:
            raise RecipeError(
                f"training.head_weights has {len(depth)} entries but the trained model has "
                f"{self.n_heads} heads"
            )
        one_backward = t.mtp_loss == "per_head" and self.ctx.is_distributed
        how = " (one backward: gradients are synchronised across processes)" if one_backward else ""
        if self.recipe.pipeline.trains == "policy":  # a critic's loss is no MTP loss
            log.info("mtp_loss: %s%s", t.mtp_loss, how)
        return MTPLossConfig(strategy=t.mtp_loss, one_backward=one_backward, depth_weights=depth)

    def _frozen(self, role: str) -> torch.nn.Module:
        """``model.<role>`` frozen: built by the registry, sharing the tokenizer, sharded like the
        trained model in a process group (its own dtype kept: nothing trains)."""
        model = assembly.model(self.recipe, role, tokenizer=self.tokenizer, device=self.ctx.device)
        if model.args.vocab_size != self.model_args.vocab_size:
            raise CheckpointError(
                f"model.{role} has a vocabulary of {model.args.vocab_size} tokens but "
                f"model.{self.recipe.pipeline.trains} has {self.model_args.vocab_size}: every "
                "model shares one tokenizer"
            )
        spec = getattr(self.recipe.model, role)
        return shard_frozen(
            model, self.ctx, sharding=self.recipe.parallel.sharding, dtype=spec.dtype
        )

    def _optimizer(self) -> None:
        t = self.recipe.training
        self.optimizer = build_optimizer(
            self.model.parameters(),
            lr=t.lr,
            betas=t.betas,
            eps=t.eps,
            weight_decay=t.weight_decay,
        )
        self.scheduler = build_scheduler(
            self.optimizer,
            kind=t.schedule.kind,
            warmup_steps=t.schedule.warmup_steps,
            max_steps=self.max_steps,
            min_lr_ratio=t.schedule.min_lr_ratio,
        )

    def _max_steps(self) -> int:
        t = self.recipe.training
        if t.max_steps is not None:
            return t.max_steps
        return max(1, math.ceil(t.epochs * self.batches.steps_per_epoch()))

    # --- helpers for pipelines -------------------------------------------------------------------
    def to_device(self, value):
        """``value`` (a tensor, or a batch: a dict of them) on the run's device. To a GPU tensors
        go from pinned memory without waiting: a copy from pageable memory would hold the host
        until the GPU has finished the work queued before it, leaving the GPU idle while the host
        then queues the step."""
        if isinstance(value, dict):
            return {k: to_device(v, self.ctx.device) for k, v in value.items()}
        return to_device(value, self.ctx.device)

    def seq_info(self, batch: dict):
        """``SeqInfo`` for packed batches, as the model's attention reads it
        (``ResolvedAttention.layout``); ``None`` for padded ones (right padding needs no mask)."""
        if batch.get("cu_seqlens") is None:
            return None
        from wmtp.models.attention import SeqInfo

        seq = SeqInfo(
            position_ids=batch.get("position_ids"),
            cu_seqlens=batch.get("cu_seqlens"),
            max_seqlen=batch.get("max_seqlen"),
            document_ids=batch.get("document_ids"),
        )
        return self.model.attention.layout(seq)

    def compute_context(self):
        return compute_context(self.ctx, self.model_spec.dtype)

    def accumulate(self, micro_batches: list) -> Iterator:
        """The step's micro-batches in order, gradient synchronisation across ranks switched on
        for the last one's backward only (the others accumulate locally). Once the pipeline has
        asked for the batch after the last (a ``for`` loop does), the gradients are complete:
        their norm and clipping are queued on the device then, before the pipeline reads its
        figures, so the one wait for the device per step finds them done."""
        last = len(micro_batches) - 1
        for i, batch in enumerate(micro_batches):
            set_gradient_sync(self.model, i == last)
            yield batch
        self._gradients = self._gradients_complete()

    # --- resume ----------------------------------------------------------------------------------
    def resume(self, checkpoint: Path) -> None:
        """Continue from ``checkpoint`` (verified by the runner): weights, optimizer, scheduler,
        data position, RNG, counters; then the recipe's optimizer settings are applied, so a
        change accepted with ``--force`` (learning rate, schedule, AdamW) takes effect."""
        state = ckpt_io.load_checkpoint(
            checkpoint, model=self.model, optimizer=self.optimizer, scheduler=self.scheduler
        )
        self.step = int(state["step"])
        self.bad_steps = int(state.get("bad_steps", 0))
        self.tokens_seen = int(state.get("tokens_seen", 0))
        self.saved_step, self.last_checkpoint = self.step, Path(checkpoint)
        self.batches.load_state_dict(state["data"])
        self._apply_optimizer_settings()
        if self.ctx.is_main:  # metrics after the checkpoint will be written again
            keep_metrics_until(self.run_dir, self.step)
            ckpt_io.remove_half_written(self.run_dir)
        t = self.recipe.training
        log.info(
            "resumed from %s at step %d: lr %.3g now (peak %.3g, %s, warm-up %d), betas %s, "
            "weight decay %g",
            checkpoint,
            self.step,
            self.scheduler.get_last_lr()[0],
            t.lr,
            t.schedule.kind,
            t.schedule.warmup_steps,
            tuple(t.betas),
            t.weight_decay,
        )

    def _apply_optimizer_settings(self) -> None:
        """The recipe's AdamW settings and peak learning rate over the restored ones (the
        optimizer's and scheduler's states carry the values of the run's first recipe)."""
        t = self.recipe.training
        for group in self.optimizer.param_groups:
            group.update(betas=tuple(t.betas), eps=t.eps, weight_decay=t.weight_decay)
            group["initial_lr"] = t.lr
        self.scheduler.base_lrs = [t.lr for _ in self.optimizer.param_groups]
        factors = [fn(self.scheduler.last_epoch) for fn in self.scheduler.lr_lambdas]
        for group, factor in zip(self.optimizer.param_groups, factors, strict=True):
            group["lr"] = t.lr * factor
        self.scheduler._last_lr = [group["lr"] for group in self.optimizer.param_groups]

    # --- the loop --------------------------------------------------------------------------------
    def run(self, signals: StopSignals | None = None) -> dict[str, Any]:
        """Train to ``max_steps`` (or ``stop_at_step``); with ``signals``, a SIGINT / SIGTERM
        stops it after the current step with a checkpoint (:class:`wmtp.errors.Interrupted`)."""
        self.signals = signals
        if signals is not None:
            signals.kept = self.kept_if_stopped_now
        logger = MetricsLogger(
            self.run_dir,
            total_steps=self.max_steps,
            start_step=self.step,
            enabled=self.ctx.is_main,
            console=self.console,
        )
        flops = self.flops_per_token()
        last: dict[str, Any] = {}
        try:
            while self.step < self.max_steps:
                if self.stop_at_step is not None and self.step >= self.stop_at_step:
                    break
                last = self.train_step(flops)
                self.step += 1
                faults.after_step(self)  # testing hooks (WMTP_FAULT, ...); no-op unset
                self._after_step(logger, last)
                if signals is not None and (signum := self._stop_requested(signals)):
                    self._stop_or_finish(signum)
            if self.step == self.max_steps:
                self._finish(logger)
        finally:
            logger.close()
        return {"step": self.step, **last}

    def _stop_requested(self, signals: StopSignals) -> int:
        """The signal that asked to stop (0: none): alone, as it stands; in a process group, as
        every rank agreed with the last step's figures (agreeing now would wait for the update)."""
        return self.stop_signal if self.ctx.is_distributed else signals.requested()

    def _after_step(self, logger: MetricsLogger, record: dict[str, Any]) -> None:
        """Log the step; evaluate and checkpoint when they are due. A skipped step is logged
        whatever ``log_every`` says: it is a record of what happened, not a sample of a curve."""
        t = self.recipe.training
        due = self.step % t.log_every == 0 or self.step in (1, self.max_steps)
        if due or "skipped" in record:
            logger.log(self.step, record)
        else:
            logger.advance(self.step)
        if t.eval_every and self.step % t.eval_every == 0:
            logger.log(self.step, self.evaluate())
        if t.checkpoint_every and self.step % t.checkpoint_every == 0:
            self.save()

    def _finish(self, logger: MetricsLogger) -> None:
        """The last step's held-out loss and checkpoint, unless they were just made."""
        t = self.recipe.training
        if not (t.eval_every and self.step % t.eval_every == 0):
            logger.log(self.step, self.evaluate())
        if self.saved_step != self.step:
            self.save()
        self.finished()

    def finished(self) -> None:
        """The run has trained all its steps: rank 0 prunes what ``keep_last`` kept for a
        reader, and lets go of its frozen models' checkpoints (``pin_inputs_against_pruning``)."""
        if self.ctx.is_main:
            ckpt_io.prune_at_end(self.run_dir, self.recipe.training.keep_last)
            pin_inputs_against_pruning(self.run_dir, finished=True)

    def _stop_or_finish(self, signum: int) -> None:
        """A stop asked before the last step stops (:meth:`stop_for_signal`); one asked during
        the last step lets the run finish, its last held-out loss included, which a resume would
        not make up (it has nothing left to train). A second signal still stops at once."""
        import signal

        if self.step < self.max_steps:
            self.stop_for_signal(signum)
        log.warning(
            "%s during the last step: finishing the run (its held-out loss and checkpoint); a "
            "second one stops now",
            signal.Signals(signum).name,
        )

    def stop_for_signal(self, signum: int) -> None:
        """A checkpoint of the finished steps (unless one exists), then ``Interrupted``."""
        import signal

        name = signal.Signals(signum).name
        if self.step == 0:
            raise Interrupted(f"{name} before the first step: nothing to checkpoint", signum)
        checkpoint = self.save() if self.saved_step != self.step else self.last_checkpoint
        raise Interrupted(
            f"{name} after step {self.step}: checkpoint {checkpoint} holds every finished step; "
            f"continue with: {resume_command(self.run_dir, self.ctx.world_size)}",
            signum,
        )

    def kept_if_stopped_now(self) -> str:
        """What a stop at once (a second signal) keeps, in words: the newest checkpoint of the
        finished steps, as the disk has it (one written a moment ago included), and how to
        continue from it."""
        from wmtp.models.locate import step_dirs, step_number

        saved = [p for p in step_dirs(self.run_dir) if step_number(p) <= self.step]
        if not saved:
            return "without a checkpoint"
        step = step_number(saved[-1])
        held = "every finished step" if step == self.step else f"the steps up to step {step}"
        return (
            f"checkpoint {saved[-1]} holds {held}; continue with: "
            f"{resume_command(self.run_dir, self.ctx.world_size)}"
        )

    def train_step(self, flops_per_token: float | None) -> dict[str, Any]:
        """One optimizer step on the batch source's next micro-batches; its record of figures.

        The host never waits for the device before the update is queued (:meth:`_queue_update`);
        it then builds the next step's batches (:meth:`_build_ahead`) and waits for this step's
        figures alone while the GPU finishes the step. A step whose loss or gradient norm is not
        finite was not applied: it is reported, or stops the run (:meth:`_bad_step`)."""
        start = time.perf_counter()
        self.model.train()
        with phase("next_batches"):
            micro_batches = self.batches.next_step()
        data_s = time.perf_counter() - start
        self._gradients = None
        with phase("forward_backward"):
            out = self.pipeline.forward_backward(self, micro_batches)
        pending = self._queue_update(out, micro_batches)
        data_s += self._build_ahead()
        with phase("figures"):
            read = pending.wait()
        step = read["step"]
        self.stop_signal = int(step["stop"])
        if step["bad"]:
            return self._bad_step(step["loss"], read["parts"], step["grad_norm"])
        self.optimizer.zero_grad(set_to_none=True)
        elapsed = time.perf_counter() - start
        record = {"loss": step["loss"], **read["logged"], "lr": step["lr"]}
        record["grad_norm"] = step["grad_norm"]
        tokens, row_tokens = int(step["tokens"]), int(step["row_tokens"])
        self.tokens_seen += tokens
        record["step_time_s"], record["data_time_s"], record["tokens"] = elapsed, data_s, tokens
        record["tokens_seen"], record["row_tokens"] = self.tokens_seen, row_tokens
        record["tokens_per_s"] = tokens / elapsed if elapsed > 0 else 0.0
        record["target_tokens_per_s"] = step["target_tokens"] / elapsed if elapsed > 0 else 0.0
        record.update(self._utilisation(tokens, elapsed, flops_per_token))
        return record

    def _queue_update(self, out: StepOutput, micro_batches: list[dict]) -> PendingFigures:
        """The step's figures on their way to the host, then the optimizer and scheduler steps
        queued behind them; the update is skipped on the device if the loss, a part of it or the
        gradient norm is not finite. Nothing here waits for the device."""
        gradients = self._step_gradients()
        grad_norm = gradients.norm
        bad = nonfinite_flag([out.loss, *out.components.values(), grad_norm], self.ctx.device)
        tokens, row_tokens = self._step_tokens(micro_batches)
        stop = self.signals.agreed() if self.signals is not None and self.ctx.is_distributed else 0
        own = {"loss": out.loss, "grad_norm": grad_norm, "bad": bad, "stop": stop}
        own.update(tokens=tokens, row_tokens=row_tokens, target_tokens=out.tokens)
        own["lr"] = self.scheduler.get_last_lr()[0]
        pending = PendingFigures({"step": own, "parts": out.components, "logged": out.figures})
        with phase("optimizer"):
            step_unless(self.optimizer, bad, divide_gradients_by=gradients.clip_divisor)
            self.scheduler.step()
        return pending

    def _build_ahead(self) -> float:
        """Build the next step's micro-batches now, while the device finishes this step, where
        the run trains another step (a checkpoint before it still resumes at it:
        :class:`wmtp.train.data_source.Lookahead`); the host's seconds spent."""
        if self.step + 1 >= min(self.max_steps, self.stop_at_step or self.max_steps):
            return 0.0
        start = time.perf_counter()
        with phase("next_batches"):
            self.batches.prefetch()
        return time.perf_counter() - start

    def _bad_step(
        self, loss: float, components: dict[str, float], grad_norm: float
    ) -> dict[str, Any]:
        """A step with a non-finite loss or gradient norm, which the device did not apply.
        Skipped (the schedule and the data move on) while ``training.max_bad_steps`` allows,
        else the run stops, naming the step, the parts and the last checkpoint whose weights
        trained on finitely: before the weights this step started from when the loss itself was
        not finite (they may be what went wrong)."""
        parts, what, weights_suspect = nonfinite_loss(loss, components), f"the loss is {loss}", True
        if not parts:  # the gradients went wrong, not the weights
            parts = nonfinite_gradients(self.model) or ["the gradient norm"]
            what, weights_suspect = f"the gradient norm is {grad_norm}", False
        self.optimizer.zero_grad(set_to_none=True)
        step, where = self.step + 1, ", ".join(parts)
        allowed = self.recipe.training.max_bad_steps
        if self.bad_steps < allowed:
            self.bad_steps += 1
            if self.ctx.is_main:  # every rank skips it together: said once
                log.warning(
                    "step %d skipped: %s (in %s); %d of training.max_bad_steps = %d used",
                    step, what, where, self.bad_steps, allowed,
                )  # fmt: skip
            return {"skipped": 1.0, "bad_steps": float(self.bad_steps)}
        skipped = f" after {self.bad_steps} skipped bad steps" if self.bad_steps else ""
        raise RunError(
            f"step {step}: {what} (in {where}); the step was not applied and the run "
            f"stopped{skipped}. {self._last_good(weights_suspect, self.bad_steps)}"
        )

    def _last_good(self, weights_suspect: bool = True, skipped_so_far: int | None = None) -> str:
        """The newest checkpoint to go back to: before the weights this step started from when
        they gave a non-finite loss (they may be what went wrong), else the newest. For a bad
        step (``skipped_so_far``: the steps ``training.max_bad_steps`` skipped), where that
        checkpoint is the newest, which ``--resume`` continues from, the command that skips it."""
        from wmtp.models.locate import step_dirs, step_number

        limit = self.step if weights_suspect else self.step + 1
        every = step_dirs(self.run_dir)
        good = [p for p in every if step_number(p) < limit]
        started = ""
        if weights_suspect and self.saved_step == self.step:
            started = f" (step-{self.step} holds the weights this step started from)"
        if not good:
            return f"No checkpoint was written before these weights{started}."
        said = f"The last good checkpoint is {good[-1]}{started}."
        if skipped_so_far is None or good[-1] != every[-1]:
            return said
        skip = f"--set training.max_bad_steps={skipped_so_far + 1} --force"
        resume = resume_command(self.run_dir, self.ctx.world_size, skip)
        return f"{said} To skip such a step and go on from it: {resume}"

    def _step_tokens(self, micro_batches: list[dict]) -> tuple[Figure, Figure]:
        """Tokens the model read this step on all ranks (padding left out: the work done), and
        the positions of their rows (padding included: what the model computed over). In a
        process group, device tensors summed over ranks, read with the step's figures."""
        from wmtp.parallel import all_reduce_sum

        local = [
            sum(input_tokens(b) for b in micro_batches),
            sum(row_positions(b) for b in micro_batches),
        ]
        if not self.ctx.is_distributed:
            return local[0], local[1]
        summed = all_reduce_sum(
            to_device(torch.tensor(local, dtype=torch.float64), self.ctx.device)
        )
        return summed[0], summed[1]

    def _step_gradients(self) -> Gradients:
        """The global gradient norm and clipping divisor: queued by :meth:`accumulate`, or now if
        the pipeline left the batches unfinished."""
        gradients, self._gradients = self._gradients, None
        return gradients if gradients is not None else self._gradients_complete()

    def _gradients_complete(self) -> Gradients:
        """The step's gradients are all there: the testing hook between backward and update,
        then their norm and clipping divisor queued (:func:`queue_clipping`)."""
        faults.before_optimizer_step(self)  # testing hooks; no-op unset
        with phase("grad_norm"):
            return queue_clipping(self.model, self.recipe.training.grad_clip)

    def flops_per_token(self) -> float:
        """Model FLOPs per input token of a step (``wmtp.models.args.training_flops_per_token``):
        the trained model's forward and backward (no weight gradients for a frozen LoRA base),
        plus each frozen model's forward. The numerator of MFU, here and in ``wmtp bench``."""
        from wmtp.models.args import training_flops_per_token

        def flops(model, **kw) -> float:
            unembedding = getattr(model, "output", None) is not None  # a value model has none
            return training_flops_per_token(model.args, seq, unembedding=unembedding, **kw)

        seq = self.recipe.data.max_length
        trained = flops(self.model, weight_grads=not self.lora)
        return trained + sum(flops(m, backward=False) for m in self.frozen.values())

    def _utilisation(self, tokens: int, elapsed: float, flops_per_token: float | None) -> dict:
        out: dict[str, float] = {}
        if self.ctx.device.type == "cuda":
            out["peak_memory_gb"] = torch.cuda.max_memory_allocated() / 2**30
            peak = bf16_peak_tflops(torch.cuda.get_device_name())
            if peak and flops_per_token and elapsed > 0:
                out["mfu"] = mfu(tokens / elapsed, flops_per_token, peak[0], self.ctx.world_size)
        return out

    # --- evaluation and checkpoints --------------------------------------------------------------
    def evaluate(self) -> dict[str, float]:
        """Held-out loss (the pipeline's ``eval_loss``) over every rank's share."""
        from wmtp.train.data_source import rank_share

        batches = list(self.data.heldout_batches(self.recipe.training.micro_batch_size))
        if not batches:
            return {}
        self.model.eval()
        figures = self.pipeline.eval_loss(
            self, rank_share(batches, self.ctx.rank, self.ctx.world_size)
        )
        self.model.train()
        return figures

    def save(self) -> Path:
        """A checkpoint of the finished steps (collective); its weights must be finite."""
        from wmtp.parallel import all_reduce_max

        bad = nonfinite_parameters(self.model)
        flag = torch.tensor(float(bool(bad)), device=self.ctx.device)
        if all_reduce_max(flag).item():
            where = ", ".join(bad) or "another rank's shard"
            raise RunError(
                f"step {self.step}: the weights of {where} are not finite: no checkpoint written. "
                f"{self._last_good(weights_suspect=True)}"
            )
        lora_state = None
        if self.lora:
            from wmtp.models.lora import lora_state_dict

            lora_state = lora_state_dict(self.model)
        state = {
            "step": self.step,
            "data": self.batches.state_dict(),
            DATA_FILES: self.data.files() if self.data is not None else {},
            "seed": self.recipe.experiment.seed,
            "world_size": self.ctx.world_size,
            "bad_steps": self.bad_steps,
            "tokens_seen": self.tokens_seen,
            "max_steps": self.max_steps,  # the plan: a report tells a stopped run from a done one
        }
        self.last_checkpoint = ckpt_io.save_checkpoint(
            self.run_dir,
            self.step,
            model=self.model,
            optimizer=self.optimizer,
            scheduler=self.scheduler,
            trainer_state=state,
            recipe_text=self.recipe_text,
            keep_last=self.recipe.training.keep_last,
            lora_state=lora_state,
        )
        self.saved_step = self.step
        if self.ctx.is_main:  # a run becomes latest with its first checkpoint
            from wmtp.train.run_dir import point_latest

            point_latest(self.run_dir)
        return self.last_checkpoint


def row_positions(batch: dict) -> int:
    """Positions of a micro-batch's rows, padding included: what the model computes over."""
    if "chosen" in batch:
        return row_positions(batch["chosen"]) + row_positions(batch["rejected"])
    return int(batch["input_ids"].numel())


def input_tokens(batch: dict) -> int:
    """Non-padding input tokens of a micro-batch: padded (``attention_mask``), packed (``cu_seqlens``)
    or a critic's pairs (``chosen`` / ``rejected``)."""
    if "chosen" in batch:
        return input_tokens(batch["chosen"]) + input_tokens(batch["rejected"])
    if batch.get("attention_mask") is not None:
        return int(batch["attention_mask"].sum())
    if batch.get("cu_seqlens") is not None:  # the documents that are examples, not padding
        cu = batch["cu_seqlens"].long()
        lengths = cu[1:] - cu[:-1]
        examples = batch.get("example_of_document")
        return int(lengths[examples >= 0].sum()) if examples is not None else int(cu[-1])
    return int(batch["input_ids"].numel())
