"""Validation of merged recipe data: pydantic errors become located, readable problems.

Pydantic locates errors by model path, with the tag of each tagged union in it
(``weighting.td.gamma``); the problems here use the recipe's own dotted keys
(``weighting.gamma``), the position where the key was written, and did-you-mean suggestions
drawn from the schema.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import typing
from collections.abc import Iterator
from typing import Any

from wmtp.recipe.errors import Problem, RecipeProblems, did_you_mean
from wmtp.recipe.load import Source, Tree, dotted, problem_at
from wmtp.recipe.positions import Path


def validate_tree(tree: Tree, name: str) -> Any:
    """The ``Recipe`` of merged ``tree``; ``RecipeProblems`` with every problem otherwise."""
    from pydantic import ValidationError

    from wmtp.recipe.schema import Recipe

    try:
        with _without_pydantic_plugins():
            return Recipe.model_validate(tree.data)
    except ValidationError as exc:
        errors = exc.errors(include_url=False)
        problems = [_in_file(p, name) for err in errors for p in _problems(err, tree)]
        problems.sort(key=lambda p: (p.file or "~", p.line or 0, p.column or 0, p.key))
        raise RecipeProblems(name, problems) from None


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


# --- one pydantic error -> problems -------------------------------------------------------------


def _problems(err: dict, tree: Tree) -> list[Problem]:
    path, section = _recipe_path(err["loc"], tree.data)
    if err["type"] == "cross_field":
        return [_rule_problem(path, p, tree) for p in err["ctx"]["problems"]]
    where = _source_near(path, tree)
    explain = _EXPLAINERS.get(err["type"], _other_problem)
    return [explain(err, path, section, where, tree)]


def _unknown_key(err: dict, path: Path, section: Any, where: Any, tree: Tree) -> Problem:
    known = _field_names(section)
    hints = did_you_mean(str(path[-1]), known)
    expected = None if hints or not known else f"one of {', '.join(known)}"
    return problem_at(where, dotted(path), "unknown key", expected=expected, suggestions=hints)


def _unknown_kind(err: dict, path: Path, section: Any, where: Any, tree: Tree) -> Problem:
    tags = _union_tags(section, path[-1])
    where = tree.sources.get((*path, "kind"), where)
    key = dotted((*path, "kind"))
    if err["type"] == "union_tag_not_found":
        return problem_at(where, key, "missing", expected=f"one of {', '.join(tags)}")
    tag = err["ctx"]["tag"]
    hints = did_you_mean(tag, tags)
    return problem_at(
        where, key, f"unknown kind {tag!r}", expected=", ".join(tags), suggestions=hints
    )


def _unknown_choice(err: dict, path: Path, section: Any, where: Any, tree: Tree) -> Problem:
    options = _split_expected(err["ctx"]["expected"])
    value = err["input"]
    hints = did_you_mean(value, options) if isinstance(value, str) else ()
    message = f"{value!r} is not allowed"
    return problem_at(where, dotted(path), message, expected=", ".join(options), suggestions=hints)


def _missing(err: dict, path: Path, section: Any, where: Any, tree: Tree) -> Problem:
    return problem_at(where, dotted(path), "missing required key")


def _other_problem(err: dict, path: Path, section: Any, where: Any, tree: Tree) -> Problem:
    return problem_at(where, dotted(path), _describe(err))


_EXPLAINERS = {
    "extra_forbidden": _unknown_key,
    "union_tag_invalid": _unknown_kind,
    "union_tag_not_found": _unknown_kind,
    "literal_error": _unknown_choice,
    "missing": _missing,
}
"""pydantic error type -> the function that turns it into a problem (others: its message)."""


def _rule_problem(section_path: Path, problem: dict, tree: Tree) -> Problem:
    fields = [(*section_path, *field.split(".")) for field in problem["fields"]]
    where = next((tree.sources[f] for f in fields if f in tree.sources), None)
    if where is None:
        where = _source_near(fields[0], tree)
    return problem_at(where, dotted(fields[0]), problem["message"])


def _describe(err: dict) -> str:
    message = err["msg"]
    value = err.get("input")
    if isinstance(value, (str, int, float, bool)) and not message.startswith("Value error"):
        message += f", got {value!r}"
    return message.removeprefix("Value error, ")


def _split_expected(text: str) -> list[str]:
    """``"'a', 'b' or 'c'"`` -> ``["a", "b", "c"]`` (pydantic's way of listing options)."""
    parts = text.replace(" or ", ", ").split(", ")
    return [p.strip().strip("'\"") for p in parts if p.strip()]


def _source_near(path: Path, tree: Tree) -> Source | None:
    """The source of ``path`` or of its nearest ancestor written somewhere."""
    for end in range(len(path), 0, -1):
        if path[:end] in tree.sources:
            return tree.sources[path[:end]]
    return None


# --- walking the schema beside the data ---------------------------------------------------------


def _recipe_path(loc: tuple, data: dict) -> tuple[Path, type | None]:
    """Pydantic's ``loc`` without union tags, and the section class at its parent."""
    from wmtp.recipe.schema import Recipe

    path: list[str | int] = []
    node: Any = data
    section: Any = Recipe
    parent_section: Any = Recipe
    for part in loc:
        if isinstance(node, dict) and part not in node and node.get("kind") == part:
            continue  # the tag of a tagged union: not a key of the recipe
        path.append(part)
        parent_section = section
        section = _field_type(section, part, node.get(part) if isinstance(node, dict) else None)
        node = node.get(part) if isinstance(node, dict) else None
    return tuple(path), parent_section


def _field_type(section: Any, name: Any, value: Any) -> Any:
    """The section class of field ``name`` of ``section`` (the member chosen by ``value.kind``)."""
    fields = getattr(section, "model_fields", None)
    if not fields or name not in fields:
        return None
    return _section_class(fields[name].annotation, value)


def _section_class(annotation: Any, value: Any) -> Any:
    from pydantic import BaseModel

    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    members = [m for m in typing.get_args(annotation) if m is not type(None)]
    if typing.get_origin(annotation) is typing.Annotated:
        members = members[:1]
    models = [c for m in members if (c := _section_class(m, value)) is not None]
    kind = value.get("kind") if isinstance(value, dict) else None
    for model in models:
        tag = model.model_fields.get("kind")
        if kind is None or (tag is not None and tag.default == kind):
            return model
    return models[0] if models else None


def _union_tags(section: Any, name: Any) -> list[str]:
    """The ``kind`` values of the tagged union that field ``name`` of ``section`` holds."""
    field = getattr(section, "model_fields", {}).get(name)
    tags: list[str] = []
    todo = [field.annotation] if field is not None else []
    while todo:
        annotation = todo.pop(0)
        kind = getattr(annotation, "model_fields", {}).get("kind")
        if kind is not None:
            tags.append(kind.default)
        else:
            todo += list(typing.get_args(annotation))
    return tags


def _field_names(section: Any) -> list[str]:
    return list(getattr(section, "model_fields", {}) or {})
