"""``train_metadata.json``: per problem, its difficulty and which rows are correct or incorrect,
with their token lengths, beside ``train.jsonl``.

```json
{"format": "wmtp-jsonl-metadata", "version": 1, "source": "train.jsonl", "n_rows": 3,
 "tokenizer": "byte", "template": "alpaca",
 "problem_index_map": {"HumanEval/0": {"difficulty": null,
     "correct_indices": [0, 1], "incorrect_indices": [2],
     "correct_token_lengths": [311, 325], "incorrect_token_lengths": [309]}}}
```

Indices are 0-based rows (line = index + 1). Token lengths are of the whole encoded example (BOS,
prompt, output, EOS) under the named ``tokenizer`` identity and ``template``; a run with another
tokenizer recomputes them (and says so). Metadata that disagrees with its JSONL is a
:class:`DataError` naming the file and line.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from wmtp.data.examples import TemplateName, encode_example
from wmtp.data.jsonl import JsonlFile, refuse_empty
from wmtp.data.tokenizers import Tokenizer
from wmtp.errors import DataError

log = logging.getLogger(__name__)

FORMAT = "wmtp-jsonl-metadata"
VERSION = 1
NO_DIFFICULTY = -1  # in RowTable.difficulty; difficulties are non-negative


def metadata_path_for(jsonl_path: str | Path) -> Path:
    """``train.jsonl`` -> ``train_metadata.json`` beside it."""
    path = Path(jsonl_path)
    return path.with_name(f"{path.stem}_metadata.json")


@dataclass
class RowTable:
    """What sampling needs of every row, as arrays (millions of rows fit in a few MB)."""

    problem_ids: list[str]
    """Distinct problem ids, in order of first appearance."""
    problem_of_row: np.ndarray  # int32 [N], index into problem_ids
    is_correct: np.ndarray  # bool [N]
    difficulty: np.ndarray  # int64 [N], NO_DIFFICULTY when unknown
    n_tokens: np.ndarray | None  # int32 [N], None until computed

    def __len__(self) -> int:
        return len(self.is_correct)


def index_command(
    jsonl_path: str | Path, tokenizer: Tokenizer, template: str, *, force: bool = False
) -> str:
    """The ``wmtp data index`` command that saves ``jsonl_path``'s token lengths as ``tokenizer``
    and ``template`` count them (what a run or validate suggests: the recipe's own)."""
    kind = tokenizer.identity.split(":")[0]
    words = ["wmtp data index", str(jsonl_path)]
    if kind != "byte":
        words += [f"--tokenizer {kind}", f"--tokenizer-path {tokenizer.path}"]
    if template != "alpaca":
        words.append(f"--template {template}")
    return " ".join(words + ["--force"] * force)


def scan_rows(
    jsonl: JsonlFile,
    tokenizer: Tokenizer | None = None,
    template: TemplateName = "alpaca",
    *,
    progress: bool = False,
) -> RowTable:
    """Read and validate every row once; token lengths too when a tokenizer is given."""
    from rich.progress import track

    codes: dict[str, int] = {}
    problem_of_row, is_correct, difficulty, n_tokens = [], [], [], []
    rows = track(
        jsonl, total=len(jsonl), description=f"reading {jsonl.path.name}", disable=not progress
    )
    for example in rows:
        problem_of_row.append(codes.setdefault(example.problem_id, len(codes)))
        is_correct.append(example.is_correct)
        difficulty.append(NO_DIFFICULTY if example.difficulty is None else example.difficulty)
        if tokenizer is not None:
            n_tokens.append(len(encode_example(example, tokenizer, template=template)))
    return RowTable(
        problem_ids=list(codes),
        problem_of_row=np.asarray(problem_of_row, dtype=np.int32),
        is_correct=np.asarray(is_correct, dtype=bool),
        difficulty=np.asarray(difficulty, dtype=np.int64),
        n_tokens=np.asarray(n_tokens, dtype=np.int32) if tokenizer is not None else None,
    )


def build_metadata(
    rows: RowTable, jsonl: JsonlFile, tokenizer_identity: str, template: str
) -> dict:
    """The metadata of ``rows`` (which must carry token lengths)."""
    assert rows.n_tokens is not None, "token lengths are needed"
    index_map = {}
    for code, problem_id in enumerate(rows.problem_ids):
        indices = np.flatnonzero(rows.problem_of_row == code)
        correct = indices[rows.is_correct[indices]]
        incorrect = indices[~rows.is_correct[indices]]
        index_map[problem_id] = {
            "difficulty": _problem_difficulty(rows, indices, problem_id, jsonl),
            "correct_indices": correct.tolist(),
            "incorrect_indices": incorrect.tolist(),
            "correct_token_lengths": rows.n_tokens[correct].tolist(),
            "incorrect_token_lengths": rows.n_tokens[incorrect].tolist(),
        }
    return {
        "format": FORMAT,
        "version": VERSION,
        "source": jsonl.path.name,
        "source_sha256": jsonl.sha256,
        "n_rows": len(rows),
        "tokenizer": tokenizer_identity,
        "template": template,
        "problem_index_map": index_map,
    }


def _problem_difficulty(rows: RowTable, indices: np.ndarray, problem_id: str, jsonl: JsonlFile):
    values = rows.difficulty[indices]
    disagree = np.flatnonzero(values != values[0])
    if len(disagree):
        i = int(indices[disagree[0]])
        raise DataError(
            f"{jsonl.where(i)}: problem {problem_id!r} has difficulty {_show(values[disagree[0]])} "
            f"here but {_show(values[0])} at line {int(indices[0]) + 1}"
        )
    return None if values[0] == NO_DIFFICULTY else int(values[0])


def _show(difficulty) -> str:
    return "none" if difficulty == NO_DIFFICULTY else str(int(difficulty))


def write_metadata(meta: dict, path: str | Path) -> Path:
    """Write ``meta`` as JSON, replacing ``path`` whole (``wmtp.atomic``)."""
    from wmtp.atomic import write_text

    return write_text(path, json.dumps(meta, indent=1) + "\n")


def read_metadata(path: str | Path) -> dict:
    """Load a metadata file; a located :class:`DataError` when it is not valid metadata."""
    path = Path(path)
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise DataError(f"{path}:{exc.lineno}: invalid JSON ({exc.msg})") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"{path}: cannot be read: {exc}") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise DataError(f'{path}: not wmtp dataset metadata (expected "format": "{FORMAT}")')
    if meta.get("version") != VERSION:
        raise DataError(f"{path}: metadata version {meta.get('version')}, expected {VERSION}")
    for key in ("n_rows", "tokenizer", "template", "problem_index_map"):
        if key not in meta:
            raise DataError(f"{path}: missing key {key!r}")
    _check_types(meta, path)
    return meta


