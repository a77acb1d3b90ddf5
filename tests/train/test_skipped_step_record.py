"""A step skipped for a NaN gradient (``training.max_bad_steps``) is in ``metrics.jsonl`` whatever
``training.log_every`` samples, as the README says ("logged as `skipped`"): through the CLI in a
subprocess on the tiny JSONL dataset of ``tests.eval.tiny_runs``."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from tests.eval.tiny_runs import policy, recipe
from tests.train.train_helpers import REPO
from wmtp.train.metrics import read_metrics

pytestmark = pytest.mark.slow


def test_a_skipped_step_between_logged_steps_is_in_the_metrics(tmp_path):
    sets = (
        "training.max_steps=6",
        "training.log_every=5",
        "training.eval_every=0",
        "training.max_bad_steps=1",
        f"experiment.runs_dir='{tmp_path / 'runs'}'",
    )
    done = subprocess.run(
        [sys.executable, "-m", "wmtp.cli", "run", str(recipe(tmp_path, "skip", "baseline", policy())),
         *(a for s in sets for a in ("--set", s))],
        cwd=REPO, capture_output=True, text=True, timeout=300,
        env={**os.environ, "OMP_NUM_THREADS": "1", "WMTP_FAULT": "rank=0,step=3,kind=nan"},
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    assert "step 3 skipped: the gradient norm is nan (in head 2)" in done.stderr
    (run,) = (tmp_path / "runs").glob("*/2*")
    records = read_metrics(run)
    assert {"step": 3, "skipped": 1.0, "bad_steps": 1.0} in records
    assert [r["step"] for r in records if "loss" in r] == [1, 5, 6]  # log_every samples the rest
