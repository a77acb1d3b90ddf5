"""Registers the model area's components (torch loads only when a builder runs).

* ``model``: ``llama_mtp`` (the policy, the reference) and ``value_model`` (the critic). One
  builder per kind, used by every caller through ``wmtp.assembly.model``: the trainer for the model that trains and for the frozen
  ones, ``wmtp eval``, ``wmtp bench``. Each receives its ``[model.*]`` section and builds in this
  order:

  1. attention, resolved once for the device, dtype and use (``wmtp.models.attention.resolve``;
     ``trainable``: gradients flow through it) and handed to everything below;
  2. the base model: ``path`` (Meta, Hugging Face or wmtp format, read on the CPU, then moved), or
     fresh from the flavour and explicit sizes (initialised on the device). Over ``path``, sizes
     the recipe states must be the checkpoint's; so must RoPE and norm numerics it sets itself
     (``rope_theta``, ``rope_scaling``, ``norm_eps``: the weights were trained with them); an
     explicit ``max_seq_len`` (the context generation may fill) replaces the checkpoint's;
  3. (value model) its value head, from the registry's ``value_head`` builders, fresh unless
     ``path`` is a wmtp value checkpoint that holds one;
  4. LoRA adapters (``lora``);
  5. the weights trained by wmtp named by ``checkpoint`` (all of them, or the LoRA adapters),
     every key and shape checked first (``wmtp.models.locate`` finds them);
  6. the number of heads: the caller's (a pipeline that trains one head), else the section's
     ``n_future_tokens``, else the trained checkpoint's, else the flavour's or ``path``'s; heads
     beyond the loaded ones start as copies of head 1.

  Weights are stored in fp32 for a model that trains in full (the optimizer's master weights) and
  in the section's dtype otherwise (frozen models, a LoRA base).
* ``attention``: the entries of the backend table (``wmtp.models.backends``).
* ``value_head``: ``linear``, ``sigmoid``, ``mlp``; each builder takes its spec and the width.
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Any

from wmtp.errors import CheckpointError
from wmtp.models.backends import BACKENDS
from wmtp.models.descriptions import (
    check_numerics_agree,
    check_sizes_agree,
    described_args,
    frozen_heads_problem,
    heads_in,
    vocabulary_problem,
)
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

    from wmtp.models.attention import ResolvedAttention
    from wmtp.models.llama_mtp import LlamaMTP
    from wmtp.models.locate import TrainedWeights
    from wmtp.models.value import ValueModel


# Models -------------------------------------------------------------------------------------


@register("model", "llama_mtp", spec=LlamaMTPSpec)
def build_llama_mtp_model(
    spec: LlamaMTPSpec,
    *,
    vocab_size: int | None = None,
    device: Any = "cpu",
    trainable: bool = False,
    n_future_tokens: int | None = None,
) -> LlamaMTP:
    """LLaMA with n future-token heads, built in this order: attention, the base weights
    (``path``, or fresh from the sizes), LoRA adapters, the trained ``checkpoint``, then the heads
    (beyond the loaded ones, copies of head 1)."""
    import torch

    from wmtp.models.checkpoint import from_pretrained
    from wmtp.models.llama_mtp import LlamaMTP

    if not trainable and not n_future_tokens and (problem := frozen_heads_problem(spec)):
        raise CheckpointError(problem)
    attention = _attention(spec, device, trainable)
    dtype = _storage_dtype(spec, trainable)
    trained = _trained_weights(spec)
    trained_heads = heads_in(trained.file) if trained else None
    want = n_future_tokens or spec.n_future_tokens or trained_heads or _spec_heads(spec)
    heads = trained_heads or want
    if spec.path:
        model = from_pretrained(
            spec.path,
            format=spec.format,
            dtype=dtype,
            attention=attention,
            device=device,
            n_future_tokens=heads,
        )
        check_sizes_agree(spec, model.args, spec.path)
        check_numerics_agree(spec, model.args, spec.path)
        model.args = _stated_context(spec, model.args)
    else:
        args = _fresh_args(spec, vocab_size, heads)
        with torch.device(device):  # every rank draws the same weights (same seed and device)
            model = LlamaMTP(args, attention=attention)
        model = model.to(dtype)
    _check_vocabulary(model.args.vocab_size, vocab_size, spec)
    _adapters_and_trained(model, spec, trained)
    if want is not None:
        model.set_heads(want)
    return _mode(model, trainable)


@register("model", "value_model", spec=ValueModelSpec)
def build_value_model(
    spec: ValueModelSpec,
    *,
    vocab_size: int | None = None,
    device: Any = "cpu",
    trainable: bool = False,
    n_future_tokens: int | None = None,
) -> ValueModel:
    """The critic: a LLaMA backbone and a value head, built in this order: attention, the
    backbone (``path`` in any format, or fresh from the sizes), the value head (fresh unless
    ``path`` holds one), LoRA adapters, the trained ``checkpoint`` (``n_future_tokens`` does not
    apply: one value per token)."""
    import torch

    from wmtp.models.value import ValueModel

    attention = _attention(spec, device, trainable)
    dtype = _storage_dtype(spec, trainable)
    if spec.path:
        model = ValueModel.from_pretrained(
            spec.path,
            head=spec.head,
            format=spec.format,
            dtype=dtype,
            attention=attention,
            device=device,
        )
        check_sizes_agree(spec, model.args, spec.path)
        check_numerics_agree(spec, model.args, spec.path)  # a critic generates nothing: no context
    else:
        with torch.device(device):
            model = ValueModel(_fresh_args(spec, vocab_size), head=spec.head, attention=attention)
        model = model.to(dtype)
    _check_vocabulary(model.args.vocab_size, vocab_size, spec)
    _adapters_and_trained(model, spec, _trained_weights(spec))
    return _mode(model, trainable)


def _mode(model, trainable: bool):
    """Train mode, or eval mode with no parameter asking for gradients (a frozen model)."""
    if not trainable:
        model.requires_grad_(False)
    return model.train(trainable)


def _attention(spec, device, trainable: bool) -> ResolvedAttention:
    from wmtp.models.attention import resolve

    return resolve(spec.attention, device, spec.dtype, training=trainable)


def _storage_dtype(spec, trainable: bool):
    """fp32 masters for a model that trains in full; the section's dtype otherwise."""
    from wmtp.models.llama_mtp import resolve_dtype

    return resolve_dtype("float32" if trainable and spec.lora is None else spec.dtype)


