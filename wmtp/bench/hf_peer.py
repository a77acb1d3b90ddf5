"""The peers: a Hugging Face transformers Llama of a given shape, trained the way its users do.

Full fine-tuning: ``LlamaForCausalLM`` (sdpa attention) with fp32 parameters under bf16
autocast. LoRA: the same model with frozen bf16 weights and PEFT adapters (``peft.LoraConfig``
with the recipe's rank, alpha, dropout and targets; fp32 adapters, as PEFT makes them) under bf16
autocast, with gradient checkpointing of every layer (non-reentrant) or none
(``PeerConfig.gradient_checkpointing``; ``wmtp.bench.peers`` measures both). Both: fused AdamW
over what trains, gradients clipped at 1.0 (Hugging Face Trainer's ``max_grad_norm``, the
recipes' ``grad_clip``), the loss from ``labels``: the targets wmtp's synthetic rows train (each
row's prompt masked, :func:`synthetic_batch`), so both sides train the same task. Speed-ups,
each its own peer: ``torch.compile`` of the whole model (as the Trainer's ``torch_compile``),
the batch dimension marked dynamic so that one compile serves every micro-batch; Liger kernels
(``liger_kernel.transformers.apply_liger_kernel_to_llama``: RoPE, RMSNorm, SwiGLU, fused
linear cross-entropy). transformers, peft and liger-kernel are dev/bench dependencies only.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from wmtp.bench.sweep import OUT_OF_MEMORY, Row, measured_row, sweep
from wmtp.bench.timing import (
    Timing,
    device_peak_tflops,
    peak_allocated_gib,
    reset_peak_memory,
    step_min_seconds,
    time_call,
)
from wmtp.models.args import ModelArgs, training_flops_per_token

HF_LORA_TARGETS = {
    "wq": "q_proj",
    "wk": "k_proj",
    "wv": "v_proj",
    "wo": "o_proj",
    "w1": "gate_proj",
    "w2": "down_proj",
    "w3": "up_proj",
}
"""wmtp's (Meta's) linear layer names -> transformers' Llama names."""
GRAD_CLIP = 1.0
_LIGER_APPLIED: list[bool] = []


@dataclass(frozen=True)
class PeerConfig:
    """How a peer trains."""

    name: str
    lora: Any = None
    """wmtp's ``LoraSpec`` (rank, alpha, dropout, targets); ``None``: full fine-tuning."""
    gradient_checkpointing: bool = False
    compile: bool = False
    liger: bool = False
    float8: bool = False
    """torchao's tensorwise float8 training on the decoder's linears (:func:`_to_float8`)."""
    attn_implementation: str = "sdpa"


@dataclass
class Peer:
    """A built peer: its model (a PEFT model under LoRA), optimizer and training step."""

    config: PeerConfig
    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    step: Callable[[torch.Tensor, torch.Tensor], int]
    """One optimizer step on ``[batch, seq]`` token ids and their labels (``-100``: not a
    target); returns the tokens read."""


def liger_unavailable(device: torch.device) -> str | None:
    """Why Liger kernels cannot run here; ``None`` when they can."""
    if device.type != "cuda":
        return "Liger kernels are Triton GPU kernels: measured on CUDA only"
    try:
        import liger_kernel.transformers  # noqa: F401
    except Exception as exc:  # not installed, or an install that cannot load here
        return f"liger-kernel cannot be imported ({type(exc).__name__}: {exc})"
    return None


def unavailable(config: PeerConfig, device: torch.device) -> str | None:
    """Why this peer cannot run here (``None`` when it can): the reason its one row records."""
    if config.liger:
        return liger_unavailable(device)
    if _LIGER_APPLIED:
        return "Liger kernels already patched transformers' Llama in this process: run it first"
    if config.compile and device.type != "cuda":
        return "torch.compile peers are measured on CUDA only (the CPU runs are tests)"
    if config.float8:
        from wmtp.parallel.float8 import why_not

        return why_not(device)
    return None


def apply_liger() -> None:
    """Patch transformers' Llama classes with Liger kernels, Liger's own documented way (before
    the model is built), for every model built later in this process: it cannot be undone, so
    the peers without Liger run first (:func:`unavailable` refuses them afterwards)."""
    from liger_kernel.transformers import apply_liger_kernel_to_llama

    apply_liger_kernel_to_llama(
        rope=True, rms_norm=True, swiglu=True, cross_entropy=False, fused_linear_cross_entropy=True
    )
    _LIGER_APPLIED.append(True)


@contextlib.contextmanager
def _default_dtype(dtype: torch.dtype) -> Iterator[None]:
    old = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        yield
    finally:
        torch.set_default_dtype(old)


