"""The golden loss curve: the tiny recipe's first 20 losses, committed, compared with a tolerance.

Regenerate (after a deliberate change of the numerics) with ``python -m tests.train.test_golden``.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from tests.train.train_helpers import REPO, TINY, losses_of

GOLDEN = REPO / "tests" / "golden" / "tiny_losses.json"
N_STEPS = 20


def first_losses(runs_dir: Path) -> list[float]:
    from wmtp.train.runner import run_recipe

    overrides = [f"experiment.runs_dir='{runs_dir}'", "training.log_every=1"]  # cosmetic only
    result = run_recipe(TINY, overrides, stop_at_step=N_STEPS, console=False)
    return [loss for _, loss in losses_of(result.run_dir)]


@pytest.mark.slow
def test_tiny_recipe_matches_the_golden_curve(tmp_path):
    golden = json.loads(GOLDEN.read_text())
    got = first_losses(tmp_path / "runs")
    assert len(got) == N_STEPS
    assert got == pytest.approx(golden["losses"], rel=2e-3, abs=2e-3)
    assert got[-1] < got[0] - 1.0  # and it learns


if __name__ == "__main__":
    import os
    import tempfile

    os.chdir(REPO)
    with tempfile.TemporaryDirectory() as tmp:
        losses = first_losses(Path(tmp))
    GOLDEN.write_text(
        json.dumps({"recipe": "recipes/tiny.toml", "steps": N_STEPS, "losses": losses}, indent=1)
        + "\n"
    )
    print(f"wrote {GOLDEN}", file=sys.stderr)
