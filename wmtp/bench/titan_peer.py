"""The torchtitan peer: torchtitan's own Llama3 at the shape of a wmtp model, trained the way
torchtitan's trainer trains it on one GPU.

torchtitan 0.2.2, the release made against the torch of the GPU machine (2.11): 0.3.0 imports
``torch.distributed.fsdp.DataParallelMeshDims``, which torch 2.11 lacks (`ImportError` on an H100,
2026-12-05), so 0.3.0 needs a later torch. ``bench/torchtitan.txt`` pins 0.2.2 and what its
Llama3 package imports. What is built, all through torchtitan's API (:func:`build_side`):

- the model: ``torchtitan.models.llama3.Transformer`` from a ``TransformerModelArgs`` made here
  (:func:`model_args`) at exactly ``args``' shape: dim, layers, heads, key/value heads, SwiGLU
  width ``args.hidden_dim``, vocabulary, RoPE theta without scaling (its Llama 3.1 scaling set
  to a factor of 1), RMSNorm eps; embedding and unembedding untied, as wmtp's. Attention is its
  default for Llama3, ``sdpa`` (causal; cuDNN's kernel first, then flash, as its wrapper asks).
  Built on the meta device in fp32, then ``to_empty`` + ``init_weights``, as its trainer does.
- its parallelisation for one GPU: ``parallelize_llama`` with a ``JobConfig`` whose
  ``compile.enable`` is on (``apply_compile``: each transformer block ``torch.compile``d,
  fullgraph; CUDA only) and ``ParallelDims`` of a world of one. There FSDP is off, and its
  trainer's mixed precision is autocast to bf16 over fp32 master weights
  (``maybe_enable_amp``, ``training.mixed_precision_param = "bfloat16"``). No activation
  checkpointing (``activation_checkpoint.mode = "none"``): at 1B on one GPU nothing needs
  recomputing, and recomputation only costs time.
- its loss: ``build_cross_entropy_loss`` (cross-entropy of the logits in fp32, summed, compiled
  with the model: ``compile.components = ["model", "loss"]``), divided by the number of valid
  targets, as its ``forward_backward_step`` divides it.
- its optimizer: ``build_optimizers``'s AdamW (fused on CUDA, foreach elsewhere; betas 0.9 /
  0.95, no weight decay, the HF peers' settings), and its ``clip_grad_norm_`` at 1.0
  (``training.max_norm``).
- the step as its ``Trainer.train_step`` runs it: gradients zeroed, forward and loss under
  autocast, backward, clip, optimizer step.

Those are torchtitan's best settings for this shape on one GPU: its defaults plus per-block
compile, which its larger recipes turn on for speed. The task is wmtp's: the peers' random rows
with the prompt masked (:func:`wmtp.bench.hf_peer.synthetic_batch`), the labels shifted by one as
torchtitan's data loaders shift them, so that the same ``micro_batch x seq`` tokens are read and
the same next-token targets trained as by the Hugging Face peers. The FLOP count and MFU formula
are every side's (:func:`wmtp.bench.hf_peer.flops_per_token`). Importing torchtitan changes
process-wide settings, so ``wmtp bench peers`` runs the torchtitan sides after every other side.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from wmtp.bench import hf_peer
from wmtp.bench.sweep import Row, installed_version
from wmtp.data.examples import IGNORE_INDEX
from wmtp.models.args import ModelArgs
from wmtp.parallel import float8

PACKAGE = "torchtitan"
ATTENTION = "sdpa"
"""torchtitan's default attention for Llama3 (``TransformerModelArgs.attn_type``)."""


@dataclass(frozen=True)
class TitanConfig:
    """How the torchtitan peer trains (see the module doc)."""

    name: str
    compile: bool = True
    """torchtitan's per-block ``torch.compile`` (``apply_compile``) and its compiled loss."""
    float8: bool = False
    """torchtitan's float8 training (``model.converters = ["quantize.linear.float8"]``: torchao's
    tensorwise ``Float8Linear`` in every block, the unembedding ``output`` left in bf16 as its
    Llama3 recipes filter it and as wmtp's ``parallel.float8`` leaves it)."""


