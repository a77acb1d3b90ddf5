"""``wmtp validate --data`` on data that ``wmtp run`` refuses: a problem of its recipe, located
at the key that names the data (file:line), exit 2, and the other recipes still checked."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from wmtp.cli import app

from .test_validate_data import BASELINE, PADDED_ROWS, row, validate, write_rows

HELDOUT = BASELINE.replace(
    "split = { heldout_fraction = 0.0 }",
    'split = { heldout_path = "data/heldout.jsonl", heldout_fraction = 0.0 }',
)
"""The baseline holding out a file: ``data.split.heldout_path`` on line 21, column 11."""


@pytest.fixture
def workdir(tmp_path, monkeypatch) -> Path:
    """padded.toml (``data.path`` on line 19) and its rows in a temporary working directory."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("WMTP_CACHE_DIR", str(tmp_path / "cache"))
    (tmp_path / "padded.toml").write_text(BASELINE)
    write_rows(tmp_path / "data" / "train.jsonl", PADDED_ROWS)
    return tmp_path


def flat(text: str) -> str:
    return " ".join(text.split())


def record_wrong_token_lengths(folder: Path) -> None:
    """``wmtp data index`` the folder's train.jsonl, then set every recorded length to 100 (the
    rows unchanged, so the metadata still matches their sha256)."""
    index = CliRunner().invoke(
        app, ["data", "index", str(folder / "train.jsonl"), "--tokenizer", "byte"]
    )
    assert index.exit_code == 0, index.output
    meta_file = folder / "train_metadata.json"
    meta = json.loads(meta_file.read_text())
    for problem in meta["problem_index_map"].values():
        problem["correct_token_lengths"] = [100 for _ in problem["correct_token_lengths"]]
    meta_file.write_text(json.dumps(meta))


def test_metadata_with_wrong_token_lengths_is_a_problem_of_its_recipe(workdir):
    record_wrong_token_lengths(workdir / "data")
    (workdir / "clean.toml").write_text(BASELINE.replace("data/", "clean/"))
    write_rows(workdir / "clean" / "train.jsonl", PADDED_ROWS)
    result = validate("padded.toml", "clean.toml", "--data")
    assert result.exit_code == 2 and "Traceback" not in result.output
    says = flat(result.stderr)
    assert (
        "invalid: padded.toml: 1 problem padded.toml:19:1: data.path: data/train.jsonl:1:" in says
    )
    assert "records 100: the metadata is out of date" in says
    assert "`wmtp data index data/train.jsonl --force` rebuilds it" in says
    assert "clean.toml: ok" in result.stdout  # the next recipe is still checked
    report = json.loads(validate("padded.toml", "clean.toml", "--data", "--format", "json").stdout)
    broken, clean = report["recipes"]
    (problem,) = broken["problems"]
    assert (problem["file"], problem["line"], problem["key"]) == ("padded.toml", 19, "data.path")
    assert not broken["valid"] and clean["valid"]


@pytest.mark.parametrize(
    "rows, says",
    [
        ([], "data/train.jsonl: empty dataset (no lines)"),
        ([row(0, "x" * 2000, True)], "no training rows are left"),
    ],
    ids=["empty_file", "every_row_too_long"],
)
def test_packed_data_with_no_row_to_train_fails_as_the_run_does(workdir, rows, says):
    write_rows(workdir / "data" / "train.jsonl", rows)
    packed = ["--set", "data.packing=true"]
    result = validate("padded.toml", "--data", *packed)
    assert result.exit_code == 2 and "Traceback" not in result.output
    assert f"padded.toml:19:1: data.path: {says}" in flat(result.stderr)
    run = CliRunner().invoke(app, ["run", "padded.toml", *packed, "--set", "training.max_steps=1"])
    assert run.exit_code == 2 and says in flat(run.output), flat(run.output)[-2000:]


@pytest.mark.parametrize(
    "heldout, says",
    [
        (None, "dataset file not found"),
        ([row(0, "h" * 10, True)], "data/heldout.jsonl:1: problem 'P0' is also in"),
    ],
    ids=["missing", "shares_a_problem"],
)
def test_a_heldout_file_problem_is_located_at_its_key(workdir, heldout, says):
    (workdir / "padded.toml").write_text(HELDOUT)
    if heldout is not None:
        write_rows(workdir / "data" / "heldout.jsonl", heldout)
    result = validate("padded.toml", "--data")
    assert result.exit_code == 2 and "Traceback" not in result.output
    assert f"padded.toml:21:11: data.split.heldout_path: {says}" in flat(result.stderr)


def test_a_row_missing_fields_says_which_it_has(workdir):
    """Rows in the shape the schema once described (``prompt``/``solution``)."""
    wrong = [{"prompt": "Solve.", "solution": "x", "problem_id": "P0", "is_correct": True}]
    write_rows(workdir / "data" / "train.jsonl", wrong)
    result = validate("padded.toml", "--data")
    assert result.exit_code == 2 and "Traceback" not in result.output
    assert (
        "padded.toml:19:1: data.path: data/train.jsonl:1: missing field(s) 'instruction', "
        "'output' (the row has: 'prompt', 'solution', 'problem_id', 'is_correct')"
    ) in flat(result.stderr)
