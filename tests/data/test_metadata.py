"""``train_metadata.json``: built from the rows, and every disagreement located."""

from __future__ import annotations

import json

import pytest

from tests.data.data_rows import problem_rows, write_dataset
from wmtp.data.dataset import JsonlDataset
from wmtp.data.examples import encode_example
from wmtp.data.jsonl import JsonlFile
from wmtp.data.metadata import index_jsonl, metadata_path_for, read_metadata
from wmtp.data.tokenizers import ByteTokenizer
from wmtp.errors import DataError

TOK = ByteTokenizer()


@pytest.fixture
def indexed(tmp_path):
    rows = problem_rows(3, correct=2, incorrect=1, difficulty=lambda p: p + 1)
    path = write_dataset(tmp_path / "train.jsonl", rows)
    meta_path = index_jsonl(path, TOK, progress=False)
    return path, meta_path, rows


def test_index_builds_the_designed_format(indexed):
    path, meta_path, rows = indexed
    assert meta_path == path.with_name("train_metadata.json") == metadata_path_for(path)
    meta = read_metadata(meta_path)
    assert (meta["n_rows"], meta["tokenizer"], meta["template"]) == (9, "byte", "alpaca")
    p1 = meta["problem_index_map"]["P1"]
    assert p1["difficulty"] == 2
    assert (p1["correct_indices"], p1["incorrect_indices"]) == ([3, 4], [5])
    expected = [len(encode_example(rows[i], TOK)) for i in (3, 4)]
    assert p1["correct_token_lengths"] == expected


def test_lengths_come_from_metadata_when_the_tokenizer_matches(indexed):
    path, meta_path, rows = indexed
    meta = json.loads(meta_path.read_text())
    meta["problem_index_map"]["P0"]["correct_token_lengths"] = [111, 222]
    meta_path.write_text(json.dumps(meta))
    ds = JsonlDataset(path, TOK)
    assert ds.rows.n_tokens[:2].tolist() == [111, 222]  # read, not recomputed
    meta["tokenizer"] = "sentencepiece:0123"
    meta_path.write_text(json.dumps(meta))
    ds = JsonlDataset(path, TOK)
    assert ds.rows.n_tokens[0] == len(encode_example(rows[0], TOK))
    assert any("recomputed" in note for note in ds.notes)


def _edit(meta_path, change):
    meta = json.loads(meta_path.read_text())
    change(meta)
    meta_path.write_text(json.dumps(meta))


@pytest.mark.parametrize(
    ("change", "where", "message"),
    [
        (lambda m: m.update(n_rows=8), "meta", "says n_rows = 8, but"),
        (
            lambda m: m["problem_index_map"]["P1"].update(correct_indices=[3, 5]),
            "train.jsonl:5",
            "lists correct_indices of 'P1'",
        ),
        (
            lambda m: m["problem_index_map"]["P2"].update(difficulty=9),
            "train.jsonl:7",
            "has difficulty 3, but",
        ),
        (lambda m: m["problem_index_map"].pop("P2"), "train.jsonl:7", "'P2' is missing from"),
        (
            lambda m: m["problem_index_map"].update(P9=m["problem_index_map"]["P0"]),
            "meta",
            "'P9' has no rows",
        ),
        (
            lambda m: m["problem_index_map"]["P0"].update(incorrect_token_lengths=[]),
            "meta",
            "incorrect_token_lengths must list one length per index",
        ),
    ],
)
def test_metadata_disagreeing_with_the_jsonl_is_located(indexed, change, where, message):
    path, meta_path, _ = indexed
    _edit(meta_path, change)
    with pytest.raises(DataError) as err:
        JsonlDataset(path, TOK)
    text = str(err.value)
    assert message in text
    assert (str(meta_path) if where == "meta" else f"{path.parent}/{where}") in text


def test_invalid_metadata_json_names_its_line(indexed):
    path, meta_path, _ = indexed
    meta_path.write_text('{\n "format": "wmtp-jsonl-metadata",\n oops\n}')
    with pytest.raises(DataError, match=f"{meta_path}:3: invalid JSON"):
        JsonlDataset(path, TOK)


def test_rows_of_one_problem_must_agree_on_difficulty(tmp_path):
    rows = problem_rows(1, correct=2, incorrect=0, difficulty=lambda p: 1)
    rows[1] = rows[1].__class__(**{**rows[1].__dict__, "difficulty": 4})
    path = write_dataset(tmp_path / "train.jsonl", rows)
    with pytest.raises(DataError, match=r"train\.jsonl:2: problem 'P0' has difficulty 4 here"):
        index_jsonl(path, TOK, progress=False)


def test_missing_metadata_is_computed_and_said(tmp_path):
    path = write_dataset(tmp_path / "train.jsonl", problem_rows(2, 1, 1))
    ds = JsonlDataset(path, TOK)
    assert len(ds) == 4 and "wmtp data index" in ds.notes[0]
    assert len(JsonlFile(path)) == 4
