"""The torchtitan peer: torchtitan's own Llama3 at the shape of a wmtp model, trained the way
torchtitan trains it on one GPU.

What is built, all through torchtitan's API (:func:`build_titan`):

- the model: ``torchtitan.models.llama3.Llama3Model`` from a ``Llama3Model.Config`` made here
  with torchtitan's own layer builder (``_build_llama3_layers``, fused QKV) and its parameter
  inits (those of its untied flavours), at exactly ``args``' shape: dim, layers, heads, key/value
  heads, SwiGLU width ``args.hidden_dim``, vocabulary, RoPE theta (``ComplexRoPE``, no scaling),
  RMSNorm eps; embedding and unembedding untied, as wmtp's. Attention is torchtitan's default for
  Llama3 (``flex``: FlexAttention with its causal, per-document block mask built from each row's
  positions, as its trainer builds it every step). Built on the meta device in fp32, then
  ``to_empty`` + ``init_weights``, as its trainer does.
- its single-GPU parallelisation: ``torchtitan.models.llama3.parallelize_llama`` with its config
  objects (``ParallelDims`` of a world of one, ``TrainingConfig``, ``ParallelismConfig``,
  ``CompileConfig``), which applies ``torchtitan.distributed.compile.apply_compile`` (each
  transformer block ``torch.compile``d, fullgraph; CUDA only) and FSDP2 ``fully_shard`` over a
  one-rank mesh with its ``MixedPrecisionPolicy``: fp32 master weights, bf16 parameters in the
  forward and backward, fp32 gradient reduction (``training.mixed_precision_param =
  "bfloat16"``, ``mixed_precision_reduce = "float32"``, its defaults). No activation
  checkpointing: at 1B on one 141 GB GPU nothing needs recomputing (``ac_config=None``;
  torchtitan's Llama3 recipes checkpoint only where memory runs out, and recomputation only
  costs time).
- its loss: ``ChunkedLossWrapper`` over ``CrossEntropyLoss`` (8 sequence chunks; the loss every
  torchtitan Llama3 recipe uses: the unembedding and cross-entropy run chunk by chunk, so the
  full ``[batch, seq, vocab]`` logits never exist at once), the cross-entropy compiled with the
  model (``compile.components = ["model", "loss"]``, its default) and normalised by the number of
  valid targets, as its trainer normalises it.
- its optimizer: torchtitan's ``OptimizersContainer`` with one AdamW group (fused on CUDA,
  foreach elsewhere; betas 0.9 / 0.95, no weight decay, the HF peers' settings), and its
  ``clip_grad_norm_`` at 1.0 (``training.max_norm``).
- the step as its ``Trainer.train_step`` runs it: gradients zeroed, forward, chunked loss and
  backward, clip, optimizer step; with ``cuda_graphs`` (its default, ``training.
  disable_cuda_graphs = False``) the forward + backward runs under its
  ``torchtitan.distributed.cudagraph.wrap_with_cuda_graph`` (one warm-up call, then captured and
  replayed; gradients zeroed in place, not freed, as its trainer does then).

Those are torchtitan's best settings for this shape on one GPU: its defaults plus per-block
compile, which its larger recipes turn on for speed. The task is wmtp's: the peers' random rows
with the prompt masked (:func:`wmtp.bench.hf_peer.synthetic_batch`), the labels shifted by one as
torchtitan's data loaders shift them, so that the same ``micro_batch x seq`` tokens are read and
the same next-token targets trained as by the Hugging Face peers. The FLOP count and MFU formula
are every side's (:func:`wmtp.bench.hf_peer.flops_per_token`).

torch.distributed must be initialised for FSDP2: a one-rank group (nccl on CUDA, gloo on the
CPU) over an in-process store, made by :class:`TitanRuntime` if none exists and destroyed by its
``close`` (an existing group, a ``torchrun`` launch's, is reused and left alone). Importing
torchtitan changes process-wide settings (its compile module patches ``FakeTensorMode``;
``apply_compile`` sets dynamo's ``capture_scalar_outputs``), so ``wmtp bench peers`` runs the
torchtitan sides after every other side.
"""

from __future__ import annotations

import dataclasses
import importlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

from wmtp.bench import hf_peer
from wmtp.bench.sweep import Row, installed_version, measured_row
from wmtp.bench.timing import device_peak_tflops, peak_allocated_gib, reset_peak_memory, time_call
from wmtp.data.examples import IGNORE_INDEX
from wmtp.models.args import ModelArgs