def hf_llama(
    args: ModelArgs,
    attn_implementation: str = "sdpa",
    *,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str = "cpu",
) -> torch.nn.Module:
    """A randomly initialised ``LlamaForCausalLM`` with exactly ``args``' shape (one head),
    built in ``dtype`` on ``device``."""
    from transformers import LlamaConfig, LlamaForCausalLM

    assert args.n_future_tokens == 1, f"a Hugging Face Llama has one head, not {args}"
    config = LlamaConfig(
        vocab_size=args.vocab_size,
        hidden_size=args.dim,
        intermediate_size=args.hidden_dim,
        num_hidden_layers=args.n_layers,
        num_attention_heads=args.n_heads,
        num_key_value_heads=args.kv_heads,
        max_position_embeddings=args.max_seq_len,
        rms_norm_eps=args.norm_eps,
        rope_theta=args.rope_theta,
        tie_word_embeddings=False,
        attn_implementation=attn_implementation,
        use_cache=False,
    )
    with torch.device(device), _default_dtype(dtype):
        model = LlamaForCausalLM(config)
    return model.to(device)


def build_peer(args: ModelArgs, config: PeerConfig, device: torch.device) -> Peer:
    """The peer's model, optimizer and step (see the module doc)."""
    if config.liger and not _LIGER_APPLIED:
        apply_liger()
    dtype = torch.bfloat16 if config.lora is not None else torch.float32
    model = hf_llama(args, config.attn_implementation, dtype=dtype, device=device)
    if config.gradient_checkpointing:
        _checkpoint_activations(model)
    if config.lora is not None:
        model = _with_lora(model, config.lora)
    if config.float8:
        _to_float8(model, lora=config.lora is not None)
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    fused = device.type == "cuda"
    optimizer = torch.optim.AdamW(
        params, lr=1e-5, betas=(0.9, 0.95), weight_decay=0.0, fused=fused or None
    )
    forward = torch.compile(model) if config.compile else model

    def step(tokens: torch.Tensor, labels: torch.Tensor) -> int:
        with torch.autocast(device.type, dtype=torch.bfloat16):
            loss = forward(input_ids=tokens, labels=labels).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, GRAD_CLIP)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return tokens.numel()

    return Peer(config, model, optimizer, step)


def build_side(args: ModelArgs, config: PeerConfig, seq_len: int, device: torch.device) -> Peer:
    """:func:`build_peer` as ``wmtp bench peers`` builds a side (its rows' ``seq_len`` unused)."""
    return build_peer(args, config, device)


def _checkpoint_activations(model: torch.nn.Module) -> None:
    """Hugging Face's gradient checkpointing of every decoder layer, non-reentrant (the name of
    the call changed in transformers 5.x: the newer one where it exists)."""
    kwargs = {"use_reentrant": False}
    enable = getattr(model, "activation_checkpointing_enable", None)
    if enable is not None:
        enable(activation_checkpointing_kwargs=kwargs)
    else:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)


def _with_lora(model: torch.nn.Module, lora: Any) -> torch.nn.Module:
    """PEFT adapters on the recipe's targets; everything else frozen."""
    from peft import LoraConfig, get_peft_model

    peft_config = LoraConfig(
        r=lora.rank,
        lora_alpha=lora.alpha,
        lora_dropout=lora.dropout,
        target_modules=[HF_LORA_TARGETS[t] for t in lora.targets],
        bias="none",
        task_type="CAUSAL_LM",
    )
    return get_peft_model(model, peft_config)


def _to_float8(model: torch.nn.Module, *, lora: bool) -> None:
    """torchao's ``convert_to_float8_training`` (tensorwise), as Accelerate's torchao FP8 backend
    applies it: every decoder linear whose sizes suit float8 products, ``lm_head`` left in bf16;
    under LoRA only the frozen base linears (PEFT's ``base_layer``): rank-r adapters gain
    nothing from the casts (wmtp's ``parallel.float8`` makes the same choices)."""
    from torchao.float8 import Float8LinearConfig, convert_to_float8_training

    from wmtp.parallel.float8 import aligned

    def converts(module: torch.nn.Module, fqn: str) -> bool:
        if type(module) is not torch.nn.Linear or "lm_head" in fqn or not aligned(module):
            return False
        return fqn.endswith("base_layer") or not lora

    config = Float8LinearConfig.from_recipe_name("tensorwise")
    convert_to_float8_training(model, config=config, module_filter_fn=converts)


def flops_per_token(args: ModelArgs, seq_len: int, *, lora: bool) -> float:
    """The peer's model FLOPs per token: ``training_flops_per_token`` exactly as the trainer
    counts its own (no weight gradients for frozen weights; recomputation not counted)."""
    return training_flops_per_token(args, seq_len, weight_grads=not lora)


def measure(
    peer: Peer,
    args: ModelArgs,
    *,
    micro_batch: int,
    seq_len: int,
    warmup: int,
    repeats: int,
    device: torch.device,
) -> Row:
    """Time the peer's step (:func:`timed_row`); compiled, the batch dimension is marked
    dynamic, so a later micro-batch reuses the compiled graph."""
    return timed_row(
        peer.config.name,
        peer.step,
        args,
        micro_batch=micro_batch,
        seq_len=seq_len,
        warmup=warmup,
        repeats=repeats,
        device=device,
        lora=peer.config.lora is not None,
        dynamic_batch=peer.config.compile,
        gradient_checkpointing=peer.config.gradient_checkpointing,
        compile=peer.config.compile,
        liger=peer.config.liger,
        float8="tensorwise" if peer.config.float8 else False,
        attention=peer.config.attn_implementation,
        trainable_parameters=sum(p.numel() for p in peer.model.parameters() if p.requires_grad),
    )


