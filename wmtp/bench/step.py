"""``wmtp bench step``: tokens/s, MFU and peak memory of a recipe's training step.

The step timed is the trainer's own (:meth:`wmtp.train.loop.Trainer.train_step`): the recipe's
models built through the registry, its parallelism and MTP loss strategy, frozen models,
weighting, optimizer, gradient accumulation and clipping. Only the data differ: a synthetic batch
source (:class:`SyntheticBatches`) hands the trainer random tokens in the recipe's shapes, every
row ``data.max_length`` tokens (rows of four documents when ``data.packing``; a correct and an
incorrect solution per pair for the critic), so no dataset has to exist. Warm-up steps first,
then the median of repeated steps run back to back as a training run runs them (a CUDA event
pair around each, one wait at the end: ``time_call(queued=True)``, as for every peer), so a step's
time holds the GPU's idle while the host prepares it, not a start from an idle GPU. tokens/s counts
the input tokens of every rank; MFU is the one formula (``wmtp.models.args.mfu``): the trainer's
model FLOPs per token (:meth:`Trainer.flops_per_token`) against the GPUs' dense bf16 peak
(``wmtp.models.args.BF16_PEAK_TFLOPS``). Peak memory is the absolute peak of
``torch.cuda.max_memory_allocated()`` since the trainer built its model and optimizer, over the
warm-up and timed steps: the figure ``wmtp run`` logs as ``peak_memory_gb``
(:func:`wmtp.bench.timing.peak_allocated_gib`). Launched by torchrun (``--nproc-per-node N``)
every rank trains its own micro-batches under FSDP2.
"""

from __future__ import annotations

import json
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from wmtp.bench.timing import (
    Timing,
    device_peak_tflops,
    peak_allocated_gib,
    step_min_seconds,
    time_call,
    utilisation,
)
from wmtp.data.collate import pack_batch, pad_batch, pair_batch
from wmtp.data.examples import IGNORE_INDEX, Encoded
from wmtp.train.data_source import Lookahead

PROMPT_FRACTION = 8
"""A synthetic example masks its first 1/8 tokens as the prompt (and at least one per head)."""
DOCUMENTS_PER_ROW = 4


