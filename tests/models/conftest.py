"""Shared fixtures of the model tests: tiny sizes, deterministic seeds."""

from __future__ import annotations

import pytest
import torch

from wmtp.models.args import ModelArgs


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture
def tiny_args() -> ModelArgs:
    """4 layers (2 trunk + 2 heads), GQA 4:2, head_dim 8."""
    return ModelArgs(
        dim=32,
        n_layers=4,
        n_heads=4,
        n_kv_heads=2,
        vocab_size=61,
        multiple_of=16,
        max_seq_len=64,
        n_future_tokens=2,
    )
