"""``training.epochs`` counts passes over the training data, packed or not: a run of one epoch of
packed rows trains every training example once, as one epoch of padded rows does; a packed run
stopped by SIGTERM at the end of an epoch resumes to the uninterrupted run, and once finished
says so naming its epochs. Each run through the CLI in a subprocess on the tiny JSONL dataset of
``tests.eval.tiny_runs`` (14 training examples of about 26 tokens)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from safetensors.torch import load_file

from tests.eval.tiny_runs import policy, recipe
from tests.train.train_helpers import REPO
from wmtp.models.locate import step_dirs
from wmtp.train.metrics import read_metrics

pytestmark = pytest.mark.slow

LOGGED = ("training.log_every=1", "training.eval_every=0")
PACKED = ("data.packing=true", "training.micro_batch_size=1")
"""Rows of 128 tokens, 4 or 5 examples each."""
ONE_EPOCH = "training.epochs=1"
TIMING = ("time", "per_s")
"""Words of the record keys that measure the machine, not the training."""


def wmtp_run(*args: object, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "wmtp.cli", "run", *map(str, args)],
        cwd=REPO, capture_output=True, text=True, timeout=300,
        env={**os.environ, "OMP_NUM_THREADS": "1", **(env or {})},
    )  # fmt: skip


def trained(recipe_file: Path, runs: Path, *sets: str, env: dict | None = None) -> Path:
    """``wmtp run`` into ``runs`` with ``sets``, stopped or not: its run directory."""
    args = [a for s in (*LOGGED, *sets, f"experiment.runs_dir='{runs}'") for a in ("--set", s)]
    done = wmtp_run(recipe_file, *args, env=env)
    assert done.returncode in (0, 143), done.stderr[-3000:]
    (run,) = runs.glob("*/2*")
    return run


def tokens_seen(run: Path) -> float:
    """The input tokens the run trained on."""
    return [r for r in read_metrics(run) if "tokens_seen" in r][-1]["tokens_seen"]


@pytest.fixture(scope="module")
def recipe_file(tmp_path_factory) -> Path:
    return recipe(tmp_path_factory.mktemp("epochs"), "epochs", "baseline", policy())


@pytest.fixture(scope="module")
def epoch_tokens(recipe_file, tmp_path_factory) -> float:
    """The input tokens of one epoch: one padded step of its 14 rows."""
    runs = tmp_path_factory.mktemp("padded")
    return tokens_seen(trained(recipe_file, runs, ONE_EPOCH, "training.micro_batch_size=14"))


@pytest.mark.parametrize("window", [1, 64])
def test_one_epoch_of_packed_rows_trains_every_example_once(
    recipe_file, epoch_tokens, tmp_path, window
):
    """Window 1: in order, next fit; window 64: the whole epoch at once, first fit decreasing.
    The rows fill to less than 128 tokens, so the tokens alone do not say how many rows one
    epoch takes."""
    packed = trained(recipe_file, tmp_path, ONE_EPOCH, *PACKED, f"data.pack_window={window}")
    assert tokens_seen(packed) == epoch_tokens


def figures(run: Path) -> list[dict]:
    return [
        {k: v for k, v in r.items() if not any(w in k for w in TIMING)} for r in read_metrics(run)
    ]


def final_weights(run: Path) -> dict:
    return load_file(str(step_dirs(run)[-1] / "model.safetensors"))


def test_a_packed_run_stopped_at_an_epochs_end_resumes_to_the_uninterrupted_run(
    recipe_file, tmp_path
):
    """Three rows a step (accumulated one by one): one step an epoch, its rows all of it."""
    sets = ("training.epochs=3", *PACKED, "training.grad_accum_steps=3")
    whole = trained(recipe_file, tmp_path / "whole", *sets)
    stop = {"WMTP_FAULT": "rank=0,step=1,kind=sigterm"}
    stopped = trained(recipe_file, tmp_path / "stopped", *sets, env=stop)
    assert [p.name for p in step_dirs(stopped)] == ["step-1"]
    done = wmtp_run("--resume", stopped)
    assert done.returncode == 0, done.stderr[-3000:]
    assert figures(stopped) == figures(whole)
    assert [r["step"] for r in figures(whole) if "loss" in r] == [1, 2, 3]
    assert len({r["tokens"] for r in figures(whole) if "tokens" in r}) == 1  # an epoch each
    resumed, uninterrupted = final_weights(stopped), final_weights(whole)
    assert all((resumed[k] == uninterrupted[k]).all() for k in uninterrupted)
    again = wmtp_run("--resume", stopped)
    said = "nothing to do: the run had trained all its 3 steps (training.epochs = 3)"
    assert again.returncode == 0 and said in " ".join(again.stdout.split()), again.stdout[-2000:]
