"""Model FLOPs per token (MFU's numerator) against a count of the built model's parameters."""

from __future__ import annotations

import dataclasses

import pytest

from wmtp.models.args import FLAVOURS, training_flops_per_token
from wmtp.models.llama_mtp import LlamaMTP
from wmtp.models.value import ValueModel

ARGS = dataclasses.replace(FLAVOURS["small"], vocab_size=1000, n_future_tokens=3)
SEQ = 128


def matmul_params(model) -> int:
    """Parameters of every matrix a token is multiplied by (not the embedding table, not norms)."""
    return sum(
        p.numel() for n, p in model.named_parameters() if p.ndim == 2 and "tok_embeddings" not in n
    )


def attention(args) -> int:
    return 2 * args.n_layers * SEQ * args.dim


def test_full_training_lora_and_forward_only_count_the_model_matrices():
    # One unembedding matrix, run by every head.
    n = matmul_params(LlamaMTP(ARGS, attention="eager")) + 2 * ARGS.vocab_size * ARGS.dim
    assert training_flops_per_token(ARGS, SEQ) == 6 * n + 3 * attention(ARGS)
    assert training_flops_per_token(ARGS, SEQ, weight_grads=False) == 4 * n + 3 * attention(ARGS)
    assert training_flops_per_token(ARGS, SEQ, backward=False) == 2 * n + attention(ARGS)


def test_a_value_model_has_no_unembedding():
    critic = ValueModel(ARGS, head="linear", attention="eager")
    n = matmul_params(critic) - matmul_params(critic.head)
    got = training_flops_per_token(critic.args, SEQ, backward=False, unembedding=False)
    assert got == pytest.approx(2 * n + attention(critic.args))
