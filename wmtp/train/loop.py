"""The training loop: one ``Trainer`` for every pipeline.

``Trainer.run()``: build (tokenizer, pipeline, model, parallelism, optimizer, data), resume if
asked, then per optimizer step: the pipeline's ``forward_backward`` (weights, loss, one backward
per micro-batch with gradient sync only on the last), a NaN/Inf check naming the component,
gradient clipping, the optimizer and scheduler steps, metrics, periodic held-out loss and
checkpoints. Pipelines change the loop only through the hooks of ``wmtp.train.pipeline``
(documented there: batch source, per-token weights or a per-head weight callable, figures).
"""

from __future__ import annotations

import logging
import math
import time
from pathlib import Path
from typing import Any

import torch

from wmtp.errors import RunError
from wmtp.parallel import (
    DistContext,
    compute_context,
    model_init_seed,
    parallelize,
    seed_everything,
)
from wmtp.train import checkpoint as ckpt_io
from wmtp.train import faults
from wmtp.train.metrics import MetricsLogger, peak_flops, read_metrics
from wmtp.train.optim import build_optimizer, build_scheduler
from wmtp.train.pipeline import Pipeline, StepOutput

log = logging.getLogger(__name__)


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

    # --- building --------------------------------------------------------------------------------
    def build(self) -> Trainer:
        from wmtp import registry
        from wmtp.train.data_source import load_train_data

        r = self.recipe
        model_init_seed(r.experiment.seed)
        self.tokenizer = registry.get("tokenizer", r.tokenizer.kind)(r.tokenizer)
        self.pipeline: Pipeline = registry.get("pipeline", r.experiment.pipeline)(r)
        model = self.pipeline.build_model(self)
        self.n_heads = model.n_heads
        self.model_args = model.args
        self.lora = hasattr(model, "lora_config")
        p = r.parallel
        self.model = parallelize(
            model,
            self.ctx,
            sharding=p.sharding,
            activation_checkpointing=p.activation_checkpointing,
            compile=p.compile,
            dtype=self.pipeline.model_spec().dtype,
            reduce_dtype=p.reduce_dtype,
        )
        self.pipeline.setup(self)
        self.data = load_train_data(r.data, self.tokenizer, r.experiment.seed)
        self.batches = self.pipeline.batch_source(self, self.data)
        self.max_steps = self._max_steps()
        t = r.training
        self.optimizer = build_optimizer(
            self.model.parameters(),
            lr=t.lr,
            betas=t.betas,
            eps=t.eps,
            weight_decay=t.weight_decay,
            device=self.ctx.device,
        )
        self.scheduler = build_scheduler(
            self.optimizer,
            kind=t.schedule.kind,
            warmup_steps=t.schedule.warmup_steps,
            max_steps=self.max_steps,
            min_lr_ratio=t.schedule.min_lr_ratio,
        )
        seed_everything(r.experiment.seed, self.ctx.rank)
        if self.ctx.device.type == "cuda":  # peak memory counts training, not building
            torch.cuda.reset_peak_memory_stats(self.ctx.device)
        return self

    def _max_steps(self) -> int:
        t = self.recipe.training
        if t.max_steps is not None:
            return t.max_steps
        return max(1, math.ceil(t.epochs * self.batches.steps_per_epoch()))

    # --- helpers for pipelines -------------------------------------------------------------------
    def to_device(self, batch: dict) -> dict:
        return {
            k: v.to(self.ctx.device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()
        }

    def seq_info(self, batch: dict):
        """``SeqInfo`` for packed batches; ``None`` for padded ones (right padding needs no mask)."""
        if batch.get("cu_seqlens") is None:
            return None
        from wmtp.models.attention import SeqInfo

        return SeqInfo(
            position_ids=batch.get("position_ids"),
            cu_seqlens=batch.get("cu_seqlens"),
            max_seqlen=batch.get("max_seqlen"),
            document_ids=batch.get("document_ids"),
        )

    def compute_context(self):
        return compute_context(self.ctx, self.pipeline.model_spec().dtype)

    # --- resume ----------------------------------------------------------------------------------
    def resume(self, checkpoint: Path) -> None:
        state = ckpt_io.load_checkpoint(
            checkpoint, model=self.model, optimizer=self.optimizer, scheduler=self.scheduler
        )
        self.step = int(state["step"])
        self.batches.load_state_dict(state["data"])
        if self.ctx.is_main:  # metrics after the checkpoint will be written again
            path = self.run_dir / "metrics.jsonl"
            kept = [m for m in read_metrics(self.run_dir) if m["step"] <= self.step]
            import json

            path.write_text("".join(json.dumps(m) + "\n" for m in kept))
        log.info("resumed from %s at step %d", checkpoint, self.step)

    # --- the loop --------------------------------------------------------------------------------
    def run(self) -> dict[str, Any]:
        t = self.recipe.training
        logger = MetricsLogger(
            self.run_dir,
            total_steps=self.max_steps,
            start_step=self.step,
            enabled=self.ctx.is_main,
            console=self.console,
        )
        flops = self._flops_per_token()
        last: dict[str, Any] = {}
        try:
            while self.step < self.max_steps:
                if self.stop_at_step is not None and self.step >= self.stop_at_step:
                    break
                record = self._one_step(flops)
                self.step += 1
                faults.after_step(self)  # testing hooks (WMTP_FAULT, ...); no-op unset
                last = record
                if self.step % t.log_every == 0 or self.step == 1 or self.step == self.max_steps:
                    logger.log(self.step, record)
                else:
                    logger.advance(self.step)
                if t.eval_every and self.step % t.eval_every == 0:
                    logger.log(self.step, self.evaluate())
                if t.checkpoint_every and self.step % t.checkpoint_every == 0:
                    self.save()
            if self.step == self.max_steps:
                if not (t.eval_every and self.step % t.eval_every == 0):  # not evaluated just now
                    logger.log(self.step, self.evaluate())
                if not (t.checkpoint_every and self.step % t.checkpoint_every == 0):
                    self.save()
        finally:
            logger.close()
        return {"step": self.step, **last}

    def _one_step(self, flops_per_token: float | None) -> dict[str, Any]:
        start = time.perf_counter()
        self.model.train()
        micro_batches = self.batches.next_step()
        data_s = time.perf_counter() - start
        out = self.pipeline.forward_backward(self, micro_batches)
        tokens = self._input_tokens(micro_batches)
        self._check_finite(out)
        grad_norm = self._clip_gradients()
        if not math.isfinite(grad_norm):
            self._stop(f"the gradient norm is {grad_norm}", "grad_norm")
        lr = self.scheduler.get_last_lr()[0]
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        elapsed = time.perf_counter() - start
        record = {"loss": out.loss, **out.figures, "lr": lr, "grad_norm": grad_norm}
        record["step_time_s"], record["data_time_s"], record["tokens"] = elapsed, data_s, tokens
        record["tokens_per_s"] = tokens / elapsed if elapsed > 0 else 0.0
        record["target_tokens_per_s"] = out.tokens / elapsed if elapsed > 0 else 0.0
        record.update(self._utilisation(tokens, elapsed, flops_per_token))
        return record

    def _input_tokens(self, micro_batches: list[dict]) -> int:
        """Tokens the model read this step on all ranks (padding left out): the work done."""
        from wmtp.parallel import all_reduce_sum

        local = sum(input_tokens(b) for b in micro_batches)
        if not self.ctx.is_distributed:
            return local
        return int(all_reduce_sum(torch.tensor(float(local), device=self.ctx.device)).item())

    def _check_finite(self, out: StepOutput) -> None:
        for name, value in {"loss": out.loss, **out.components}.items():
            if not math.isfinite(value):
                bad = [k for k, v in out.components.items() if not math.isfinite(v)]
                self._stop(f"the loss is {value}", ", ".join(bad) or name)

    def _stop(self, what: str, component: str) -> None:
        last = ckpt_io.latest_checkpoint(self.run_dir)
        kept = f"the last good checkpoint is {last}" if last else "no checkpoint was written yet"
        raise RunError(f"step {self.step + 1}: {what} (component: {component}); stopped, {kept}")

    def _clip_gradients(self) -> float:
        params = [p for p in self.model.parameters() if p.grad is not None]
        clip = self.recipe.training.grad_clip  # 0 (TOML has no null) = measure, never clip
        norm = torch.nn.utils.clip_grad_norm_(params, clip if clip else float("inf"))
        if hasattr(norm, "full_tensor"):
            norm = norm.full_tensor()
        return float(norm)

    def _flops_per_token(self) -> float | None:
        from wmtp.models.args import training_flops_per_token

        seq = self.recipe.data.max_length
        trained = training_flops_per_token(self.model_args, seq, weight_grads=not self.lora)
        return trained + self.pipeline.frozen_flops_per_token(seq)

    def _utilisation(self, tokens: int, elapsed: float, flops_per_token: float | None) -> dict:
        out: dict[str, float] = {}
        if self.ctx.device.type == "cuda":
            out["peak_memory_gb"] = torch.cuda.max_memory_allocated() / 2**30
            peak = peak_flops(torch.cuda.get_device_name())
            if peak and flops_per_token and elapsed > 0:
                out["mfu"] = tokens * flops_per_token / elapsed / (peak * self.ctx.world_size)
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
        lora_state = None
        if self.lora:
            from wmtp.models.lora import lora_state_dict

            lora_state = lora_state_dict(self.model)
        state = {
            "step": self.step,
            "data": self.batches.state_dict(),
            "seed": self.recipe.experiment.seed,
            "world_size": self.ctx.world_size,
        }
        return ckpt_io.save_checkpoint(
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
