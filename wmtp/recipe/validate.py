"""Validation of merged recipe data: a ``Recipe``, or every problem located and explained
(``wmtp.recipe.problems`` turns pydantic's errors into them)."""

from __future__ import annotations

import contextlib
import dataclasses
import os
from collections.abc import Iterator
from typing import Any

from wmtp.recipe.errors import Problem, RecipeProblems
from wmtp.recipe.load import Source, Tree, dotted
from wmtp.recipe.positions import Path


def validate_tree(tree: Tree, name: str, *, evaluating: bool = False) -> Any:
    """The ``Recipe`` of merged ``tree``; ``RecipeProblems`` with every problem otherwise.
    ``evaluating``: read to evaluate, its rules of training unchecked (``wmtp.recipe._base``)."""
    from pydantic import ValidationError

    from wmtp.recipe._base import EVALUATING
    from wmtp.recipe.schema import Recipe

    try:
        with _without_pydantic_plugins():
            return Recipe.model_validate(tree.data, context={EVALUATING: evaluating})
    except ValidationError as exc:
        errors = exc.errors(include_url=False)
    from wmtp.recipe.problems import problems_of

    problems = [_in_file(p, name) for p in problems_of(errors, tree)]
    problems.sort(key=lambda p: (p.file or "~", p.line or 0, p.column or 0, p.key))
    raise RecipeProblems(name, problems)


@contextlib.contextmanager
def _without_pydantic_plugins() -> Iterator[None]:
    """Build the schema's validators without pydantic plugins (as Typer does for its options).

    The recipe schema is built on first use, inside ``model_validate``; with plugins enabled,
    pydantic first scans the entry points of every installed distribution (about 75 M
    instructions, more than parsing every recipe). Recipes validate the same wherever wmtp is
    installed.
    """
    previous = os.environ.get(_NO_PLUGINS)
    os.environ[_NO_PLUGINS] = "1"
    try:
        yield
    finally:
        if previous is None:
            del os.environ[_NO_PLUGINS]
        else:
            os.environ[_NO_PLUGINS] = previous


_NO_PLUGINS = "PYDANTIC_DISABLE_PLUGINS"


def _in_file(problem: Problem, name: str) -> Problem:
    """A problem with no position (a missing top-level table) belongs to the recipe file."""
    if problem.file is None and problem.origin is None:
        return dataclasses.replace(problem, file=name)
    return problem


def provenance_of(recipe: Any, tree: Tree) -> dict[str, Source]:
    """Dotted key of every value of ``recipe`` -> where it came from (file, --set or default)."""
    from wmtp.recipe.dump import recipe_data

    found: dict[str, Source] = {}
    for path in leaf_paths(recipe_data(recipe)):
        found[dotted(path)] = tree.sources.get(path, Source("default"))
    return found


def leaf_paths(data: dict, prefix: Path = ()) -> list[Path]:
    """Paths of every value that is not a table, in document order."""
    paths: list[Path] = []
    for key, value in data.items():
        if isinstance(value, dict) and value:
            paths += leaf_paths(value, (*prefix, key))
        else:
            paths.append((*prefix, key))
    return paths
