"""``wmtp eval``'s inputs, in a child process: a benchmark file of the user's in HumanEval's
format (each mistake one located message before the model loads: exit 2, no traceback, nothing
written), a file given as the model, results already in the folder (never written over) and
the partial results of a stopped evaluation (kept for the command that stopped)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.eval.test_eval_command import tiny_model

pytestmark = pytest.mark.minutes(0.5)

PROBLEMS = [
    {
        "task_id": f"HumanEval/{i}",
        "prompt": f"def f{i}(x):\n    ",
        "test": f"def check(candidate):\n    assert candidate(1) == {i}\n",
        "entry_point": f"f{i}",
    }
    for i in range(3)
]


@pytest.fixture(scope="module")
def recipe(tmp_path_factory) -> Path:
    """An evaluation recipe over a model in Meta's layout (a pretrained model: every problem
    unseen); its runs go beside it."""
    from wmtp.models.checkpoint import write_meta

    root = tmp_path_factory.mktemp("eval-inputs")
    model = write_meta(tiny_model(), root / "model")
    path = root / "evaluation.toml"
    path.write_text(f"""
[experiment]
name = "files"
pipeline = "evaluation"
runs_dir = "{root / "runs"}"

[tokenizer]
kind = "byte"

[model.policy]
kind = "llama_mtp"
path = "{model}"
dtype = "float32"
attention = "sdpa"

[parallel]
device = "cpu"

[evaluation]
k = [1]
n_samples = 1
temperature = 0.0
max_new_tokens = 4
workers = 1
""")
    return path


def wmtp_eval(
    recipe: Path, benchmark: Path, *args: str, command: list[str] | None = None
) -> subprocess.CompletedProcess:
    """``wmtp eval RECIPE`` of ``humaneval=BENCHMARK`` in a child process (``command`` in place
    of ``python -m wmtp.cli``)."""
    return subprocess.run(
        [*(command or [sys.executable, "-m", "wmtp.cli"]), "eval", str(recipe), "--no-progress",
         "--set", f'evaluation.benchmarks=["humaneval={benchmark}"]', *args],
        env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True, timeout=300,
    )  # fmt: skip


def lines_of(rows: list[dict]) -> list[bytes]:
    return [json.dumps(row).encode() for row in rows]


MISTAKES = {
    "missing test": (
        [*lines_of(PROBLEMS[:1]), json.dumps({k: v for k, v in PROBLEMS[1].items() if k != "test"}).encode()],
        ":2: missing field 'test'",
    ),
    "task id twice": (
        lines_of([*PROBLEMS, PROBLEMS[0]]),
        ":4: task id 'HumanEval/0' is there twice (first at line 1)",
    ),
    "empty prompt": (
        lines_of([PROBLEMS[0], {**PROBLEMS[1], "prompt": " \n"}]),
        ":2: field 'prompt' is empty",
    ),
    "empty test": (
        lines_of([PROBLEMS[0], {**PROBLEMS[1], "test": ""}]),
        ":2: field 'test' is empty",
    ),
    "not UTF-8": (
        [*lines_of(PROBLEMS[:1]), b'{"task_id": "caf\xe9"}'],
        ":2: not UTF-8 text: byte 0xe9 at byte 17 of the line",
    ),
    "half a surrogate pair": (
        [*lines_of(PROBLEMS[:1]), json.dumps({**PROBLEMS[1], "prompt": "def f(x):\ud800"}).encode()],
        ":2: field 'prompt' holds '\\ud800' at character 9",
    ),
}  # fmt: skip


@pytest.mark.parametrize("mistake", MISTAKES)
def test_a_mistake_in_a_benchmark_file_is_said_at_its_line(recipe, tmp_path, mistake):
    lines, said = MISTAKES[mistake]
    benchmark = tmp_path / "he.jsonl"
    benchmark.write_bytes(b"\n".join(lines) + b"\n")
    done = wmtp_eval(recipe, benchmark)
    flat = " ".join(done.stderr.split())
    assert done.returncode == 2, done.stderr[-2000:]
    assert f"evaluation.benchmarks[0]: 'humaneval={benchmark}': {benchmark}{said}" in flat, flat
    assert "Traceback" not in done.stderr
    assert not (recipe.parent / "runs").exists()  # stopped before anything was written


def test_files_in_the_results_folder_are_moved_aside_never_written_over(recipe, tmp_path):
    """A results folder holding a ``samples.jsonl`` but no ``summary.json`` (the user's own, or
    an evaluation whose summary was deleted): it moves to previous/, as an evaluation's does."""
    benchmark = tmp_path / "he.jsonl"
    benchmark.write_bytes(b"\n".join(lines_of(PROBLEMS[:1])) + b"\n")
    folder = tmp_path / "out" / "humaneval"
    folder.mkdir(parents=True)
    (folder / "samples.jsonl").write_text('{"mine": true}\n')
    done = wmtp_eval(recipe, benchmark, "--out", str(tmp_path / "out"))
    assert done.returncode == 0, done.stderr[-2000:]
    (kept,) = (folder / "previous").iterdir()
    assert (kept / "samples.jsonl").read_text() == '{"mine": true}\n'
    assert json.loads((folder / "samples.jsonl").read_text())["task_id"] == "HumanEval/0"
    assert f"moved to {kept}" in " ".join(done.stderr.split())


def test_a_stopped_evaluation_is_kept_for_its_own_command_while_another_starts_afresh(
    recipe, tmp_path
):
    """A real SIGINT once two problems are judged: exit 130, saying what is kept. A command of
    other settings starts afresh and says where the stopped one's problems are kept, leaving
    them; the stopped command, run again, takes them up."""
    benchmark = tmp_path / "he.jsonl"
    benchmark.write_bytes(b"\n".join(lines_of(PROBLEMS)) + b"\n")
    out = tmp_path / "out"
    signal_at = [sys.executable, "-m", "tests.signal_at", "wmtp.sandbox:check:after:SIGINT:2", "--"]
    stopped = wmtp_eval(recipe, benchmark, "--out", str(out), command=signal_at)
    assert stopped.returncode == 130, stopped.stderr[-2000:]
    said = " ".join(stopped.stderr.split())
    kept = int(said.split("stopped: SIGINT during humaneval: ")[1].split(" of 3 problems")[0])
    (partial,) = (out / "humaneval").glob(".partial-*")

    other = wmtp_eval(recipe, benchmark, "--out", str(out), "--set", "evaluation.max_new_tokens=3")
    flat = " ".join(other.stderr.split())
    assert other.returncode == 0, other.stderr[-2000:]
    assert f"humaneval: {kept} problems finished by an interrupted evaluation with other settings" \
        f" (or another content of the benchmark file) are kept in {partial}" in flat, flat  # fmt: skip
    assert len((partial / "rank0.jsonl").read_text().splitlines()) == kept

    again = wmtp_eval(recipe, benchmark, "--out", str(out))
    assert again.returncode == 0, again.stderr[-2000:]
    summary = json.loads((out / "humaneval" / "summary.json").read_text())
    assert summary["resumed_problems"] == kept >= 1 and not partial.exists()


def test_a_file_of_a_model_given_as_the_model_names_its_folder(recipe):
    model = recipe.parent / "model"
    done = subprocess.run(
        [sys.executable, "-m", "wmtp.cli", "eval", str(model / "params.json")],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    flat = " ".join(done.stderr.split())
    assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr[-2000:]
    assert f"{model / 'params.json'}: a file, neither a run directory" in flat, flat
    assert f"nor an evaluation recipe (.toml): give its folder, {model}" in flat, flat
