"""Helpers for recipe tests: real TOML files written into a temporary directory."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
RECIPES = REPO / "recipes"

MINIMAL = """\
[experiment]
name = "t"
pipeline = "baseline"

[tokenizer]
kind = "byte"

[model.policy]
flavour = "tiny"
dtype = "float32"
n_future_tokens = 2

[training]
max_steps = 10

[data]
kind = "humaneval"
max_length = 256
"""
"""A small valid recipe (line numbers matter to the tests that extend it)."""


@pytest.fixture
def write(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """Write ``text`` (dedented) to ``tmp_path/name`` and return its path; cwd is ``tmp_path``."""
    monkeypatch.chdir(tmp_path)

    def _write(name: str, text: str) -> Path:
        path = tmp_path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text), encoding="utf-8")
        return path

    return _write
