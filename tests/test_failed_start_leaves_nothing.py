"""A new run whose start fails on the user's input (here a malformed data line) leaves no run
directory: the located error is the whole story, exit 2, one process or two. A start that fails
otherwise (running out of memory) keeps its directory and run.log, as a signal before the first
step does (``tests/train/test_faults.py::test_a_signal_while_the_run_is_built_stops_at_once``),
and nothing of a resumed run is removed. Each through the real CLI in a subprocess."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.data.data_rows import problem_rows, write_dataset
from tests.train.train_helpers import FAST, REPO, TINY

SETS = (*FAST, "training.max_steps=2", "training.schedule.warmup_steps=1")


def _dataset(folder: Path) -> Path:
    """A real JSONL dataset of 4 problems; returns its ``train.jsonl``."""
    folder.mkdir(parents=True)
    return write_dataset(folder / "train.jsonl", problem_rows(4, 2, 1))


def _break_line(path: Path, number: int) -> str:
    """Line ``number`` of ``path`` made not JSON; what the error names it by."""
    lines = path.read_text().splitlines()
    lines[number - 1] = '{"instruction": "cut short'
    path.write_text("\n".join(lines) + "\n")
    return f"{path}:{number}: not valid JSON"


def _wmtp_run(runs: Path, train_jsonl: Path, *args: str, preexec_fn=None):
    """``wmtp run`` of the tiny recipe on ``train_jsonl``'s folder into ``runs``."""
    data = f"data={{kind='jsonl', path='{train_jsonl.parent}', max_length=512}}"
    sets = (*SETS, f"experiment.runs_dir='{runs}'", data)
    return subprocess.run(
        [sys.executable, "-m", "wmtp.cli", "run", str(TINY), *(a for s in sets for a in ("--set", s)),
         *args],
        cwd=REPO, env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True,
        timeout=300, preexec_fn=preexec_fn,
    )  # fmt: skip


def _run_dirs(runs: Path) -> list[Path]:
    return sorted((runs / "tiny").glob("2*"))


@pytest.mark.parametrize("extra", [(), ("--dry-run",)], ids=["run", "dry-run"])
def test_bad_data_at_start_leaves_no_run_directory(tmp_path, extra):
    runs = tmp_path / "runs"
    (runs / "tiny").mkdir(parents=True)
    (runs / "tiny" / "notes.txt").write_text("mine")  # the user's, beside the runs
    said = _break_line(_dataset(tmp_path / "data"), 5)
    done = _wmtp_run(runs, tmp_path / "data" / "train.jsonl", *extra)
    assert done.returncode == 2, done.stderr[-3000:]
    assert said in done.stderr and "Traceback" not in done.stderr, done.stderr[-3000:]
    assert "keeps its log" not in done.stderr and "run directory" not in done.stderr
    assert _run_dirs(runs) == [] and (runs / "tiny" / "notes.txt").read_text() == "mine"


@pytest.mark.slow
def test_bad_data_under_two_processes_leaves_no_run_directory(tmp_path):
    """Whichever rank meets the line first (torchrun then stops rank 0, which made the
    directory, maybe before it met the line itself), the directory goes; the error once."""
    runs = tmp_path / "runs"
    said = _break_line(_dataset(tmp_path / "data"), 5)
    done = _wmtp_run(runs, tmp_path / "data" / "train.jsonl", "--nproc-per-node", "2")
    output = done.stdout + done.stderr
    assert done.returncode == 2, output[-3000:]
    assert output.count(said) == 1 and "Traceback" not in output, output[-3000:]
    assert "keeps its" not in output and "stopped:" not in output, output[-3000:]
    assert _run_dirs(runs) == []


def test_running_out_of_memory_at_start_keeps_the_run_directory_and_its_log(tmp_path):
    """Not the input's fault, exit 2 all the same: the log keeps the allocator's trace, so the
    directory stays, said in a warning. The process may map 6 GiB; the model needs about 13."""
    import resource

    def limited():
        resource.setrlimit(resource.RLIMIT_AS, (6 << 30, 6 << 30))

    runs = tmp_path / "runs"
    train_jsonl = _dataset(tmp_path / "data")
    done = _wmtp_run(runs, train_jsonl, "--set", "model.policy.dim=8192", preexec_fn=limited)
    assert done.returncode == 2, done.stderr[-3000:]
    assert "out of memory on the CPU while building" in done.stderr, done.stderr[-3000:]
    (run,) = _run_dirs(runs)
    assert f"the run directory {run} keeps its log (run.log)" in " ".join(done.stderr.split())
    assert "out of memory on the CPU" in (run / "run.log").read_text()


def test_bad_data_when_resuming_removes_nothing_of_the_run(tmp_path):
    """A resumed run's directory is never removed: its checkpoints, metrics and log stay as they
    were (the log told of the failed resume)."""
    runs = tmp_path / "runs"
    train_jsonl = _dataset(tmp_path / "data")
    trained = _wmtp_run(runs, train_jsonl, "--set", "training.checkpoint_every=1")
    assert trained.returncode == 0, trained.stderr[-3000:]
    (run,) = _run_dirs(runs)
    before = {p: p.read_bytes() for p in run.rglob("*") if p.is_file() and p.name != "run.log"}
    said = _break_line(train_jsonl, 5)
    done = subprocess.run(
        [sys.executable, "-m", "wmtp.cli", "run", "--resume", str(run), "--force",
         "--set", "training.max_steps=3"],
        cwd=REPO, env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True,
        timeout=300,
    )  # fmt: skip
    assert done.returncode == 2 and said in done.stderr, done.stderr[-3000:]
    after = {p: p.read_bytes() for p in run.rglob("*") if p.is_file() and p.name != "run.log"}
    assert after == before
    assert said in (run / "run.log").read_text()