def version() -> str | None:
    """The installed torchtitan's version (``None``: not installed)."""
    return installed_version(PACKAGE)


def unavailable(config: TitanConfig, args: ModelArgs, device: torch.device) -> str | None:
    """Why this torchtitan peer cannot run here (``None`` when it can): the reason its one row
    records, the exception's type and message where torchtitan cannot be imported or cannot take
    ``args``' shape."""
    if config.compile and device.type != "cuda":
        return "torch.compile peers are measured on CUDA only (the CPU runs are tests)"
    if config.float8 and device.type == "cuda" and (why := float8.why_not(device)):
        return f"float8 {why}"
    if args.rope_scaling is not None:
        return (
            f"torchtitan's peer is built without RoPE scaling; this shape has {args.rope_scaling}"
        )
    try:
        for module in ("components.loss", "components.optimizer", "models.llama3"):
            importlib.import_module(f"torchtitan.{module}")
        model_args(args, seq_len=args.max_seq_len)
    except Exception as exc:  # not installed, an install that cannot load here, a refused shape
        return (
            f"torchtitan {version() or '(not installed)'} cannot run: {type(exc).__name__}: {exc}"
        )
    return None


def model_args(args: ModelArgs, *, seq_len: int) -> Any:
    """torchtitan's ``TransformerModelArgs`` of exactly ``args``' shape (one head, untied). Its
    SwiGLU width is ``multiple_of`` rounding up ``ffn_dim_multiplier x int(8 dim / 3)``: with
    ``multiple_of = args.hidden_dim`` and a multiplier that keeps the product within it, the
    width is ``args.hidden_dim``."""
    from torchtitan.models.llama3 import TransformerModelArgs
    from torchtitan.models.llama3.model.args import RoPEScalingArgs

    assert args.n_future_tokens == 1, f"torchtitan's Llama has one head, not {args}"
    swiglu = int(2 * 4 * args.dim / 3)
    return TransformerModelArgs(
        dim=args.dim,
        n_layers=args.n_layers,
        n_heads=args.n_heads,
        n_kv_heads=args.kv_heads,
        vocab_size=args.vocab_size,
        multiple_of=args.hidden_dim,
        ffn_dim_multiplier=min(1.0, args.hidden_dim / swiglu),
        norm_eps=args.norm_eps,
        rope_theta=args.rope_theta,
        rope_scaling_args=RoPEScalingArgs(scaling_factor=1.0),  # a factor of 1: no scaling
        max_seq_len=seq_len,
        attn_type=ATTENTION,
        attn_mask_type="causal",
    )


def job_config(config: TitanConfig, seq_len: int, device: torch.device) -> Any:
    """torchtitan's ``JobConfig`` for this peer: its defaults, with per-block compile (model and
    loss), the peers' optimizer settings, no activation checkpointing."""
    from torchtitan.config import JobConfig

    job = JobConfig()
    job.training.seq_len = seq_len
    job.training.max_norm = hf_peer.GRAD_CLIP
    job.compile.enable = config.compile
    job.activation_checkpoint.mode = "none"
    job.optimizer.lr = 1e-5
    job.optimizer.weight_decay = 0.0
    job.optimizer.implementation = "fused" if device.type == "cuda" else "foreach"
    if config.float8:
        job.model.converters = ["quantize.linear.float8"]
        job.quantize.linear.float8.filter_fqns = ["output"]
        job.quantize.linear.float8.emulate = device.type != "cuda"  # torchao's, for CPU tests
    return job


@dataclass
class TitanPeer:
    """A built torchtitan peer: its model, optimizers, loss and step."""

    config: TitanConfig
    model: torch.nn.Module
    optimizer: Any
    step: Callable[[torch.Tensor, torch.Tensor], int]
    """One optimizer step on ``[batch, seq]`` token ids and their unshifted labels (the peers'
    labels: ``-100`` where no target); returns the tokens read."""
    losses: list[torch.Tensor]
    """Each step's loss (mean over its targets), detached, as the step returned it."""


