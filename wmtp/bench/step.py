"""``wmtp bench step``: tokens/s, MFU and peak memory of wmtp's training step.

The step is the trainer's: ``parallelize`` (activation checkpointing, per-block compile, fp32
master weights), bf16 autocast compute, :func:`wmtp.losses.mtp.loss_and_backward` (heads one at a
time, chunked linear cross-entropy), fused AdamW. Warm-up steps first, then the median of repeated
steps timed with CUDA events. MFU counts model FLOPs (6 per parameter per token plus causal
attention, every head's unembedding included) against the GPU's dense bf16 peak. Launched by
torchrun (``wmtp bench step --nproc-per-node N``) it measures the FSDP2 step: every rank trains
its own micro-batch; tokens/s counts all of them, MFU is per GPU.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import torch

from wmtp.bench.timing import Timing, bf16_peak_tflops, peak_memory_gib, time_call
from wmtp.models.args import ModelArgs, training_flops_per_token


@dataclass(frozen=True)
class StepConfig:
    """One measured configuration of the training step."""

    batch: int = 2
    seq_len: int = 2048
    attention: str = "auto"
    compile: bool = True
    activation_checkpointing: bool | int = False
    strategy: str = "sequential"
    chunk_size: int | None = None
    sharding: str = "full_shard"
    """FSDP2 sharding when launched on several GPUs (torchrun); nothing on one."""
    reduce_dtype: str = "float32"
    critic: ModelArgs | None = None
    """A frozen value model run forward each step (the verifiable pipeline's extra cost)."""


@dataclass(frozen=True)
class StepResult:
    label: str
    tokens_per_s: float
    """Of the whole job: every GPU's tokens (``world_size`` of them, each with ``batch`` rows)."""
    mfu: float
    """Per GPU."""
    peak_tflops: float
    peak_memory_gib: float
    step: Timing
    config: dict = field(default_factory=dict)
    world_size: int = 1

    def to_dict(self) -> dict:
        return {
            "label": self.label,
            "world_size": self.world_size,
            "tokens_per_s": self.tokens_per_s,
            "mfu": self.mfu,
            "peak_tflops": self.peak_tflops,
            "peak_memory_gib": self.peak_memory_gib,
            "step": self.step.to_dict(),
            "config": self.config,
        }


def _frozen_critic(args: ModelArgs, attention: str, device) -> torch.nn.Module:
    from wmtp.models.value import ValueModel

    critic = ValueModel(replace(args, n_future_tokens=1), head="mlp", attention=attention)
    critic = critic.to(device=device, dtype=torch.bfloat16).eval().requires_grad_(False)
    if torch.device(device).type == "cuda":
        for block in critic.blocks():
            block.compile()
    return critic


def bench_step(
    args: ModelArgs, cfg: StepConfig, *, label: str, warmup=5, repeats=20, device: str = "cuda"
) -> StepResult:
    """Measure one configuration; returns a :class:`StepResult`.

    ``device="cpu"`` runs the same step (for tests of this code); memory and MFU are then 0.
    """
    from wmtp.losses.mtp import MTPLossConfig, loss_and_backward
    from wmtp.models.attention import resolve_backend
    from wmtp.models.llama_mtp import LlamaMTP
    from wmtp.parallel import compute_context, init_distributed, parallelize

    ctx = init_distributed(device)
    backend, _ = resolve_backend(cfg.attention, ctx.device, torch.bfloat16)
    with torch.device(ctx.device):
        model = LlamaMTP(args, attention=backend)
    model = parallelize(
        model,
        ctx,
        sharding=cfg.sharding,
        activation_checkpointing=cfg.activation_checkpointing,
        compile=cfg.compile,
        dtype="bfloat16",
        reduce_dtype=cfg.reduce_dtype,
    )
    optim = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=ctx.device.type == "cuda")
    critic = _frozen_critic(cfg.critic, backend, ctx.device) if cfg.critic else None
    tokens = torch.randint(0, args.vocab_size, (cfg.batch, cfg.seq_len), device=ctx.device)
    loss_cfg = MTPLossConfig(strategy=cfg.strategy, chunk_size=cfg.chunk_size)

    def step() -> None:
        weights = None
        if critic is not None:
            with torch.no_grad():
                weights = critic(tokens).float().sigmoid() + 0.5  # stands in for TD weights
        with compute_context(ctx, "bfloat16"):
            loss_and_backward(
                model,
                tokens,
                tokens,
                n_heads=args.n_future_tokens,
                weights=weights,
                config=loss_cfg,
            )
        optim.step()
        optim.zero_grad(set_to_none=True)

    timing = time_call(step, warmup=warmup, repeats=repeats)
    per_gpu = cfg.batch * cfg.seq_len / (timing.median_ms / 1e3)
    memory, peak, mfu = 0.0, 0.0, 0.0
    if ctx.device.type == "cuda":
        memory = peak_memory_gib(step)
        peak, _ = bf16_peak_tflops()
        mfu = per_gpu * training_flops_per_token(args, cfg.seq_len) / (peak * 1e12)
    config = {
        **cfg.__dict__,
        "critic": bool(cfg.critic),
        "attention_resolved": backend,
        "n_future_tokens": args.n_future_tokens,
        "vocab_size": args.vocab_size,
    }
    tokens_per_s = per_gpu * ctx.world_size
    return StepResult(label, tokens_per_s, mfu, peak, memory, timing, config, ctx.world_size)