def prompt_tokens(example_length: int, n_heads: int) -> int:
    """The masked prompt of a synthetic example of ``example_length`` tokens (a packed row's
    document, not the row): its first 1/:data:`PROMPT_FRACTION`, at least one token per head.
    The Hugging Face peers mask the same prompt (``wmtp.bench.hf_peer.measure``)."""
    return max(example_length // PROMPT_FRACTION, n_heads)


@dataclass(frozen=True)
class StepResult:
    label: str
    tokens_per_s: float
    """Of the whole job: every rank's input tokens."""
    mfu: float | None
    """Per GPU; None (written null) where not measured: off CUDA, or a GPU of unknown peak."""
    peak_tflops: float | None
    peak_memory_gib: float | None
    """None off CUDA."""
    step: Timing
    config: dict = field(default_factory=dict)
    world_size: int = 1
    device: str = "cuda"
    """The processes' device type: ``cuda`` or ``cpu``."""

    def to_dict(self) -> dict:
        return {
            "label": self.label,
            "world_size": self.world_size,
            "device": self.device,
            "tokens_per_s": self.tokens_per_s,
            "mfu": self.mfu,
            "peak_tflops": self.peak_tflops,
            "peak_memory_gib": self.peak_memory_gib,
            "step": self.step.to_dict(),
            "config": self.config,
        }


class SyntheticBatches(Lookahead):
    """A trainer's batch source of random tokens in the recipe's shapes (see the module doc),
    built ahead as a run's data are (:class:`wmtp.train.data_source.Lookahead`)."""

    def __init__(self, recipe: Any, *, vocab_size: int, n_heads: int, rank: int, seed: int = 0):
        self.recipe, self.vocab_size, self.n_heads = recipe, vocab_size, n_heads
        self.generator = torch.Generator().manual_seed(seed + rank)

    def steps_per_epoch(self) -> float:
        return float("inf")

    def _state(self) -> dict:
        return {}

    def _load_state(self, state: dict) -> None:
        pass

    def _build_step(self) -> list[dict]:
        t = self.recipe.training
        return [self._micro_batch(t.micro_batch_size) for _ in range(t.grad_accum_steps)]

    def _example(self, length: int, correct: bool = True) -> Encoded:
        ids = torch.randint(3, self.vocab_size, (length,), generator=self.generator).tolist()
        prompt = prompt_tokens(length, self.n_heads)
        labels = [IGNORE_INDEX] * prompt + ids[prompt:]
        return Encoded(ids, labels, problem_id="synthetic", is_correct=correct)

    def _micro_batch(self, rows: int) -> dict:
        data, length = self.recipe.data, self.recipe.data.max_length
        if self.recipe.pipeline.examples == "pairs":
            pairs = [(self._example(length), self._example(length, False)) for _ in range(rows)]
            return pair_batch(pairs, pad_id=0)
        if data.packing:
            doc = length // DOCUMENTS_PER_ROW
            packed = [[self._example(doc) for _ in range(DOCUMENTS_PER_ROW)] for _ in range(rows)]
            return pack_batch(packed, pad_id=0, row_length=length)
        return pad_batch([self._example(length) for _ in range(rows)], pad_id=0)


def bench_step(
    recipe: Any,
    *,
    label: str,
    warmup: int = 5,
    repeats: int = 20,
    device: str | None = None,
    profile: Path | None = None,
    profile_steps: int = 3,
) -> StepResult:
    """Build the recipe's trainer on synthetic batches and time its step (see the module doc).

    ``device`` overrides ``parallel.device`` (``cpu`` runs the same step, for tests; memory and
    MFU are then None, not measured, as MFU is on a GPU whose peak :func:`device_peak_tflops`
    does not know).
    ``profile``: after timing, run ``profile_steps`` more steps under ``torch.profiler`` and write
    ``<profile>.trace.json.gz`` (a Chrome / Perfetto trace) and ``<profile>.txt`` (operators by
    device time, then by host time), on rank 0."""
    from wmtp.parallel import init_distributed
    from wmtp.recipe import dump_recipe
    from wmtp.train.loop import Trainer

    ctx = init_distributed(device or recipe.parallel.device)
    with tempfile.TemporaryDirectory() as run_dir:
        trainer = Trainer(recipe, dump_recipe(recipe), Path(run_dir), ctx, console=False)
        trainer.build(batch_source=_synthetic)  # resets the peak memory once built
        flops_per_token = trainer.flops_per_token()
        tokens: list[int] = []

        def step() -> None:
            tokens.append(trainer.train_step(flops_per_token)["tokens"])

        timing = time_call(
            step, warmup=warmup, repeats=repeats, queued=True,
            min_seconds=step_min_seconds(ctx.device),
        )  # fmt: skip
        memory = peak_allocated_gib(ctx.device)
        if profile is not None and ctx.rank == 0:
            profile_calls(step, profile, steps=profile_steps, device=ctx.device)
        tokens_per_s = tokens[-1] / (timing.median_ms / 1e3)  # every rank's: one global count
        peak = device_peak_tflops(ctx.device)
        model_flops = utilisation(tokens_per_s, flops_per_token, peak, ctx.world_size)
        config = _config(recipe, trainer)
    return StepResult(
        label, tokens_per_s, model_flops, peak, memory, timing, config, ctx.world_size,
        ctx.device.type,
    )  # fmt: skip


def profile_calls(fn, path: Path, *, steps: int, device: torch.device) -> None:
    """Run ``fn`` ``steps`` times under ``torch.profiler``: ``<path>.trace.json.gz`` and
    ``<path>.txt`` (the top operators by self device time, and by self host time)."""
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU]
    if device.type == "cuda":
        activities.append(ProfilerActivity.CUDA)
    path.parent.mkdir(parents=True, exist_ok=True)
    with profile(activities=activities, record_shapes=True) as prof:
        for _ in range(steps):
            fn()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
    prof.export_chrome_trace(str(path.with_name(path.name + ".trace.json")))
    _gzip(path.with_name(path.name + ".trace.json"))
    averages = prof.key_averages()
    tables = [f"{steps} steps profiled\n"]
    if device.type == "cuda":
        from wmtp.bench.trace import gpu_timeline, timeline_text

        timeline = gpu_timeline(path.with_name(path.name + ".trace.json.gz"))
        path.with_name(path.name + ".timeline.json").write_text(json.dumps(timeline, indent=1))
        tables.append(timeline_text(timeline, per=steps))
        tables += ["by self device time:", averages.table("self_device_time_total", row_limit=40)]
    tables += ["by self host time:", averages.table("self_cpu_time_total", row_limit=25)]
    path.with_name(path.name + ".txt").write_text("\n".join(tables) + "\n")


def _gzip(path: Path) -> None:
    import gzip
    import shutil

    with path.open("rb") as src, gzip.open(f"{path}.gz", "wb") as dst:
        shutil.copyfileobj(src, dst)
    path.unlink()


def _synthetic(trainer) -> SyntheticBatches:
    return SyntheticBatches(
        trainer.recipe,
        vocab_size=trainer.tokenizer.vocab_size,
        n_heads=trainer.n_heads,
        rank=trainer.ctx.rank,
    )


def _config(recipe: Any, trainer) -> dict:
    r = recipe
    return {
        "pipeline": r.experiment.pipeline,
        "micro_batch_size": r.training.micro_batch_size,
        "grad_accum_steps": r.training.grad_accum_steps,
        "seq_len": r.data.max_length,
        "packing": r.data.packing,
        "mtp_loss": r.training.mtp_loss,
        "one_backward": trainer.loss_config.one_backward,
        "sharding": r.parallel.sharding,
        "activation_checkpointing": r.parallel.activation_checkpointing,
        "compile": r.parallel.compiles(trainer.ctx.device.type),
        "float8": r.parallel.float8_scaling(),
        "attention": trainer.model.attention.name,
        "n_future_tokens": trainer.n_heads,
        "vocab_size": trainer.model_args.vocab_size,
        "lora": trainer.lora,
        "frozen": sorted(trainer.frozen),
        "flops_per_token": trainer.flops_per_token(),
    }
