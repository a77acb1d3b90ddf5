"""``[parallel]`` and ``[training]``: how the work is spread over devices, and the optimisation."""

import math
from typing import Annotated, Literal

from pydantic import Field

from wmtp.recipe._base import COSMETIC, FROM_ARRAY, NUMERICS, PERFORMANCE, Section, rule

PositiveInt = Annotated[int, Field(gt=0)]
Beta = Annotated[float, Field(ge=0, lt=1)]


COMPILED_PAD_MULTIPLE = 256
"""Padded lengths of compiled runs round up to this (``ParallelSpec.pad_multiple``)."""

FLOAT8_TOKEN_MULTIPLE = 16
"""Float8 runs pad rows to a multiple of this many tokens: a float8 weight gradient multiplies over
a micro-batch's tokens, and ``torch._scaled_mm`` takes only inner dimensions divisible by 16."""


class ParallelSpec(Section):
    """Sharding, activation checkpointing, compilation and float8: speed and memory; the math only
    where a field says so (``reduce_dtype``, ``float8``)."""

    category = "performance"

    device: Literal["auto", "cpu", "cuda"] = "auto"
    """Where to train: ``auto`` uses CUDA when available, else the CPU."""
    sharding: Literal["full_shard", "shard_grad_op", "no_shard"] = "full_shard"
    """FSDP2 strategy: shard parameters, gradients and optimizer state (``full_shard``), keep
    parameters whole between forward and backward (``shard_grad_op``), or replicate (``no_shard``,
    plain data parallel)."""
    activation_checkpointing: bool | Annotated[int, Field(ge=1)] = False
    """Recompute activations in the backward pass: ``true`` for every block, an integer k for
    every k-th block, ``false`` for none."""
    compile: bool | Literal["auto"] = False
    """``torch.compile`` each transformer block: ``true``, ``false``, or ``auto`` (on CUDA, eager
    on the CPU, where compiling costs more than it saves). Compiled blocks have static shapes:
    padded batches round their length up to a multiple of 256 tokens (never past
    ``data.max_length``), so a run compiles once per length bucket (at most 8 at 2048 tokens),
    each in the step that first meets it. 1.4x the tokens/s of the production LoRA step on an
    H200 (``bench/results/h200.md``). The production recipes set ``auto``: their rehearsal trains
    compiled on an H200 (``bench/results/h200_rehearsal.md``)."""

    def compiles(self, device_type: str) -> bool:
        """Whether blocks are compiled on a ``device_type`` (``cuda``, ``cpu``) device."""
        return device_type == "cuda" if self.compile == "auto" else self.compile

    def pad_multiple(self, device_type: str) -> int:
        """What padded batches round their length up to on ``device_type``.

        Compiled blocks trace static shapes: with dynamic ones, Inductor's partitioner fails on
        the second length of a LoRA-dropout block under activation checkpointing (torch 2.11 on
        CUDA: "Node convert_element_type_... was invalid, but is output"), and every new length
        would recompile besides. Eager blocks pad to the longest row only. Float8 rows are a
        multiple of :data:`FLOAT8_TOKEN_MULTIPLE` tokens (256 is one)."""
        multiple = COMPILED_PAD_MULTIPLE if self.compiles(device_type) else 1
        if self.float8 is not False:
            multiple = math.lcm(multiple, FLOAT8_TOKEN_MULTIPLE)
        return multiple

    reduce_dtype: Annotated[Literal["float32", "bfloat16"], NUMERICS] = "float32"
    """Dtype of the gradient reduce-scatter / all-reduce across ranks."""
    float8: Annotated[bool | Literal["tensorwise", "rowwise"], NUMERICS] = False
    """Float8 matmuls (torchao's float8 training) in the linear layers of every transformer block,
    trunk and heads (wq wk wv wo w1 w2 w3; under LoRA the frozen base weight's matmul, the
    adapters staying in the compute dtype). The embedding and the unembedding stay in the compute
    dtype, as do layers whose sizes are not multiples of 16; training rows pad to a multiple of 16
    tokens, so ``data.max_length`` must be one. ``true`` is ``"tensorwise"`` (one
    scale per tensor); ``"rowwise"`` scales each row (more accurate, more scaling work). It
    changes the numerics, not the weights: their names and dtypes stay, so checkpoints load
    either way. Needs a CUDA GPU of compute capability 8.9 or newer (H100, H200, L40S) and
    torchao (``pip install 'wmtp[float8]'``); refused elsewhere (with ``device = "cpu"`` by
    ``wmtp validate``, else when the run starts). Use it with ``parallel.compile``: compiling
    fuses torchao's scaling and casts, and drops the weight-gradient matmul that torchao's eager
    backward computes and discards for a frozen LoRA base. On an H200, compiled, against bf16:
    1.27x the tokens/s of the 7B LoRA step at micro-batch 4, 1.18x at the 1B full fine-tune, the
    loss of a 300-step run 0.38% lower (``bash bench/h200.sh float8 float8_loss``,
    ``bench/results/h200.md``). At the LoRA recipes' own micro-batch of 1 it was slower than bf16
    on H100s (9,758-12,554 tokens/s against 13,165-13,809; ``bench/results/h100_lora_mb1_20261206/``):
    raise ``training.micro_batch_size`` (and lower ``grad_accum_steps``) where memory allows."""

    def float8_scaling(self) -> str | None:
        """torchao's float8 recipe (``tensorwise``, ``rowwise``), or ``None`` when float8 is off."""
        return "tensorwise" if self.float8 is True else self.float8 or None

    @rule("float8", "device")
    def _float8_on_cuda(self) -> str | None:
        """On ``device = "auto"`` the GPU is checked when the run starts (wmtp.parallel.float8)."""
        if self.float8 is False or self.device != "cpu":
            return None
        setting = "true" if self.float8 is True else f'"{self.float8}"'
        return (
            f"float8 = {setting} needs a CUDA GPU of compute capability 8.9 or newer (H100, "
            'H200, L40S), but device = "cpu"'
        )


