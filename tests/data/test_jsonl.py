"""JSONL reading through an offset index, and located errors for every kind of bad line."""

from __future__ import annotations

import json

import numpy as np
import pytest

from wmtp.data.examples import Example
from wmtp.data.jsonl import JsonlFile, line_offsets, write_jsonl
from wmtp.errors import DataError

ROW = {"instruction": "Add.", "output": "x", "problem_id": "p1", "is_correct": True}


def write_lines(path, lines):
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return path


def test_offsets_find_every_line_with_or_without_final_newline(tmp_path, monkeypatch):
    monkeypatch.setattr("wmtp.data.jsonl.CHUNK_BYTES", 7)  # lines straddle chunk borders
    text = "a\nbbbbbbbbbbbb\n\nccc\nd"
    path = tmp_path / "f.jsonl"
    path.write_text(text)
    expected = [0] + [i + 1 for i, ch in enumerate(text) if ch == "\n"]
    assert line_offsets(path).tolist() == expected
    path.write_text(text + "\n")
    assert line_offsets(path).tolist() == expected


def test_random_access_reads_the_right_rows(tmp_path):
    examples = [
        Example(f"task {i}", f"out {i} é", f"p{i % 3}", i % 2 == 0, difficulty=i) for i in range(50)
    ]
    path = write_jsonl(tmp_path / "train.jsonl", examples)
    f = JsonlFile(path)
    assert len(f) == 50
    for i in np.random.default_rng(0).permutation(50):
        assert f.example(int(i)) == examples[i]
    assert list(f) == examples


def test_a_million_lines_index_without_loading_them(tmp_path):
    path = tmp_path / "big.jsonl"
    line = json.dumps(ROW) + "\n"
    with open(path, "w") as out:
        for _ in range(10):
            out.write(line * 100_000)
    f = JsonlFile(path)
    assert len(f) == 1_000_000 and f.offsets.dtype == np.int64
    assert f.example(999_999).problem_id == "p1"
    assert f.offsets[123_456] == 123_456 * len(line)


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("{not json", "not valid JSON"),
        ("[1, 2]", "expected a JSON object"),
        ("", "empty line"),
        (json.dumps({k: v for k, v in ROW.items() if k != "output"}), "missing field(s) 'output'"),
        (json.dumps({**ROW, "is_correct": 1}), "field 'is_correct' must be true or false, got 1"),
        (
            json.dumps({**ROW, "difficulty": "hard"}),
            "field 'difficulty' must be a whole number, got \"hard\"",
        ),
        (
            json.dumps({**ROW, "difficulty": True}),
            "field 'difficulty' must be a whole number, got true",
        ),
        # -1 is how metadata keeps an unknown difficulty: a row may not claim it
        (json.dumps({**ROW, "difficulty": -1}), "field 'difficulty' must be 0 or more, got -1"),
        (json.dumps({**ROW, "output": None}), "field 'output' must be a string, got null"),
        # JSON's escape of half a UTF-16 pair: no character, which no tokenizer can encode
        (
            json.dumps({**ROW, "output": "ok \ud83d"}),
            "field 'output' holds '\\ud83d' at character 3",
        ),
    ],
)
def test_bad_lines_name_file_and_line(tmp_path, line, message):
    path = write_lines(tmp_path / "train.jsonl", [json.dumps(ROW), json.dumps(ROW), line])
    f = JsonlFile(path)
    with pytest.raises(DataError) as err:
        f.example(2)
    assert f"{path}:3: " in str(err.value) and message in str(err.value)
    with pytest.raises(DataError, match=f"{path}:3: "):
        list(f)


def test_extra_fields_are_allowed_and_problem_ids_may_be_numbers(tmp_path):
    path = write_lines(tmp_path / "t.jsonl", [json.dumps({**ROW, "problem_id": 7, "source": "x"})])
    assert JsonlFile(path).example(0).problem_id == "7"


def test_missing_file_is_a_data_error(tmp_path):
    with pytest.raises(DataError, match="dataset file not found"):
        JsonlFile(tmp_path / "nope.jsonl")


def test_a_pickled_file_reopens_for_data_loader_workers(tmp_path):
    import pickle

    examples = [Example(f"t{i}", f"o{i}", "p", True) for i in range(5)]
    f = JsonlFile(write_jsonl(tmp_path / "train.jsonl", examples))
    clone = pickle.loads(pickle.dumps(f))
    assert [clone.example(i) for i in (4, 0, 2)] == [examples[4], examples[0], examples[2]]
