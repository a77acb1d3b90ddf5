"""Random access to a ``train.jsonl`` of millions of lines without loading it whole.

An index of byte offsets (one int64 per line, built by scanning the file in chunks) finds any
line with one seek. Every line must be a JSON object with the fields of
:class:`~wmtp.data.examples.Example` (other keys are allowed and ignored); anything else is a :class:`DataError` naming the file and
line. Blank lines are errors too: nothing is skipped silently.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from wmtp.data.examples import Example
from wmtp.data.text import refuse_lone_surrogate, utf8_line
from wmtp.errors import DataError, json_kinds

CHUNK_BYTES = 1 << 24

REQUIRED_FIELDS = ("instruction", "output", "problem_id", "is_correct")
OPTIONAL_FIELDS = ("input", "difficulty")


def line_offsets(path: Path) -> np.ndarray:
    """Byte offset of the start of every line of ``path`` (a final line may lack its newline)."""
    return _scan(path)[0]


def _scan(path: Path) -> tuple[np.ndarray, str]:
    """:func:`line_offsets` and the sha256 of the file's bytes, in one read."""
    starts = [np.zeros(1, dtype=np.int64)]
    size = 0
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK_BYTES):
            newlines = np.flatnonzero(np.frombuffer(chunk, dtype=np.uint8) == ord("\n"))
            starts.append(newlines.astype(np.int64) + size + 1)
            size += len(chunk)
            digest.update(chunk)
    offsets = np.concatenate(starts)
    if offsets[-1] == size:  # the file ends with a newline: no line starts there
        offsets = offsets[:-1]
    return offsets, digest.hexdigest()


def refuse_empty(path: str | Path) -> None:
    """An empty file is no dataset: refused by name here, or it would pass every check and get
    metadata for zero rows, to fail later without saying which file was empty."""
    path = Path(path)
    if path.is_file() and path.stat().st_size == 0:
        raise DataError(
            f"{path}: empty dataset (no lines): a dataset needs at least one JSON line with "
            f"{', '.join(REQUIRED_FIELDS)}"
        )


class JsonlFile:
    """The lines of a JSON Lines file, read one at a time through an offset index."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        if not self.path.is_file():
            raise DataError(f"dataset file not found: {self.path}")
        # sha256: the file's identity, which metadata and checkpoints record to tell a change
        self.offsets, self.sha256 = _scan(self.path)
        self._size = self.path.stat().st_size
        self._file = open(self.path, "rb")  # noqa: SIM115 (kept open for random access)

    def __len__(self) -> int:
        return len(self.offsets)

    def __del__(self) -> None:
        if hasattr(self, "_file"):
            self._file.close()

    def __getstate__(self) -> dict:  # data-loader workers reopen the file
        return {
            "path": self.path,
            "offsets": self.offsets,
            "sha256": self.sha256,
            "_size": self._size,
        }

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._file = open(self.path, "rb")  # noqa: SIM115

    def where(self, index: int) -> str:
        """``file:line`` of row ``index`` (lines count from 1)."""
        return f"{self.path}:{index + 1}"

    def raw(self, index: int) -> bytes:
        start = int(self.offsets[index])
        end = int(self.offsets[index + 1]) if index + 1 < len(self) else self._size
        self._file.seek(start)
        return self._file.read(end - start)

    def record(self, index: int) -> dict:
        """Row ``index`` as a dict; a located :class:`DataError` when it is not a JSON object."""
        return _parse_record(self.raw(index), self.where(index))

    def example(self, index: int) -> Example:
        """Row ``index`` as a validated :class:`Example`."""
        return example_from_record(self.record(index), self.where(index))

    def __iter__(self) -> Iterator[Example]:
        """Every row in order, validated, streaming through the file once."""
        with open(self.path, "rb") as f:
            for index, raw in enumerate(f):
                where = self.where(index)
                yield example_from_record(_parse_record(raw, where), where)


def _parse_record(raw: bytes, where: str) -> dict:
    """One JSONL line as a dict; a :class:`DataError` at ``where`` (file:line) otherwise."""
    if not raw.strip():
        raise DataError(f"{where}: empty line")
    try:
        record = json.loads(utf8_line(raw, where))
    except json.JSONDecodeError as exc:
        raise DataError(f"{where}: not valid JSON ({exc})") from None
    if not isinstance(record, dict):
        raise DataError(f"{where}: expected a JSON object, got {type(record).__name__}")
    return record


def _typed(record: dict, key: str, types: tuple[type, ...], where: str):
    value = record[key]
    refused = isinstance(value, bool) and bool not in types  # bool is an int subclass
    if refused or not isinstance(value, types):
        expected = json_kinds(types)
        shown = json.dumps(value, ensure_ascii=False)
        shown = shown if len(shown) <= 60 else shown[:57] + "..."
        raise DataError(f"{where}: field {key!r} must be {expected}, got {shown}")
    if isinstance(value, str):
        refuse_lone_surrogate(value, key, where)
    return value


def example_from_record(record: dict, where: str) -> Example:
    """Validate one parsed line; ``where`` (``file:line``) locates any error."""
    missing = [k for k in REQUIRED_FIELDS if k not in record]
    if missing:
        raise DataError(
            f"{where}: missing field(s) {', '.join(map(repr, missing))} (the row has: "
            f"{', '.join(map(repr, record)) or 'no field'})"
        )
    difficulty = record.get("difficulty")
    if difficulty is not None:
        difficulty = _typed(record, "difficulty", (int,), where)
        if difficulty < 0:  # metadata keeps unknown difficulty as -1, in no sampling bin
            raise DataError(f"{where}: field 'difficulty' must be 0 or more, got {difficulty}")
    return Example(
        instruction=_typed(record, "instruction", (str,), where),
        output=_typed(record, "output", (str,), where),
        problem_id=str(_typed(record, "problem_id", (str, int), where)),
        is_correct=_typed(record, "is_correct", (bool,), where),
        input=_typed(record, "input", (str,), where) if "input" in record else "",
        difficulty=difficulty,
    )


def example_to_record(example: Example) -> dict:
    """The JSON object of one line (``difficulty`` only when known)."""
    record = {
        "instruction": example.instruction,
        "input": example.input,
        "output": example.output,
        "problem_id": example.problem_id,
        "is_correct": example.is_correct,
    }
    if example.difficulty is not None:
        record["difficulty"] = example.difficulty
    return record


def write_jsonl(path: str | Path, examples: list[Example]) -> Path:
    """Write ``examples`` one per line, replacing ``path`` whole (``wmtp.atomic``)."""
    from wmtp.atomic import write_lines

    return write_lines(
        path, (json.dumps(example_to_record(e), ensure_ascii=False) + "\n" for e in examples)
    )