class ScheduleSpec(Section):
    """Learning-rate schedule: linear warm-up, then the chosen decay."""

    kind: Literal["cosine", "linear", "constant"] = "cosine"
    """Decay after warm-up: cosine or linear to ``min_lr_ratio * lr``, or constant."""
    warmup_steps: Annotated[int, Field(ge=0)] = 0
    """Optimizer steps of linear warm-up from 0 to ``lr``."""
    min_lr_ratio: Annotated[float, Field(ge=0, le=1)] = 0.1
    """Final learning rate as a fraction of ``lr`` (cosine and linear)."""


class CriticLossSpec(Section):
    """Losses of the ``critic`` pipeline: pairwise ranking plus an optional lambda-return term."""

    pairwise: Literal["bradley_terry", "hinge"] = "bradley_terry"
    """Pairwise loss on mean response scores (pre-sigmoid) of a correct and an incorrect solution
    of one problem: ``-logsigmoid(v+ - v- - margin)`` or ``relu(margin - (v+ - v-))``."""
    margin: Annotated[float, Field(ge=0)] = 0.0
    """Margin of the pairwise loss."""
    lambda_return_weight: Annotated[float, Field(ge=0)] = 0.0
    """Weight of the per-token lambda-return Huber loss (reward 1 correct / 0 incorrect); 0 = off."""
    lam: Annotated[float, Field(ge=0, le=1)] = 0.95
    """Lambda of the lambda-return targets."""
    huber_delta: Annotated[float, Field(gt=0)] = 1.0
    """Huber loss threshold."""


