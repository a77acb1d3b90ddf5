"""Shared set-up of the eval tests."""

from __future__ import annotations

import pytest


@pytest.fixture(autouse=True)
def one_torch_thread():
    """Tiny models decode token by token: one thread beats two fighting over a busy CPU."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(autouse=True)
def _in_repo(monkeypatch):
    """Recipes name the HumanEval cache relative to the repository root."""
    from tests.train.train_helpers import REPO

    monkeypatch.chdir(REPO)
