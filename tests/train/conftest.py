"""Training tests run from the repository root: recipes name the HumanEval cache relative to it."""

from __future__ import annotations

import pytest

from tests.train.train_helpers import REPO
from tests.unprivileged import other_user  # noqa: F401 (a fixture of the tests here)


@pytest.fixture(autouse=True)
def _in_repo(monkeypatch):
    monkeypatch.chdir(REPO)
