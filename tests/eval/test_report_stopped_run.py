"""`wmtp report` of a run stopped by a signal between two logged steps: its figures are the
stop's, where the checkpoint was written, not the last logged step's."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.train.train_helpers import REPO, TINY, runs_override

pytestmark = [pytest.mark.slow, pytest.mark.minutes(2)]

SETS = (
    "training.micro_batch_size=2",
    "training.max_steps=10",
    "training.log_every=5",
    "training.eval_every=0",
    "training.checkpoint_every=0",
)


def wmtp(*args: object, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "wmtp.cli", *map(str, args)],
        cwd=REPO, capture_output=True, text=True, timeout=300,
        env={**os.environ, "OMP_NUM_THREADS": "1", **(env or {})},
    )  # fmt: skip


def headline_row(report: Path) -> dict[str, str]:
    """The one run's row of ``report.md``'s headline table, by column."""
    lines = [line for line in report.read_text().splitlines() if line.startswith("|")]
    header, row = ([c.strip() for c in line.strip("|").split("|")] for line in (lines[0], lines[2]))
    return dict(zip(header, row, strict=True))


def counted(n: int) -> str:
    """A count as the report writes it (three figures, k / M)."""
    return f"{n / 1e3:.3g}k" if n >= 1e3 else str(n)


def test_a_run_stopped_between_logged_steps_reports_the_tokens_of_its_stop(tmp_path):
    """SIGTERM after step 7 (logged: 1, 5): the run checkpoints step 7 and exits 143; the
    report's tokens seen is the trainer's count at step 7, as its checkpoint records it."""
    sets = [a for s in (*SETS, runs_override(tmp_path)) for a in ("--set", s)]
    stopped = wmtp("run", TINY, *sets, env={"WMTP_FAULT": "rank=0,step=7,kind=sigterm"})
    assert stopped.returncode == 143, stopped.stderr[-3000:]
    assert "stopped: SIGTERM after step 7" in stopped.stderr
    run = (tmp_path / "runs" / "tiny" / "latest").resolve()
    logged = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in logged if "tokens_seen" in r] == [1, 5]  # no record of step 7
    trainer = json.loads((run / "checkpoints" / "step-7" / "trainer.json").read_text())
    assert trainer["step"] == 7 and trainer["tokens_seen"] > logged[-1]["tokens_seen"]

    done = wmtp("report", run, "--out", tmp_path / "report")
    assert done.returncode == 0, done.stderr[-3000:]
    row = headline_row(tmp_path / "report" / "report.md")
    assert row["tokens seen"] == counted(trainer["tokens_seen"]), row
    assert row["tokens seen"] != counted(logged[-1]["tokens_seen"])