def titan_labels(labels_BS: torch.Tensor) -> torch.Tensor:
    """The peers' labels (position t's own token; Hugging Face shifts them) as torchtitan's data
    loaders give them: position t's target is token t + 1, the last position has none."""
    shifted_BS = torch.full_like(labels_BS, IGNORE_INDEX)
    shifted_BS[:, :-1] = labels_BS[:, 1:]
    return shifted_BS


def build_side(
    args: ModelArgs, config: TitanConfig, seq_len: int, device: torch.device
) -> TitanPeer:
    """torchtitan's model, parallelisation, loss, optimizer and step (see the module doc), as
    ``wmtp bench peers`` builds a side."""
    from torchtitan.components.loss import build_cross_entropy_loss
    from torchtitan.components.optimizer import build_optimizers
    from torchtitan.distributed import ParallelDims
    from torchtitan.distributed import utils as dist_utils
    from torchtitan.models.llama3 import Transformer, parallelize_llama
    from torchtitan.protocols.model_converter import build_model_converters

    job = job_config(config, seq_len, device)
    one_gpu = ParallelDims(
        dp_replicate=1, dp_shard=1, cp=1, tp=1, pp=1, ep=1, etp=1, world_size=1
    )  # fmt: skip
    with torch.device("meta"):
        model = Transformer(model_args(args, seq_len=seq_len))
    converters = build_model_converters(job, one_gpu)  # float8's swap, before compile
    converters.convert(model)
    model = parallelize_llama(model, one_gpu, job)
    model.to_empty(device=device)
    with torch.no_grad():
        model.init_weights(buffer_device=None)
    model.train()
    loss_fn = build_cross_entropy_loss(job)
    optimizer = build_optimizers([model], job.optimizer, one_gpu)
    params = list(model.parameters())
    amp = dist_utils.maybe_enable_amp(one_gpu, job.training.mixed_precision_param, device.type)
    losses: list[torch.Tensor] = []

    def step(tokens_BS: torch.Tensor, labels_BS: torch.Tensor) -> int:
        optimizer.zero_grad()
        targets_BS = titan_labels(labels_BS)
        valid_tokens = (targets_BS != IGNORE_INDEX).sum()
        with amp:
            pred = model(tokens_BS)
            loss = loss_fn(pred, targets_BS) / valid_tokens
        del pred
        loss.backward()
        losses.append(loss.detach())
        dist_utils.clip_grad_norm_(params, job.training.max_norm, foreach=True)
        optimizer.step()
        converters.post_optimizer_hook(model)  # its trainer's hook (float8's FSDP scales)
        return tokens_BS.numel()

    return TitanPeer(config, model, optimizer, step, losses)


def measure(
    peer: TitanPeer,
    args: ModelArgs,
    *,
    micro_batch: int,
    seq_len: int,
    warmup: int,
    repeats: int,
    device: torch.device,
) -> Row:
    """Time the peer's step on the peers' random rows (:func:`wmtp.bench.hf_peer.timed_row`)."""
    return hf_peer.timed_row(
        peer.config.name,
        peer.step,
        args,
        micro_batch=micro_batch,
        seq_len=seq_len,
        warmup=warmup,
        repeats=repeats,
        device=device,
        lora=False,
        gradient_checkpointing=False,
        compile=peer.config.compile,
        float8=_float8_label(peer.config, device),
        attention=ATTENTION,
        loss="build_cross_entropy_loss (fp32 logits, summed) / valid targets",
        mixed_precision="autocast bf16 over fp32 master weights (maybe_enable_amp, one GPU)",
        torchtitan=version(),
        trainable_parameters=sum(p.numel() for p in peer.model.parameters()),
    )


def _float8_label(config: TitanConfig, device: torch.device) -> str | None:
    """The row's float8 setting: torchao's tensorwise scaling, emulated off CUDA (the tests)."""
    if not config.float8:
        return None
    return "tensorwise" if device.type == "cuda" else "tensorwise, emulated"
