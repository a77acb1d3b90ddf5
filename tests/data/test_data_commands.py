"""``wmtp data index`` and ``wmtp data humaneval`` through the real CLI app."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from typer.testing import CliRunner

import wmtp.data.humaneval as he
from tests.data.data_rows import problem_rows, write_dataset
from tests.sandbox.isolations import HAS_BWRAP, child_env, path_without_bwrap
from wmtp.cli import app

runner = CliRunner()


def test_index_builds_missing_metadata_then_checks_it(tmp_path):
    path = write_dataset(tmp_path / "train.jsonl", problem_rows(3, 2, 1))
    first = runner.invoke(app, ["data", "index", str(path)])
    assert first.exit_code == 0, first.output
    meta = json.loads((tmp_path / "train_metadata.json").read_text())
    assert meta["n_rows"] == 9 and len(meta["problem_index_map"]) == 3
    again = runner.invoke(app, ["data", "index", str(tmp_path)])
    assert again.exit_code == 0 and "agrees with train.jsonl (9 rows)" in again.output


def test_index_reports_a_bad_line_with_file_and_line(tmp_path):
    path = write_dataset(tmp_path / "train.jsonl", problem_rows(2, 1, 1))
    lines = path.read_text().splitlines()
    lines[2] = lines[2].replace('"is_correct": true', '"is_correct": "yes"')
    lines[2] = lines[2].replace('"is_correct": false', '"is_correct": "no"')
    path.write_text("\n".join(lines) + "\n")
    result = runner.invoke(app, ["data", "index", str(path)])
    assert result.exit_code == 2
    assert f"{path}:3: field 'is_correct' must be bool" in result.output.replace("\n", "")


def test_index_reports_metadata_that_disagrees(tmp_path):
    path = write_dataset(tmp_path / "train.jsonl", problem_rows(2, 1, 1))
    assert runner.invoke(app, ["data", "index", str(path)]).exit_code == 0
    with open(path, "a") as f:
        f.write(path.read_text().splitlines()[0] + "\n")
    result = runner.invoke(app, ["data", "index", str(path)])
    assert result.exit_code == 2 and "says n_rows = 4, but" in result.output.replace("\n", "")


def test_humaneval_command_without_bubblewrap_stops_before_any_work(tmp_path):
    out = tmp_path / "he"
    done = subprocess.run(
        [sys.executable, "-m", "wmtp.cli", "data", "humaneval", str(out)],
        env=child_env(path_without_bwrap(tmp_path)),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 2, done.stderr
    assert done.stderr.startswith(
        f"error: sandbox: building the HumanEval dataset in {out} needs bubblewrap, which cannot "
        "run here: bwrap is not installed: not found on PATH."
    )
    assert "apt-get install bubblewrap" in done.stderr and "--sandbox rlimits" in done.stderr
    assert "Traceback" not in done.stderr and not out.exists()


@pytest.mark.slow
@pytest.mark.parametrize(
    "opt_in",
    [
        pytest.param([], marks=pytest.mark.skipif(not HAS_BWRAP, reason="bubblewrap unusable")),
        ["--sandbox", "rlimits"],
    ],
    ids=["bwrap", "rlimits"],
)
def test_humaneval_command_builds_and_reports(tmp_path, monkeypatch, opt_in):
    everything = he.load_problems()
    monkeypatch.setattr(
        he, "load_problems", lambda: {t: everything[t] for t in ["HumanEval/0", "HumanEval/7"]}
    )
    monkeypatch.setenv("WMTP_SANDBOX", "")  # restored after --sandbox sets it
    if opt_in:
        monkeypatch.setenv("PATH", path_without_bwrap(tmp_path))
    result = runner.invoke(
        app, ["data", "humaneval", str(tmp_path / "he"), "--heldout-fraction", "0.5", *opt_in]
    )
    assert result.exit_code == 0, result.output
    kind = "rlimits" if opt_in else "bwrap"
    assert f"sandbox: {kind}: " in result.output
    assert "train: 1 problems" in result.output and "heldout: 1 problems" in result.output
    assert (tmp_path / "he" / "train_metadata.json").is_file()
    info = json.loads((tmp_path / "he" / "build_info.json").read_text())
    assert info["isolation"].startswith("rlimits" if opt_in else "bubblewrap")