PACKAGE = "torchtitan"
ATTENTION = "flex"
"""torchtitan's default attention backend for Llama3 (``model_registry``)."""
LOSS_CHUNKS = 8
"""``ChunkedLossWrapper.Config.num_chunks``'s default."""


@dataclass(frozen=True)
class TitanConfig:
    """How the torchtitan peer trains (see the module doc)."""

    name: str
    compile: bool = True
    """torchtitan's per-block ``torch.compile`` (``apply_compile``) and its compiled loss."""
    cuda_graphs: bool = True
    """The forward + backward under torchtitan's CUDA graph wrapper (its trainer's default)."""
    attention: str = ATTENTION
    """``flex`` (torchtitan's default), or ``sdpa``: its ``ScaledDotProductAttention`` (causal),
    which stands in on the CPU, where FlexAttention has no backward."""


def version() -> str | None:
    """The installed torchtitan's version (``None``: not installed)."""
    return installed_version(PACKAGE)


def unavailable(config: TitanConfig, args: ModelArgs, device: torch.device) -> str | None:
    """Why this torchtitan peer cannot run here (``None`` when it can): the reason its one row
    records, the exception's type and message where torchtitan cannot be imported or cannot build
    the model's config at ``args``."""
    if config.compile and device.type != "cuda":
        return "torch.compile peers are measured on CUDA only (the CPU runs are tests)"
    if config.cuda_graphs and device.type != "cuda":
        return "torchtitan's CUDA graphs are measured on CUDA only (the CPU runs are tests)"
    if config.attention == "flex" and device.type != "cuda":
        return "FlexAttention has no backward on the CPU: attention sdpa stands in there"
    if args.rope_scaling is not None:
        return (
            f"torchtitan's peer is built without RoPE scaling; this shape has {args.rope_scaling}"
        )
    try:
        model_config(args, seq_len=args.max_seq_len, attention=config.attention)
        for module in ("components.loss", "distributed.cudagraph", "models.llama3.parallelize"):
            importlib.import_module(f"torchtitan.{module}")
    except Exception as exc:  # not installed, an install that cannot load here, a refused shape
        return (
            f"torchtitan {version() or '(not installed)'} cannot run: {type(exc).__name__}: {exc}"
        )
    return None


def model_config(args: ModelArgs, *, seq_len: int, attention: str = ATTENTION) -> Any:
    """torchtitan's ``Llama3Model.Config`` of exactly ``args``' shape (one head, untied)."""
    from torchtitan.models.common import ComplexRoPE, Embedding, Linear, RMSNorm
    from torchtitan.models.common.attention import ScaledDotProductAttention
    from torchtitan.models.llama3 import (
        _EMBEDDING_INIT,
        _NORM_INIT,
        _build_llama3_layers,
        _output_linear_init,
    )
    from torchtitan.models.llama3.model import Llama3Model

    assert args.n_future_tokens == 1, f"torchtitan's Llama has one head, not {args}"
    dim, vocab = args.dim, args.vocab_size
    layers = _build_llama3_layers(
        n_layers=args.n_layers,
        dim=dim,
        n_heads=args.n_heads,
        n_kv_heads=args.kv_heads,
        hidden_dim=args.hidden_dim,
        rope=ComplexRoPE.Config(
            dim=args.head_dim, max_seq_len=seq_len, theta=args.rope_theta, scaling="none"
        ),
        fuse_qkv=True,
        attn_backend=ATTENTION,
    )
    for layer in layers:  # the builder leaves RMSNorm's eps at its default
        layer.attention_norm = dataclasses.replace(layer.attention_norm, eps=args.norm_eps)
        layer.ffn_norm = dataclasses.replace(layer.ffn_norm, eps=args.norm_eps)
        if attention == "sdpa":  # its builder refuses sdpa for language models (packed rows)
            inner = ScaledDotProductAttention.Config()
            layer.attention = dataclasses.replace(layer.attention, inner_attention=inner)
    return Llama3Model.Config(
        dim=dim,
        vocab_size=vocab,
        enable_weight_tying=False,
        tok_embeddings=Embedding.Config(
            num_embeddings=vocab, embedding_dim=dim, param_init=_EMBEDDING_INIT
        ),
        norm=RMSNorm.Config(normalized_shape=dim, eps=args.norm_eps, param_init=_NORM_INIT),
        lm_head=Linear.Config(
            in_features=dim, out_features=vocab, param_init=_output_linear_init(dim)
        ),
        layers=layers,
    )


