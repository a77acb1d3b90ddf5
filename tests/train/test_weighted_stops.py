"""A weighted pipeline stopped by a real SIGTERM and resumed gives the uninterrupted run's records
exactly: the critic, the verifiable pipeline (TD weights whitened by an EMA, which the checkpoint
must carry) and Rho-1 (its frozen reference); ref_tuning's plain step is the baseline's, whose
stop and resume ``tests/train/test_faults.py`` holds. Each run through the CLI in a
subprocess on the tiny JSONL dataset of ``tests.eval.tiny_runs``."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.eval.tiny_runs import critic, policy, recipe, reference, train
from tests.train.train_helpers import REPO
from wmtp.models.locate import step_dirs
from wmtp.train.metrics import read_metrics

pytestmark = [pytest.mark.slow, pytest.mark.minutes(2)]

SETS = ("training.max_steps=4", "training.checkpoint_every=0", "training.eval_every=2")
EMA = '[weighting]\nkind = "td"\nnormalize = { kind = "ema", momentum = 0.3, warmup_steps = 1 }\n'
TIMING = ("time", "per_s", "mfu", "memory")
"""Words of the record keys that measure the machine, not the training."""


@pytest.fixture(scope="module")
def frozen(tmp_path_factory) -> dict[str, Path]:
    """A trained critic and a trained Rho-1 reference (two steps each)."""
    tmp = tmp_path_factory.mktemp("frozen")
    return {
        "critic": train(tmp, "critic", "critic", critic(), steps=2),
        "reference": train(tmp, "ref_tuning", "ref_tuning", policy(), steps=2),
    }


def bodies(frozen: dict[str, Path]) -> dict[str, str]:
    rho1 = '[weighting]\nkind = "rho1"\nk_percent = 0.4\n'
    return {
        "critic": critic(),
        "verifiable": policy() + critic(frozen["critic"]) + EMA,
        "rho1": policy() + reference(frozen["reference"]) + rho1,
    }


def wmtp(*args: object, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "wmtp.cli", "run", *map(str, args)],
        cwd=REPO, capture_output=True, text=True, timeout=300,
        env={**os.environ, "OMP_NUM_THREADS": "1", **(env or {})},
    )  # fmt: skip


def trained(recipe_file: Path, runs: Path, env: dict | None = None) -> tuple[Path, str, int]:
    """Run ``recipe_file`` with :data:`SETS` into ``runs``: its run directory, stderr, exit."""
    sets = (*SETS, f"experiment.runs_dir='{runs}'")
    done = wmtp(recipe_file, *(a for s in sets for a in ("--set", s)), env=env)
    (run,) = runs.glob("*/2*")
    return run, done.stderr, done.returncode


def figures(run: Path) -> list[dict]:
    """Every record of the run, less the keys that time the machine."""
    return [
        {k: v for k, v in record.items() if not any(word in k for word in TIMING)}
        for record in read_metrics(run)
    ]


@pytest.mark.parametrize("pipeline", ["critic", "verifiable", "rho1"])
def test_a_weighted_run_stopped_by_sigterm_resumes_to_the_uninterrupted_records(
    frozen, tmp_path, pipeline
):
    recipe_file = recipe(tmp_path, pipeline, pipeline, bodies(frozen)[pipeline])
    whole, err, code = trained(recipe_file, tmp_path / "whole")
    assert code == 0, err[-3000:]
    stopped, err, code = trained(
        recipe_file, tmp_path / "stopped", env={"WMTP_FAULT": "rank=0,step=3,kind=sigterm"}
    )
    assert code == 143 and "stopped: SIGTERM after step 3" in err, err[-3000:]
    assert [p.name for p in step_dirs(stopped)] == ["step-3"]
    done = wmtp("--resume", stopped)
    assert done.returncode == 0, done.stderr[-3000:]
    assert figures(stopped) == figures(whole)
    assert [r["step"] for r in figures(whole) if "loss" in r] == [1, 2, 3, 4]
