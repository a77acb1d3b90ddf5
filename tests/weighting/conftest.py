import pytest
import torch


@pytest.fixture
def gen() -> torch.Generator:
    """A seeded generator, so every random test input is the same on every run."""
    return torch.Generator().manual_seed(1234)