class TitanRuntime:
    """A one-rank process group for FSDP2, made here unless one exists; ``close`` destroys the
    group it made and drops torchtitan's CUDA graphs and compiled blocks."""

    def __init__(self, device: torch.device):
        self.made_group = False
        if not dist.is_initialized():
            backend = "nccl" if device.type == "cuda" else "gloo"
            if device.type == "cuda":
                torch.cuda.set_device(device)
            dist.init_process_group(backend, store=dist.HashStore(), rank=0, world_size=1)
            self.made_group = True

    def close(self) -> None:
        if torch.cuda.is_available() and torch.cuda.is_initialized():
            from torchtitan.distributed.cudagraph import cudagraph_teardown

            cudagraph_teardown()
        torch._dynamo.reset()
        if self.made_group and dist.is_initialized():
            dist.destroy_process_group()
        self.made_group = False


@dataclass
class TitanPeer:
    """A built torchtitan peer: its (FSDP2-wrapped) model, optimizers, loss and step."""

    config: TitanConfig
    model: torch.nn.Module
    optimizer: Any
    loss_fn: Any
    make_step: Callable[[], Callable[[torch.Tensor, torch.Tensor], int]]
    """A new step function, for one batch shape: one optimizer step on ``[batch, seq]`` token
    ids and their unshifted labels (the peers' labels: ``-100`` where no target); returns the
    tokens read. With CUDA graphs, each call drops the graphs captured before."""
    losses: list[torch.Tensor]
    """Each step's loss (mean over its targets), detached, as the step returned it."""
    runtime: TitanRuntime | None = None
    """The process group a ``wmtp bench peers`` side made for it (:func:`build_side`)."""


def titan_labels(labels_BS: torch.Tensor) -> torch.Tensor:
    """The peers' labels (position t's own token; Hugging Face shifts them) as torchtitan's data
    loaders give them: position t's target is token t + 1, the last position has none."""
    shifted_BS = torch.full_like(labels_BS, IGNORE_INDEX)
    shifted_BS[:, :-1] = labels_BS[:, 1:]
    return shifted_BS


