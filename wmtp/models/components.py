"""Registers the model area's components (torch loads only when a builder runs).

* ``model``: ``llama_mtp`` (the policy / reference) and ``value_model`` (the critic); each builder
  receives its ``[model.*]`` section.
* ``attention``: ``eager``, ``sdpa``, ``flash_attn``, ``flex``, ``varlen``, each
  ``attend(q_BSHD, k_BSKD, v_BSKD, seq) -> out_BSHD`` (``auto`` is resolved, not registered).
* ``value_head``: ``linear``, ``sigmoid``, ``mlp``; each builder takes its spec and the width.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

from wmtp.errors import CheckpointError
from wmtp.recipe.specs.models import (
    LinearHeadSpec,
    LlamaMTPSpec,
    MLPHeadSpec,
    SigmoidHeadSpec,
    ValueModelSpec,
)
from wmtp.registry import register

if TYPE_CHECKING:
    from torch import nn

    from wmtp.models.llama_mtp import LlamaMTP
    from wmtp.models.value import ValueModel


# Models -------------------------------------------------------------------------------------


@register("model", "llama_mtp", spec=LlamaMTPSpec)
def build_llama_mtp_model(
    spec: LlamaMTPSpec, *, vocab_size: int | None = None, device: Any = "cpu"
) -> LlamaMTP:
    """LLaMA with n future-token heads: pretrained ``path`` or fresh sizes, then LoRA, then the
    wmtp ``checkpoint``. ``vocab_size`` fills in ``-1`` (from the tokenizer) for fresh models."""
    from wmtp.models.checkpoint import from_pretrained
    from wmtp.models.llama_mtp import build_llama_mtp

    if spec.path:
        model = from_pretrained(
            spec.path,
            format=spec.format,
            dtype=spec.dtype,
            attention=spec.attention,
            device=device,
            n_future_tokens=spec.n_future_tokens,
        )
        _check_sizes_agree(spec, model.args, spec.path)
    else:
        args = _with_vocab(spec.model_args(vocab_size))
        model = build_llama_mtp(args, attention=spec.attention, dtype=spec.dtype, device=device)
    return _adapters_and_checkpoint(model, spec)


@register("model", "value_model", spec=ValueModelSpec)
def build_value_model(
    spec: ValueModelSpec, *, vocab_size: int | None = None, device: Any = "cpu"
) -> ValueModel:
    """The critic: a LLaMA backbone (from ``path`` in any format, or fresh) and a value head."""
    import torch

    from wmtp.models.attention import resolve_backend
    from wmtp.models.llama_mtp import resolve_dtype
    from wmtp.models.value import ValueModel

    if spec.path:
        model = ValueModel.from_pretrained(
            spec.path,
            head=spec.head,
            format=spec.format,
            dtype=spec.dtype,
            attention=spec.attention,
            device=device,
        )
        _check_sizes_agree(spec, model.args, spec.path)
    else:
        dtype = resolve_dtype(spec.dtype)
        backend, _ = resolve_backend(spec.attention, device, dtype)
        with torch.device(device):
            model = ValueModel(
                _with_vocab(spec.model_args(vocab_size)), head=spec.head, attention=backend
            )
        model = model.to(dtype)
    return _adapters_and_checkpoint(model, spec)


def _with_vocab(args):
    if args.vocab_size == -1:
        from wmtp.errors import ComponentError

        raise ComponentError(
            "vocab_size = -1 means 'from the tokenizer': build the model with the tokenizer's "
            "vocab_size (builder argument vocab_size=...)"
        )
    return args


def _check_sizes_agree(spec, args, path) -> None:
    """Sizes the recipe states (its flavour's, or explicit ones) must match the checkpoint's.

    Widths are compared as derived sizes (FFN width, key/value heads), so equivalent spellings
    agree; ``n_layers`` only when the recipe sets it, since heads may be added or dropped.
    """
    import dataclasses

    stated = spec.resolved_sizes()
    if not {"dim", "n_heads"} <= stated.keys():
        return
    stated_args = dataclasses.replace(
        args,
        **{
            k: v
            for k, v in stated.items()
            if k in ("dim", "n_heads", "n_kv_heads", "multiple_of", "ffn_dim_multiplier", "ffn_dim")
        },
    )
    checks = {
        "dim": (stated_args.dim, args.dim),
        "n_heads": (stated_args.n_heads, args.n_heads),
        "n_kv_heads": (stated_args.kv_heads, args.kv_heads),
        "ffn width": (stated_args.hidden_dim, args.hidden_dim),
        "vocab_size": (stated.get("vocab_size", -1), args.vocab_size),
    }
    if "n_layers" in spec.model_fields_set:
        checks["n_layers"] = (spec.n_layers, args.n_layers)
    for name, (want, have) in checks.items():
        if not (name == "vocab_size" and want == -1) and want != have:
            raise CheckpointError(
                f"checkpoint {path}: {name} = {have!r}, but the recipe says {want!r}"
            )


def _adapters_and_checkpoint(model, spec):
    if spec.lora is not None:
        from wmtp.models.lora import apply_lora

        lora = spec.lora
        apply_lora(
            model,
            rank=lora.rank,
            alpha=lora.alpha,
            dropout=lora.dropout,
            targets=lora.targets,
            also_train=("head.",)
            if hasattr(model, "head_config")
            else (),  # a critic's head trains
        )
    if spec.checkpoint:
        from wmtp.models.checkpoint import load_checked, read_checkpoint

        directory = resolve_wmtp_checkpoint(spec.checkpoint)
        param = next(model.parameters())
        ckpt = read_checkpoint(directory, "safetensors", param.dtype)
        sd = {k: v.to(param.device) for k, v in ckpt.state_dict.items()}
        load_checked(model, sd, str(directory))
    return model


def resolve_wmtp_checkpoint(path: str | Path) -> Path:
    """A directory with wmtp weights from: itself, ``<run>`` (its newest ``checkpoints/step-N``),
    or ``runs/<experiment>/latest`` (the newest run of the experiment, by name)."""
    from wmtp.models.checkpoint import ARGS_FILE

    path = Path(path)
    if path.name == "latest" and not path.exists() and path.parent.is_dir():
        runs = sorted(p for p in path.parent.iterdir() if p.is_dir())
        if not runs:
            raise CheckpointError(f"checkpoint {path}: {path.parent} holds no runs")
        path = runs[-1]
    if (path / ARGS_FILE).is_file():
        return path
    steps = sorted(
        (int(m.group(1)), p)
        for p in (path / "checkpoints").glob("step-*")
        if (m := re.fullmatch(r"step-(\d+)", p.name)) and (p / ARGS_FILE).is_file()
    )
    if not steps:
        raise CheckpointError(
            f"checkpoint {path}: neither {ARGS_FILE} nor checkpoints/step-N/{ARGS_FILE} found"
        )
    return steps[-1][1]


# Attention ----------------------------------------------------------------------------------


@register("attention", "eager")
def eager(q_BSHD, k_BSKD, v_BSKD, seq=None):
    """Materialised scores, fp32 softmax, explicit masks: the reference."""
    from wmtp.models.attention import eager_attend

    return eager_attend(q_BSHD, k_BSKD, v_BSKD, seq)


@register("attention", "sdpa")
def sdpa(q_BSHD, k_BSKD, v_BSKD, seq=None):
    """torch SDPA with is_causal=True and enable_gqa=True; packed batches per document."""
    from wmtp.models.attention import sdpa_attend

    return sdpa_attend(q_BSHD, k_BSKD, v_BSKD, seq)


@register("attention", "flash_attn")
def flash_attn(q_BSHD, k_BSKD, v_BSKD, seq=None):
    """flash-attn (optional install): flash_attn_func, varlen for packed batches."""
    from wmtp.models.attention import flash_attn_attend

    return flash_attn_attend(q_BSHD, k_BSKD, v_BSKD, seq)


@register("attention", "flex")
def flex(q_BSHD, k_BSKD, v_BSKD, seq=None):
    """FlexAttention with causal and document block masks (compiled on CUDA)."""
    from wmtp.models.attention import flex_attend

    return flex_attend(q_BSHD, k_BSKD, v_BSKD, seq)


@register("attention", "varlen")
def varlen(q_BSHD, k_BSKD, v_BSKD, seq=None):
    """torch.nn.attention.varlen.varlen_attn over rows or documents (CUDA)."""
    from wmtp.models.attention import varlen_attend

    return varlen_attend(q_BSHD, k_BSKD, v_BSKD, seq)


# Value heads --------------------------------------------------------------------------------


@register("value_head", "linear", spec=LinearHeadSpec)
def linear_head(spec: LinearHeadSpec, dim: int) -> nn.Module:
    """One linear layer from the final hidden state to a value."""
    from wmtp.models.value import build_value_head

    return build_value_head(spec, dim)


@register("value_head", "sigmoid", spec=SigmoidHeadSpec)
def sigmoid_head(spec: SigmoidHeadSpec, dim: int) -> nn.Module:
    """A linear score squashed to (0, 1); losses use the pre-sigmoid score."""
    from wmtp.models.value import build_value_head

    return build_value_head(spec, dim)


@register("value_head", "mlp", spec=MLPHeadSpec)
def mlp_head(spec: MLPHeadSpec, dim: int) -> nn.Module:
    """A small MLP from the final hidden state to a value."""
    from wmtp.models.value import build_value_head

    return build_value_head(spec, dim)
