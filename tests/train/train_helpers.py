"""Helpers of the training tests: the tiny recipe, cheap overrides, losses of a run."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
TINY = REPO / "recipes" / "tiny.toml"

FAST = (
    "training.micro_batch_size=2",
    "training.log_every=1",
    "training.eval_every=0",
)
"""Overrides that make the tiny recipe cheap for tests that compare a run with itself."""


def runs_override(tmp_path: Path) -> str:
    return f"experiment.runs_dir='{tmp_path / 'runs'}'"


def losses_of(run_dir: Path) -> list[tuple[int, float]]:
    from wmtp.train.metrics import read_metrics

    return [(m["step"], m["loss"]) for m in read_metrics(run_dir) if "loss" in m]


def cli(*args: object) -> tuple[int, str]:
    """``wmtp ARGS`` in a subprocess from the repository: its exit code and its output (stdout,
    then stderr) with line breaks undone, as a located message reads whatever the width."""
    done = subprocess.run(
        [sys.executable, "-m", "wmtp.cli", *map(str, args)],
        cwd=REPO, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    return done.returncode, " ".join((done.stdout + done.stderr).split())