def build_titan(
    args: ModelArgs, config: TitanConfig, seq_len: int, device: torch.device
) -> TitanPeer:
    """torchtitan's model, parallelisation, loss, optimizer and step (see the module doc);
    torch.distributed must be initialised (:class:`TitanRuntime`)."""
    from torchtitan.components.loss import ChunkedLossWrapper, CrossEntropyLoss
    from torchtitan.components.optimizer import default_adamw
    from torchtitan.config import CompileConfig, ParallelismConfig, TrainingConfig
    from torchtitan.distributed import ParallelDims
    from torchtitan.distributed import utils as dist_utils
    from torchtitan.models.llama3.parallelize import parallelize_llama

    parallelism = ParallelismConfig()
    training = TrainingConfig(
        local_batch_size=1,
        seq_len=seq_len,
        max_norm=hf_peer.GRAD_CLIP,
        disable_cuda_graphs=not config.cuda_graphs,
    )
    compile_config = CompileConfig(enable=config.compile)
    parallel_dims = ParallelDims.from_config(parallelism, dist.get_world_size())
    _build_mesh(parallel_dims, device)
    dist_utils.set_spmd_backend(parallelism.spmd_backend)

    with torch.device("meta"):
        model = model_config(args, seq_len=seq_len, attention=config.attention).build()
    model = parallelize_llama(
        model,
        parallel_dims=parallel_dims,
        training=training,
        parallelism=parallelism,
        compile_config=compile_config,
        ac_config=None,
        dump_folder="",
    )
    model.to_empty(device=device)
    with torch.no_grad():
        model.init_weights(buffer_device=None)
    model.train()

    loss_config = ChunkedLossWrapper.Config(
        num_chunks=LOSS_CHUNKS,
        loss_fn=CrossEntropyLoss.Config(global_vocab_size=args.vocab_size),
    )
    loss_fn = loss_config.build(compile_config=compile_config)
    loss_fn.set_lm_head(model.lm_head)
    model._skip_lm_head = True

    optimizer_config = default_adamw(lr=1e-5, weight_decay=0.0)
    optimizer_config.implementation = "fused" if device.type == "cuda" else "foreach"
    optimizer = optimizer_config.build(model_parts=[model])
    params = list(model.parameters())

    def forward_backward(inputs, labels, valid_tokens, extra):
        pred = model(inputs, **extra)
        loss, _ = loss_fn(pred, labels, valid_tokens, positions=extra["positions"])
        del pred
        loss.backward()
        return loss

    losses: list[torch.Tensor] = []

    def make_step() -> Callable[[torch.Tensor, torch.Tensor], int]:
        fwd_bwd = forward_backward
        if config.cuda_graphs:
            from torchtitan.distributed.cudagraph import cudagraph_teardown, wrap_with_cuda_graph

            cudagraph_teardown()  # a graph has one shape: the previous micro-batch's goes
            fwd_bwd = wrap_with_cuda_graph(forward_backward)

        def step(tokens_BS: torch.Tensor, labels_BS: torch.Tensor) -> int:
            optimizer.zero_grad(set_to_none=not config.cuda_graphs)
            targets_BS = titan_labels(labels_BS)
            valid_tokens = (targets_BS != IGNORE_INDEX).sum()
            positions_BS = torch.arange(tokens_BS.shape[1], device=tokens_BS.device)
            positions_BS = positions_BS.expand_as(tokens_BS)
            extra = {"positions": positions_BS}
            if config.attention == "flex":  # its causal, per-document block mask
                extra["attention_masks"] = model.get_attention_masks(positions_BS)
            loss = fwd_bwd(tokens_BS, targets_BS, valid_tokens, extra)
            losses.append(loss.detach().clone())  # a graph's output is overwritten by the next
            dist_utils.clip_grad_norm_(params, training.max_norm, foreach=True)
            optimizer.step()
            return tokens_BS.numel()

        return step

    return TitanPeer(config, model, optimizer, loss_fn, make_step, losses)


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
    """Time the peer's step on the peers' random ``[micro_batch, seq_len]`` rows; its row (the
    figures and memory measure of :func:`wmtp.bench.hf_peer.measure`). With CUDA graphs a new
    graph is captured at each micro-batch (a graph has one shape), the previous one dropped."""
    step = peer.make_step()
    tokens, labels = hf_peer.synthetic_batch(args.vocab_size, micro_batch, seq_len, device)
    counted: list[int] = []
    reset_peak_memory(device)
    timing = time_call(lambda: counted.append(step(tokens, labels)), warmup=warmup, repeats=repeats)
    return measured_row(
        peer.config.name,
        micro_batch,
        tokens_per_step=counted[-1],
        step=timing,
        flops_per_token=hf_peer.flops_per_token(args, seq_len, lora=False),
        peak_tflops=device_peak_tflops(device),
        peak_memory_gib=peak_allocated_gib(device),
        lora=False,
        gradient_checkpointing=False,
        compile=peer.config.compile,
        cuda_graphs=peer.config.cuda_graphs,
        attention=peer.config.attention,
        loss=f"ChunkedLossWrapper({LOSS_CHUNKS} chunks, CrossEntropyLoss)",
        mixed_precision="FSDP2 MixedPrecisionPolicy(param bf16, reduce fp32), fp32 master weights",
        torchtitan=version(),
        trainable_parameters=sum(p.numel() for p in peer.model.parameters()),
    )


def _build_mesh(parallel_dims: Any, device: torch.device) -> None:
    """``parallel_dims.build_mesh()`` on ``device``'s type: torchtitan takes its meshes' device
    type from what it found at import, ``cuda`` where it found no accelerator, so on the CPU
    (the tests) its mesh is made a CPU mesh for this call."""
    from torchtitan.distributed import parallel_dims as module

    found = module.device_type
    module.device_type = device.type
    try:
        parallel_dims.build_mesh()
    finally:
        module.device_type = found


def build_side(
    args: ModelArgs, config: TitanConfig, seq_len: int, device: torch.device
) -> TitanPeer:
    """:func:`build_titan` with its process group (:class:`TitanRuntime`), as ``wmtp bench
    peers`` builds a side; :func:`close_side` when the side is done."""
    runtime = TitanRuntime(device)
    try:
        peer = build_titan(args, config, seq_len, device)
    except BaseException:
        runtime.close()
        raise
    peer.runtime = runtime
    return peer


def close_side(peer: TitanPeer) -> None:
    """Drop the side's CUDA graphs and compiled blocks, and the process group it made."""
    if peer.runtime is not None:
        peer.runtime.close()
    peer.runtime = None
