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


@pytest.mark.parametrize(
    ("device_name", "tflops", "tb_per_s"),
    [
        ("NVIDIA H200", 989.0, 4.8),
        ("NVIDIA H100 80GB HBM3", 989.0, 3.35),
        ("NVIDIA H100 PCIe", 756.0, 2.0),
        ("NVIDIA A100-SXM4-80GB", 312.0, 2.0),
        ("Some Future GPU", None, None),
    ],
)
def test_datasheet_figures_are_found_by_the_device_name(device_name, tflops, tb_per_s):
    from wmtp.models.args import HBM_TB_PER_S, bf16_peak_tflops, datasheet

    peak, bandwidth = bf16_peak_tflops(device_name), datasheet(HBM_TB_PER_S, device_name)
    assert (peak[0] if peak else None) == tflops
    assert (bandwidth[0] if bandwidth else None) == tb_per_s
