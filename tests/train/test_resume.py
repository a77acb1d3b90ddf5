"""Checkpoints and resume: SIGKILL then --resume gives the uninterrupted loss sequence; NaN stops."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

from tests.train.train_helpers import FAST, REPO, TINY, losses_of, runs_override
from wmtp.errors import RunError
from wmtp.train.checkpoint import checkpoint_dirs
from wmtp.train.metrics import read_metrics

RESUME = (
    *FAST,
    "training.max_steps=8",
    "training.schedule.warmup_steps=2",
    "training.checkpoint_every=3",
    "training.keep_last=2",
)


def tensorboard_losses(run_dir) -> list[tuple[int, float]]:
    """``(step, loss)`` as TensorBoard shows the run (its reader drops purged points)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(run_dir / "tb"))
    events.Reload()
    return [(e.step, e.value) for e in events.Scalars("loss")]


def _sets(overrides) -> list[str]:
    return [arg for o in overrides for arg in ("--set", o)]


@pytest.mark.slow
def test_sigkill_then_resume_gives_the_uninterrupted_losses(tmp_path):
    from wmtp.train.runner import run_recipe

    whole = run_recipe(TINY, [*RESUME, runs_override(tmp_path / "a")], console=False)
    expected = losses_of(whole.run_dir)
    assert [s for s, _ in expected] == list(range(1, 9))

    runs = tmp_path / "b" / "runs"
    cmd = [
        sys.executable,
        "-m",
        "wmtp.cli",
        "run",
        str(TINY),
        *_sets([*RESUME, runs_override(tmp_path / "b")]),
    ]
    env = dict(os.environ, OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "2"))
    proc = subprocess.Popen(
        cmd, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    latest = runs / "tiny" / "latest"
    deadline = time.monotonic() + 300
    while not (latest.exists() and checkpoint_dirs(latest)):
        assert proc.poll() is None, proc.stderr.read().decode()
        assert time.monotonic() < deadline, "no checkpoint appeared"
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    run_dir = latest.resolve()
    killed_at = int(checkpoint_dirs(run_dir)[-1].name.split("-")[1])
    assert killed_at < 8, "the run finished before it was killed; nothing was resumed"

    resumed = run_recipe(None, resume=run_dir, console=False)
    assert resumed.run_dir == run_dir and resumed.step == 8
    assert losses_of(run_dir) == expected  # exactly: same batches, RNG, optimizer state
    shown = tensorboard_losses(run_dir)  # once a step, none stale (float32 there)
    assert [s for s, _ in shown] == [s for s, _ in expected]
    assert [v for _, v in shown] == pytest.approx([v for _, v in expected], rel=1e-6)
    counted = [m["tokens_seen"] for m in read_metrics(run_dir) if "tokens_seen" in m]
    uninterrupted = [m["tokens_seen"] for m in read_metrics(whole.run_dir) if "tokens_seen" in m]
    assert counted == uninterrupted  # the running count went on from the checkpoint
    per_step = [m["tokens"] for m in read_metrics(whole.run_dir) if "tokens" in m]
    assert uninterrupted[-1] == sum(per_step)
    assert [p.name for p in checkpoint_dirs(run_dir)] == ["step-6", "step-8"]  # keep_last = 2
    assert not list((run_dir / "checkpoints").glob(".tmp-*"))


@pytest.mark.slow
def test_nan_loss_stops_naming_step_and_component_and_keeps_the_checkpoint(tmp_path):
    from wmtp.train.runner import run_recipe

    overrides = [
        *FAST,
        "training.lr=1e30",  # the first update blows the weights up: step 2 has no finite loss
        "training.schedule.warmup_steps=0",
        "training.checkpoint_every=1",
        "training.max_steps=5",
        runs_override(tmp_path),
    ]
    with pytest.raises(RunError, match=r"step 2: the loss is nan \(in loss/head1") as err:
        run_recipe(TINY, overrides, console=False)
    run_dir = (tmp_path / "runs" / "tiny" / "latest").resolve()
    assert [p.name for p in checkpoint_dirs(run_dir)] == ["step-1"]  # step 2 was not applied
    # step-1's weights (finite, but about 1e29) are what gave the NaN: not called good
    assert "No checkpoint was written before these weights" in str(err.value)
    assert "(step-1 holds the weights this step started from)" in str(err.value)


def test_a_resumed_run_replaces_tensorboard_points_after_its_checkpoint(tmp_path):
    # steps 4-5 were logged, then lost (no checkpoint after step 3): the resumed run logs them
    # again, and TensorBoard must show each step once, with the resumed run's value
    from wmtp.train.metrics import MetricsLogger

    first = MetricsLogger(tmp_path, total_steps=5, console=False)
    for step in range(1, 6):
        first.log(step, {"loss": float(step)})
    first.close()
    resumed = MetricsLogger(tmp_path, total_steps=5, start_step=3, console=False)
    for step in (4, 5):
        resumed.log(step, {"loss": 10.0 + step})
    resumed.close()
    assert tensorboard_losses(tmp_path) == [(1, 1.0), (2, 2.0), (3, 3.0), (4, 14.0), (5, 15.0)]


def test_a_resumed_runs_event_file_sorts_after_the_earlier_ones(tmp_path):
    """TensorBoard reads event files in name order, a name starting with its second: a writer
    opened in the second of an earlier file waits into the next one, so it sorts last."""
    from wmtp.train.metrics import after_earlier_event_files

    tb = tmp_path / "tb"
    tb.mkdir()
    earlier = f"events.out.tfevents.{int(time.time())}.host.99999.0"
    (tb / earlier).write_bytes(b"")
    (tb / "events.out.tfevents.not-a-stamp").write_bytes(b"")  # not TensorBoard's: ignored
    after_earlier_event_files(tb)
    later = f"events.out.tfevents.{int(time.time())}.host.1.0"
    assert sorted([earlier, later])[-1] == later
