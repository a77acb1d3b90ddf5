"""Build the trained model from its recipe section: fresh from sizes, or from a checkpoint.

Weights load in fp32 (the optimizer's master weights); the recipe's dtype is the compute dtype,
applied by ``wmtp.parallel`` (FSDP2 mixed precision, or autocast on one process).
"""

from __future__ import annotations

import dataclasses
import logging

import torch

from wmtp.errors import CheckpointError

log = logging.getLogger(__name__)


def build_policy(
    spec, tokenizer, device: torch.device, *, n_future_tokens: int | None = None
) -> torch.nn.Module:
    """A LlamaMTP for ``spec`` (a ``LlamaMTPSpec``), with LoRA applied when the spec asks."""
    from wmtp.models.attention import resolve_backend
    from wmtp.models.llama_mtp import LlamaMTP, resolve_dtype

    heads = n_future_tokens if n_future_tokens is not None else spec.n_future_tokens
    source = spec.checkpoint or spec.path
    backend, why = resolve_backend(spec.attention, device, resolve_dtype(spec.dtype))
    log.info("attention: %s (%s)", backend, why)
    if source:
        from wmtp.models.checkpoint import from_pretrained

        model = from_pretrained(
            source, dtype="float32", attention=backend, format=spec.format, n_future_tokens=heads
        )
        model.train()
    else:
        args = spec.model_args(vocab_size=tokenizer.vocab_size)
        if heads is not None:
            args = dataclasses.replace(args, n_future_tokens=heads)
        # Initialised on the run's device: a 7B model takes seconds on a GPU, minutes on one CPU
        # thread per rank. Every rank draws the same weights (same seed, same device type).
        with torch.device(device):
            model = LlamaMTP(args, attention=backend)
    if model.args.vocab_size < tokenizer.vocab_size:
        raise CheckpointError(
            f"the model's vocab_size {model.args.vocab_size} is smaller than the tokenizer's "
            f"{tokenizer.vocab_size}"
        )
    if spec.lora is not None:
        from wmtp.models.lora import apply_lora

        lora = spec.lora
        apply_lora(
            model, rank=lora.rank, alpha=lora.alpha, dropout=lora.dropout, targets=lora.targets
        )
    return model
