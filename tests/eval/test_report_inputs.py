"""`wmtp report` given what is not one whole run: an experiment's folder of runs, a metrics.jsonl
with bytes that are not UTF-8 (each one located message, exit 2, no traceback, nothing written),
and a run stopped short of its plan (reported, with a warning that says so). Real runs, read
through the real command."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.eval.tiny_runs import policy, recipe, train
from tests.train.train_helpers import REPO, cli


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    """A baseline run of two steps, in ``<runs>/baseline/<id>/``."""
    return train(tmp_path_factory.mktemp("runs"), "baseline", "baseline", policy(), steps=2)


def test_an_experiments_folder_of_runs_is_no_run_and_names_one(run, tmp_path):
    """``runs/<experiment>`` holds runs (their TensorBoard events under it): never read as one
    run merging them, but refused, naming a run to give instead."""
    folder = run.parent
    code, said = cli("report", folder, run, "--out", tmp_path / "report")
    assert code == 2, said
    assert f"{folder}: a folder of 1 run, not a run: name one, such as {folder}/latest" in said
    assert "Traceback" not in said and not (tmp_path / "report").exists()


def test_a_checkpoint_or_a_run_given_twice_is_refused_naming_the_run(run, tmp_path):
    """A checkpoint (``RUN/checkpoints/step-N``) names its run to give instead; one run given as
    ``latest`` and by its id would be drawn as two runs."""
    step = sorted((run / "checkpoints").iterdir())[-1]
    code, said = cli("report", step, "--out", tmp_path / "report")
    assert code == 2 and f"{step}: a checkpoint of the run {run}, not a run: give the run" in said
    latest = run.parent / "latest"
    code, said = cli("report", run, latest, "--out", tmp_path / "report")
    assert code == 2 and f"{run} and {latest} are the same run, given twice" in said, said
    assert "Traceback" not in said and not (tmp_path / "report").exists()


def test_metrics_with_bytes_that_are_not_utf8_are_located_or_left_out(run, tmp_path):
    """A damaged metrics.jsonl (bytes no UTF-8 text holds): a last line of them is torn, left
    out and noted; a line before the last is an error at its file and line."""
    copy = tmp_path / "baseline" / "damaged"
    shutil.copytree(run, copy)
    metrics = copy / "metrics.jsonl"
    whole = metrics.read_bytes()
    metrics.write_bytes(whole + b'{"step": 3, "loss": \xff\xfe')
    code, said = cli("report", copy, "--out", tmp_path / "report")
    assert code == 0, said
    report = (tmp_path / "report" / "report.md").read_text()
    lines = len(whole.splitlines()) + 1
    assert f"metrics.jsonl: its last line ({lines}) is torn" in report
    metrics.write_bytes(b'{"step": 1, \xff}\n' + whole)
    code, said = cli("report", copy, "--out", tmp_path / "again")
    assert code == 2 and f"{metrics}:1: not valid JSON" in said, said
    assert "Traceback" not in said and not (tmp_path / "again").exists()


def test_a_run_stopped_short_of_its_plan_is_said_under_the_headline(tmp_path):
    """A run stopped by a real SIGTERM after its first of three steps reads as one that trained
    1 of its 3 steps (its checkpoint's trainer.json records the plan), not as a finished run."""
    path = recipe(tmp_path, "stopped", "baseline", policy(), steps=3)
    stop = "wmtp.train.faults:after_step:after:SIGTERM:1"
    done = subprocess.run(
        [sys.executable, "-m", "tests.signal_at", stop, "--", "run", str(path), "--set",
         "training.eval_every=0"],
        cwd=REPO, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 143, done.stdout + done.stderr
    run = tmp_path / "runs" / "stopped" / "latest"
    code, said = cli("report", run, "--out", tmp_path / "report")
    assert code == 0, said
    report = " ".join((tmp_path / "report" / "report.md").read_text().split())
    assert "**Warning: stopped trained 1 of its 3 steps (stopped, or training still" in report
