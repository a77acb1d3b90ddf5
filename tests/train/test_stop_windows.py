"""Stop signals at the moments too short to hit from outside: a second SIGINT once the stop's
checkpoint is written, a SIGTERM while a checkpoint is being written. Each through the real CLI
in a subprocess that sends itself the real signal then (``tests.signal_at``, ``WMTP_FAULT``):
the message says what is kept, once, and the resume matches the uninterrupted run exactly."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.train.train_helpers import REPO, TINY, losses_of
from wmtp.models.locate import step_dirs

pytestmark = [pytest.mark.slow, pytest.mark.minutes(1)]

RUN = (
    "training.micro_batch_size=2",
    "training.log_every=1",
    "training.eval_every=0",
    "training.max_steps=4",
    "training.schedule.warmup_steps=1",
    "training.keep_last=10",
)


def wmtp(runs: Path, *args: str, signal_at: str | None = None, fault: str | None = None):
    """``wmtp run ARGS`` (a recipe with :data:`RUN` and ``runs``, or ``--resume RUN``); with
    ``signal_at``, the real signal ``tests.signal_at`` arranges; with ``fault``, ``WMTP_FAULT``."""
    if args[0] != "--resume":
        args = (*args, *(a for s in (*RUN, f"experiment.runs_dir='{runs}'") for a in ("--set", s)))
    start = ["-m", "tests.signal_at", signal_at, "--"] if signal_at else ["-m", "wmtp.cli"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    if fault:
        env["WMTP_FAULT"] = fault
    return subprocess.run(
        [sys.executable, *start, "run", *args],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip


@pytest.fixture(scope="module")
def whole(tmp_path_factory) -> list[tuple[int, float]]:
    """The uninterrupted run's losses, step by step."""
    runs = tmp_path_factory.mktemp("whole")
    done = wmtp(runs, str(TINY))
    assert done.returncode == 0, done.stderr[-3000:]
    return losses_of((runs / "tiny" / "latest").resolve())


def resumed_losses(run: Path) -> list[tuple[int, float]]:
    done = wmtp(run.parent, "--resume", str(run))
    assert done.returncode == 0, done.stderr[-3000:]
    return losses_of(run)


def test_a_second_sigint_after_the_stops_checkpoint_names_it_and_how_to_continue(tmp_path, whole):
    """Ctrl-C twice: the first asks for a stop after step 3, the second comes once that stop's
    checkpoint is written. It stops at once, naming the checkpoint and the command that goes on
    from it (before: "without a checkpoint", twice, though step-3 was there); run.log says so."""
    done = wmtp(
        tmp_path,
        str(TINY),
        "--set",
        "training.checkpoint_every=0",
        signal_at="wmtp.train.checkpoint:save_checkpoint:after:SIGINT",
        fault="rank=0,step=3,kind=sigint",
    )
    (run,) = tmp_path.glob("tiny/2*")
    said = (
        f"SIGINT again: stopping now, checkpoint {run / 'checkpoints' / 'step-3'} holds every "
        f"finished step; continue with: wmtp run --resume {run}"
    )
    assert done.returncode == 130 and said in done.stderr, done.stderr[-3000:]
    assert done.stderr.count("SIGINT again") == 1 and "without a checkpoint" not in done.stderr
    assert "Traceback" not in done.stderr
    assert f"stopped: {said}" in (run / "run.log").read_text()
    assert [p.name for p in step_dirs(run)] == ["step-3"]
    assert resumed_losses(run) == whole


def test_a_sigterm_while_a_checkpoint_is_written_stops_with_that_checkpoint(tmp_path, whole):
    """SIGTERM while step 2's checkpoint is written (before its manifest): the checkpoint is
    finished whole, the run stops after step 2 with it (no second one), exit 143, and resumes
    exactly."""
    done = wmtp(
        tmp_path,
        str(TINY),
        "--set",
        "training.checkpoint_every=2",
        signal_at="wmtp.train.checkpoint:write_manifest:before:SIGTERM",
    )
    (run,) = tmp_path.glob("tiny/2*")
    said = f"stopped: SIGTERM after step 2: checkpoint {run / 'checkpoints' / 'step-2'} holds"
    assert done.returncode == 143 and said in done.stderr, done.stderr[-3000:]
    assert "Traceback" not in done.stderr
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["step-2"]  # no .tmp-step
    assert [s for s, _ in losses_of(run)] == [1, 2]
    assert resumed_losses(run) == whole