def timed_row(
    name: str,
    step: Callable[[torch.Tensor, torch.Tensor], int],
    args: ModelArgs,
    *,
    micro_batch: int,
    seq_len: int,
    warmup: int,
    repeats: int,
    device: torch.device,
    lora: bool,
    dynamic_batch: bool = False,
    **config: Any,
) -> Row:
    """Time a peer's ``step`` (one optimizer step on ``tokens_BS, labels_BS``; returns the tokens
    read) on random ``[micro_batch, seq_len]`` rows (:func:`synthetic_batch`); its row, with
    every peer's figures (the one FLOP count, :func:`flops_per_token`) and ``config``. Peak
    memory is the absolute peak since this micro-batch began (the model and optimizer built
    before). ``dynamic_batch``: the rows' batch dimension marked dynamic for ``torch.compile``."""
    tokens, labels = synthetic_batch(args.vocab_size, micro_batch, seq_len, device)
    if dynamic_batch:
        for tensor in (tokens, labels):
            torch._dynamo.maybe_mark_dynamic(tensor, 0)
    counted: list[int] = []
    reset_peak_memory(device)
    timing = time_call(  # back to back, as wmtp's step is timed (wmtp.bench.step)
        lambda: counted.append(step(tokens, labels)), warmup=warmup, repeats=repeats, queued=True,
        min_seconds=step_min_seconds(device),
    )  # fmt: skip
    return measured_row(
        name,
        micro_batch,
        tokens_per_step=counted[-1],
        step=timing,
        flops_per_token=flops_per_token(args, seq_len, lora=lora),
        peak_tflops=device_peak_tflops(device),
        peak_memory_gib=peak_allocated_gib(device),
        lora=lora,
        **config,
    )


def synthetic_batch(
    vocab_size: int, rows: int, seq_len: int, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(tokens_BS, labels_BS)``: random tokens, and as labels the same tokens with each row's
    prompt masked as wmtp's synthetic rows mask it (one head's: the peers have one)."""
    from wmtp.bench.step import prompt_tokens
    from wmtp.data.examples import IGNORE_INDEX

    tokens_BS = torch.randint(0, vocab_size, (rows, seq_len), device=device)
    labels_BS = tokens_BS.clone()
    labels_BS[:, : prompt_tokens(seq_len, n_heads=1)] = IGNORE_INDEX
    return tokens_BS, labels_BS


@dataclass(frozen=True)
class PeerResult:
    name: str
    micro_batch: int
    tokens_per_s: float
    mfu: float | None
    """None (not measured) off CUDA, or on a GPU of unknown peak."""
    peak_tflops: float | None
    peak_memory_gib: float | None
    step: Timing

    @classmethod
    def of_row(cls, row: Row) -> PeerResult:
        keys = ("tokens_per_s", "mfu", "peak_tflops", "peak_memory_gib")
        return cls(row["side"], row["micro_batch"], *(row[k] for k in keys), Timing(**row["step"]))

    def to_dict(self) -> dict:
        return {
            "name": self.name,
            "micro_batch": self.micro_batch,
            "tokens_per_s": self.tokens_per_s,
            "mfu": self.mfu,
            "peak_tflops": self.peak_tflops,
            "peak_memory_gib": self.peak_memory_gib,
            "step": self.step.to_dict(),
        }


def bench_hf(
    args: ModelArgs,
    *,
    batches: Sequence[int],
    seq_len: int,
    compile: bool,
    attn_implementation: str = "sdpa",
    warmup: int = 5,
    repeats: int = 20,
) -> list[PeerResult]:
    """Tokens/s, MFU and peak memory of one full fine-tuning peer (CUDA), built once, at each
    micro-batch of ``batches``, smallest first, up to the first that runs out of memory
    (:func:`wmtp.bench.sweep.sweep`); the measured ones. Any other failure is raised."""
    device = torch.device("cuda")
    name = f"hf-{attn_implementation}{'+compile' if compile else ''}"
    config = PeerConfig(name, compile=compile, attn_implementation=attn_implementation)
    peer = build_peer(args, config, device)

    def at(micro_batch: int) -> Row:
        return measure(
            peer,
            args,
            micro_batch=micro_batch,
            seq_len=seq_len,
            warmup=warmup,
            repeats=repeats,
            device=device,
        )

    rows = sweep(name, at, batches)
    failed = [r for r in rows if r["error"] and not r["error"].startswith(OUT_OF_MEMORY)]
    if failed:
        raise RuntimeError(
            f"{name} at micro-batch {failed[0]['micro_batch']}: {failed[0]['error']}"
        )
    return [PeerResult.of_row(row) for row in rows if row["error"] is None]
