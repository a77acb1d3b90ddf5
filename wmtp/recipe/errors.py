"""Located recipe problems: file:line:column, dotted key, what was expected, did-you-mean.

A recipe's problems are collected into one ``RecipeProblems`` error so a user sees every mistake
at once. Syntax errors, missing ``extends`` files and ``extends`` cycles stop loading and carry a
single problem.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field

from wmtp.errors import RecipeError


@dataclass(frozen=True)
class Problem:
    """One mistake in a recipe, located."""

    file: str | None
    """The file it is in (``None`` for command-line overrides or defaults)."""
    line: int | None
    column: int | None
    key: str
    """Dotted key (``weighting.gamma``); empty for problems of the whole file."""
    message: str
    expected: str | None = None
    """What would have been accepted, when there is a short answer."""
    suggestions: tuple[str, ...] = field(default_factory=tuple)
    """Did-you-mean candidates for unknown keys and kinds."""
    origin: str | None = None
    """Where the value came from when not a file (``--set training.lr=...``)."""

    @property
    def where(self) -> str:
        if self.file is None:
            return self.origin or "<recipe>"
        if self.line is None:
            return self.file
        return f"{self.file}:{self.line}:{self.column or 1}"

    def render(self) -> str:
        text = f"{self.where}: {self.key + ': ' if self.key else ''}{self.message}"
        if self.expected:
            text += f" (expected {self.expected})"
        if self.suggestions:
            text += f"; did you mean {' or '.join(repr(s) for s in self.suggestions)}?"
        if self.file is not None and self.origin:
            text += f" [from {self.origin}]"
        return text

    def to_json(self) -> dict:
        data = asdict(self)
        data["suggestions"] = list(self.suggestions)
        return data


class RecipeProblems(RecipeError):
    """Every problem found in one recipe."""

    def __init__(self, recipe: str, problems: Sequence[Problem]):
        assert problems, "RecipeProblems needs at least one problem"
        self.recipe = recipe
        self.problems = list(problems)
        super().__init__(self.render())

    def render(self) -> str:
        count = len(self.problems)
        head = f"{self.recipe}: {count} problem{'s' if count != 1 else ''}"
        return "\n".join([head, *(f"  {p.render()}" for p in self.problems)])

    def of_recipe(self, recipe: str) -> RecipeProblems:
        """The same problems, reported as problems of ``recipe`` (the one given, when they were
        found reading what it extends or the ``--set`` applied to it)."""
        return RecipeProblems(recipe, self.problems)

    def to_json(self) -> dict:
        return {
            "error": type(self).__name__,
            "recipe": self.recipe,
            "problems": [p.to_json() for p in self.problems],
        }


def did_you_mean(word: str, candidates: Iterable[str], n: int = 3) -> tuple[str, ...]:
    """Close matches of ``word`` among ``candidates`` (case-insensitive), best first."""
    candidates = list(candidates)
    lowered = {c.lower(): c for c in candidates}
    matches = difflib.get_close_matches(word.lower(), list(lowered), n=n, cutoff=0.6)
    return tuple(lowered[m] for m in matches)