class TrainingSpec(Section):
    """Optimisation: batch, AdamW, schedule, length, clipping, intervals, MTP loss."""

    micro_batch_size: PositiveInt = 4
    """Sequences per device per forward/backward."""
    grad_accum_steps: PositiveInt = 1
    """Micro-batches accumulated per optimizer step."""
    lr: Annotated[float, Field(gt=0)] = 1e-5
    """Peak learning rate (AdamW)."""
    weight_decay: Annotated[float, Field(ge=0)] = 0.0
    """AdamW decoupled weight decay."""
    betas: Annotated[tuple[Beta, Beta], FROM_ARRAY] = (0.9, 0.95)
    """AdamW (beta1, beta2)."""
    eps: Annotated[float, Field(gt=0)] = 1e-8
    """AdamW epsilon."""
    schedule: ScheduleSpec = Field(default_factory=ScheduleSpec)
    """Learning-rate schedule."""
    max_steps: PositiveInt | None = None
    """Optimizer steps to train; give this or ``epochs``, not both (a recipe that sets one
    replaces the other inherited through ``extends``)."""
    epochs: Annotated[float, Field(gt=0)] | None = None
    """Passes over the training data; give this or ``max_steps``, not both."""
    grad_clip: Annotated[float, Field(ge=0)] = 1.0
    """Clip the global gradient norm to this; 0 = no clipping."""
    log_every: Annotated[PositiveInt, COSMETIC] = 10
    """Optimizer steps between metric logs (the first and last steps, and a skipped one, always)."""
    eval_every: Annotated[Annotated[int, Field(ge=0)], COSMETIC] = 0
    """Optimizer steps between held-out evaluations; 0 = only at the end."""
    checkpoint_every: Annotated[Annotated[int, Field(ge=0)], COSMETIC] = 0
    """Optimizer steps between checkpoints; 0 = only at the end."""
    keep_last: Annotated[PositiveInt, COSMETIC] = 2
    """Checkpoints kept on disk (older ones are deleted once a newer one is complete)."""
    head_weights: list[Annotated[float, Field(ge=0)]] | None = None
    """Weight of each head's loss (head 1 first), one per future token; unset = equal weights."""
    mtp_loss: Annotated[Literal["per_head", "chunked", "joint"], PERFORMANCE] = "per_head"
    """How the heads' backward runs: one head at a time with gradients accumulated at the trunk
    (``per_head``, the MTP paper's; each block of logits gets its gradient as soon as it is
    computed; under FSDP, which wants one backward, the head layers' activations are kept for it
    instead), one backward with every head checkpointed (``chunked``: one recomputed head
    forward), or one backward with every head's activations and logits kept (``joint``: no
    recompute, the most memory). ``per_head`` and ``chunked`` score through a chunked linear
    cross-entropy, so no head's [B, S, V] logits exist whole."""
    max_bad_steps: Annotated[int, Field(ge=0)] = 0
    """Steps with a NaN or infinite loss or gradient that are skipped (not applied; the schedule
    and the data move on) before the run stops; 0 stops at the first one."""
    skip_invalid_data: bool = False
    """Skip (and count) malformed examples instead of stopping with an error."""
    critic_loss: CriticLossSpec = Field(default_factory=CriticLossSpec)
    """Losses of the ``critic`` pipeline (ignored by the others)."""

    @rule("max_steps", "epochs")
    def _one_length(self) -> str | None:
        if self.max_steps is not None and self.epochs is not None:
            return "give max_steps or epochs, not both"
        return None

    @rule("schedule.warmup_steps", "max_steps")
    def _warmup_fits(self) -> str | None:
        if self.max_steps is not None and self.schedule.warmup_steps > self.max_steps:
            return (
                f"schedule.warmup_steps = {self.schedule.warmup_steps} is more than "
                f"max_steps = {self.max_steps}"
            )
        return None

    @rule("head_weights")
    def _head_weights_positive(self) -> str | None:
        if self.head_weights is not None and sum(self.head_weights) <= 0:
            return "head_weights must have a positive sum"
        return None
