"""Small datasets written by the tests."""

from __future__ import annotations

from wmtp.data.examples import Example
from wmtp.data.jsonl import write_jsonl


def problem_rows(
    n_problems: int, correct: int, incorrect: int, *, difficulty=None
) -> list[Example]:
    """``correct`` + ``incorrect`` solutions of each problem, of varied lengths."""
    rows = []
    for p in range(n_problems):
        for j in range(correct + incorrect):
            ok = j < correct
            body = "x" * (5 + 13 * j)
            d = difficulty(p) if difficulty else None
            rows.append(Example(f"Solve problem {p}.", body, f"P{p}", ok, difficulty=d))
    return rows


def write_dataset(path, rows):
    return write_jsonl(path, rows)
