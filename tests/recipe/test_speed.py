"""The recipe commands stay light: no torch import (timing is measured, not asserted)."""

from __future__ import annotations

import os
import subprocess
import sys

from .conftest import REPO

PROBE = """
import sys
from wmtp.cli import app
try:
    app(sys.argv[1:])
except SystemExit as exit:
    code = exit.code
heavy = sorted(m for m in ("torch", "numpy", "transformers", "safetensors") if m in sys.modules)
print("HEAVY", heavy, "EXIT", code)
"""


def run_probe(*args: str) -> str:
    result = subprocess.run(
        [sys.executable, "-c", PROBE, *args], cwd=REPO, capture_output=True, text=True, check=False
    )
    return result.stdout.strip().splitlines()[-1]


def test_validate_diff_show_schema_never_import_torch():
    assert run_probe("validate") == "HEAVY [] EXIT 0"
    assert (
        run_probe("diff", "recipes/baseline.toml", "recipes/verifiable.toml") == "HEAVY [] EXIT 1"
    )
    assert run_probe("show", "--explain", "recipes/tiny.toml") == "HEAVY [] EXIT 0"
    assert run_probe("schema", "--check") == "HEAVY [] EXIT 0"


def test_importtime_shows_no_torch():
    result = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "wmtp.cli", "validate", "recipes/tiny.toml"],
        cwd=REPO,
        env={**os.environ, "WMTP_NO_CACHE": "1"},  # a cached report would skip the schema
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    imported = {line.split("|")[-1].strip() for line in result.stderr.splitlines() if "|" in line}
    assert "wmtp.recipe.schema" in imported
    assert not {m for m in imported if m == "torch" or m.startswith("torch.")}