LENGTH_LIMIT = 2**31
"""Token lengths and row indices are kept as int32."""


def _check_types(meta: dict, path: Path) -> None:
    """Every value of the format's type (another tool may have written the file), else a
    DataError naming the key: nothing further on meets a string where a number belongs."""
    if not _whole(meta["n_rows"]):
        raise DataError(f"{path}: n_rows should be a whole number, got {_short(meta['n_rows'])}")
    for key in ("tokenizer", "template"):
        if not isinstance(meta[key], str):
            raise DataError(f"{path}: {key} should be a string, got {_short(meta[key])}")
    index_map = meta["problem_index_map"]
    if not isinstance(index_map, dict):
        raise DataError(
            f"{path}: problem_index_map should be an object (problem id -> its rows), "
            f"got {_short(index_map)}"
        )
    for problem_id, entry in index_map.items():
        where = f"{path}: problem_index_map[{json.dumps(problem_id)}]"
        if not isinstance(entry, dict):
            raise DataError(f"{where} should be an object, got {_short(entry)}")
        for side in ("correct", "incorrect"):
            for key, least in ((f"{side}_indices", 0), (f"{side}_token_lengths", 1)):
                values = entry.get(key)
                if not isinstance(values, list) or not all(
                    _whole(v) and least <= v < LENGTH_LIMIT for v in values
                ):
                    raise DataError(
                        f"{where}.{key} should be a list of whole numbers from {least} to "
                        f"2^31 - 1, got {_short(values)}"
                    )
        difficulty = entry.get("difficulty")
        if difficulty is not None and not (_whole(difficulty) and difficulty >= 0):
            raise DataError(
                f"{where}.difficulty should be null or a whole number from 0, got {_short(difficulty)}"
            )