def _spec_heads(spec) -> int | None:
    return spec.resolved_sizes().get("n_future_tokens")


def _fresh_args(spec, vocab_size: int | None, heads: int | None = None):

    from wmtp.errors import ComponentError

    args = spec.model_args(vocab_size)
    if args.vocab_size == -1:
        raise ComponentError(
            "vocab_size = -1 means 'from the tokenizer': build the model with the tokenizer's "
            "vocab_size (builder argument vocab_size=...)"
        )
    return dataclasses.replace(args, n_future_tokens=heads) if heads else args


def _trained_weights(spec) -> TrainedWeights | None:
    if not spec.checkpoint:
        return None
    from wmtp.models.locate import find_trained_weights

    return find_trained_weights(spec.checkpoint)


def _check_vocabulary(model_vocab: int, tokenizer_vocab: int | None, spec) -> None:
    """The model's embedding rows against the tokenizer's ids (``vocabulary_problem``: exact
    where the pretrained sizes say "the tokenizer's", as Meta's ``vocab_size = -1`` does)."""
    if tokenizer_vocab is None:
        return
    exact = bool(spec.path) and described_args(spec.path, spec.format).vocab_size == -1
    problem = vocabulary_problem(model_vocab, tokenizer_vocab, exact)
    if problem is not None:
        raise CheckpointError(f"{spec.path or spec.flavour or 'the recipe sizes'}: {problem}")


def _stated_context(spec, args):
    """``args`` with the recipe's own ``max_seq_len`` (the context ``wmtp eval`` and decoding
    may fill; RoPE is computed per position, so no weight depends on it)."""
    if "max_seq_len" not in spec.model_fields_set or spec.max_seq_len == args.max_seq_len:
        return args
    return dataclasses.replace(args, max_seq_len=spec.max_seq_len)


def _adapters_and_trained(model, spec, trained: TrainedWeights | None) -> None:
    """Steps 4 and 5: LoRA adapters, then the weights wmtp trained."""
    if spec.lora is not None:
        from wmtp.models.lora import apply_lora

        lora = spec.lora
        apply_lora(
            model,
            rank=lora.rank,
            alpha=lora.alpha,
            dropout=lora.dropout,
            targets=lora.targets,
            also_train=("head.",) if spec.kind == "value_model" else (),  # a critic's head trains
        )
    if trained is not None:
        from wmtp.models.checkpoint import load_base_from_state, load_trained

        if trained.kind == "lora" and not spec.path:  # over a random initialisation
            load_base_from_state(model, trained)
        load_trained(model, trained)


# Attention ----------------------------------------------------------------------------------

for _backend in BACKENDS.values():
    register("attention", _backend.name)(_backend)


# Value heads --------------------------------------------------------------------------------


@register("value_head", "linear", spec=LinearHeadSpec)
def linear_head(spec: LinearHeadSpec, dim: int) -> nn.Module:
    """One linear layer from the final hidden state to a value."""
    from wmtp.models.value import LinearValueHead

    return LinearValueHead(dim)


@register("value_head", "sigmoid", spec=SigmoidHeadSpec)
def sigmoid_head(spec: SigmoidHeadSpec, dim: int) -> nn.Module:
    """A linear score squashed to (0, 1); losses use the pre-sigmoid score."""
    from wmtp.models.value import SigmoidValueHead

    return SigmoidValueHead(dim)


@register("value_head", "mlp", spec=MLPHeadSpec)
def mlp_head(spec: MLPHeadSpec, dim: int) -> nn.Module:
    """A small MLP from the final hidden state to a value."""
    from wmtp.models.value import MLPValueHead

    return MLPValueHead(
        dim, spec.hidden_widths(dim), activation=spec.activation, dropout=spec.dropout
    )