def _whole(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def built_from_another_version(meta: dict, jsonl: JsonlFile) -> bool:
    """Whether ``meta`` was built from other bytes than ``jsonl`` holds now (metadata written
    before files were hashed cannot say: False, and :func:`check_metadata` compares rows)."""
    recorded = meta.get("source_sha256")
    return recorded is not None and recorded != jsonl.sha256


def check_metadata(meta: dict, rows: RowTable, jsonl: JsonlFile, meta_path: Path) -> None:
    """Raise a :class:`DataError` naming file and line where ``meta`` disagrees with ``rows``."""
    if meta["n_rows"] != len(rows):
        raise DataError(
            f"{meta_path}: says n_rows = {meta['n_rows']}, but {jsonl.path} has {len(rows)} lines"
        )
    expected = build_metadata(_with_zero_lengths(rows), jsonl, "", "")["problem_index_map"]
    index_map = meta["problem_index_map"]
    for problem_id in index_map:
        if problem_id not in expected:
            raise DataError(f"{meta_path}: problem {problem_id!r} has no rows in {jsonl.path}")
    for problem_id, want in expected.items():
        got = index_map.get(problem_id)
        if got is None:
            first = want["correct_indices"][:1] + want["incorrect_indices"][:1]
            raise DataError(
                f"{jsonl.where(min(first))}: problem {problem_id!r} is missing from {meta_path}"
            )
        _check_problem(problem_id, got, want, jsonl, meta_path)


def _with_zero_lengths(rows: RowTable) -> RowTable:
    return RowTable(
        rows.problem_ids,
        rows.problem_of_row,
        rows.is_correct,
        rows.difficulty,
        np.zeros(len(rows), dtype=np.int32),
    )


def _check_problem(problem_id: str, got: dict, want: dict, jsonl: JsonlFile, meta_path: Path):
    for side in ("correct", "incorrect"):
        key = f"{side}_indices"
        have, need = got.get(key), want[key]
        if have != need:
            wrong = sorted(set(have or []) ^ set(need)) or need
            i = wrong[0]
            where = jsonl.where(i) if 0 <= i < len(jsonl) else f"{meta_path}: row {i}"
            raise DataError(
                f"{where}: {meta_path.name} lists {key} of {problem_id!r} as {_short(have)}, "
                f"but the JSONL has {_short(need)}"
            )
        lengths = got.get(f"{side}_token_lengths")
        if not isinstance(lengths, list) or len(lengths) != len(need):
            raise DataError(
                f"{meta_path}: problem {problem_id!r}: {side}_token_lengths must list one length "
                f"per index ({len(need)}), got {_short(lengths)}"
            )
    if got.get("difficulty") != want["difficulty"]:
        first = min(want["correct_indices"][:1] + want["incorrect_indices"][:1])
        raise DataError(
            f"{jsonl.where(first)}: problem {problem_id!r} has difficulty {want['difficulty']}, "
            f"but {meta_path.name} says {got.get('difficulty')}"
        )


def _short(values) -> str:
    text = json.dumps(values)
    return text if len(text) <= 60 else text[:57] + "..."


def lengths_from_metadata(meta: dict, n_rows: int) -> np.ndarray:
    """Token length of every row, from a checked ``meta``."""
    n_tokens = np.zeros(n_rows, dtype=np.int32)
    for entry in meta["problem_index_map"].values():
        for side in ("correct", "incorrect"):
            n_tokens[entry[f"{side}_indices"]] = entry[f"{side}_token_lengths"]
    return n_tokens


def index_jsonl(
    path: str | Path, tokenizer: Tokenizer, template: TemplateName = "alpaca", *, progress=True
) -> Path:
    """Build ``<stem>_metadata.json`` for the JSONL at ``path``; returns its path."""
    refuse_empty(path)
    jsonl = JsonlFile(path)
    rows = scan_rows(jsonl, tokenizer, template, progress=progress)
    meta = build_metadata(rows, jsonl, tokenizer.identity, template)
    return write_metadata(meta, metadata_path_for(path))
