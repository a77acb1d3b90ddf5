"""Pydantic's errors about a recipe, as located problems that say what to write instead.

Pydantic locates errors by model path, with the tag of each union in it
(``weighting.td.gamma``, ``parallel.activation_checkpointing.bool``) and words them for Python
programmers (``Input should be a valid dictionary or instance of ScheduleSpec``). The problems
here use the recipe's own dotted keys (``weighting.gamma``), the position where the key was
written, and TOML words: what the key expects, what the recipe gave, and what to write
(``expected an integer greater than 0, got the string "100" (write max_steps = 100)``), with
did-you-mean suggestions drawn from the whole schema.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any

from wmtp.recipe.annotations import (
    NO_DEFAULT,
    child_type,
    field_default,
    is_union,
    literal_values,
    schema_keys,
    section_for,
    sections,
    tag_of,
)
from wmtp.recipe.dump import toml_value
from wmtp.recipe.errors import Problem, did_you_mean
from wmtp.recipe.examples import NOTHING, PLACEHOLDER, describe, example, got, intended
from wmtp.recipe.load import Source, Tree, dotted, problem_at
from wmtp.recipe.positions import Path


def problems_of(errors: list[dict], tree: Tree) -> list[Problem]:
    """Every problem behind pydantic's ``errors`` about merged ``tree``, each once."""
    problems = [p for err in errors for p in _problems(err, tree)]
    problems += _rules_behind_missing_keys(errors, tree)
    return list(dict.fromkeys(problems))


# --- where an error is, in the recipe's terms ---------------------------------------------------


@dataclass(frozen=True)
class Spot:
    """What a pydantic error's ``loc`` points at in the recipe."""

    path: Path
    """The recipe's keys (and array indices), without union tags."""
    section: Any
    """The section class whose key ``path[-1]`` is (``None`` inside arrays and free tables)."""
    annotation: Any
    """The type the value at ``path`` must have (``None`` when unknown)."""
    default: Any = NO_DEFAULT
    """The default of the field at ``path`` (``NO_DEFAULT`` when required or not a field)."""


def locate(loc: tuple, data: dict) -> Spot:
    """Walk the schema beside ``data`` along pydantic's ``loc``, skipping the union tags in it."""
    from wmtp.recipe.schema import Recipe

    path: list[str | int] = []
    node: Any = data
    tp: Any = Recipe
    section: Any = Recipe
    default: Any = NO_DEFAULT
    for part in loc:
        if _is_union_tag(tp, node, part):
            continue
        section = section_for(tp, node)
        info = section.model_fields.get(part) if section and isinstance(part, str) else None
        default = field_default(info) if info is not None else _item(default, part)
        tp = child_type(tp, part, node) if tp is not None else None
        node = value_at(node, (part,))
        path.append(part)
    return Spot(tuple(path), section, tp, default)


def _is_union_tag(tp: Any, node: Any, part: Any) -> bool:
    """Whether ``part`` names a member of union ``tp`` (the ``kind`` of a tagged union, or
    pydantic's name of a member type such as ``bool`` or ``constrained-int``)."""
    if tp is None or not is_union(tp):
        return False
    if sections(tp):
        return isinstance(node, dict) and part not in node and node.get("kind") == part
    return isinstance(part, str)


def _item(default: Any, part: str | int) -> Any:
    """The default of an array item or table value, from the default of its array or table."""
    if isinstance(default, (list, tuple)) and isinstance(part, int) and part < len(default):
        return default[part]
    if isinstance(default, dict) and part in default:
        return default[part]
    return NO_DEFAULT


def value_at(data: Any, path: Path) -> Any:
    """The value at ``path`` inside ``data`` (``None`` where there is none)."""
    for part in path:
        in_table = isinstance(data, dict) and part in data
        in_array = isinstance(data, list) and isinstance(part, int) and part < len(data)
        if not (in_table or in_array):
            return None
        data = data[part]
    return data


def _source_near(path: Path, tree: Tree) -> Source | None:
    """The source of ``path``; else of the first value written below it (``--set foo.bar=1``
    makes the table ``foo`` without writing it); else of its nearest ancestor written somewhere."""
    if path and path not in tree.sources:
        below = (source for p, source in tree.sources.items() if p[: len(path)] == path)
        if (first := next(below, None)) is not None:
            return first
    for end in range(len(path), 0, -1):
        if path[:end] in tree.sources:
            return tree.sources[path[:end]]
    return None


# --- one pydantic error -> problems -------------------------------------------------------------


def _problems(err: dict, tree: Tree) -> list[Problem]:
    spot = locate(err["loc"], tree.data)
    if err["type"] == "cross_field":
        return [_rule_problem(spot.path, p, tree) for p in err["ctx"]["problems"]]
    if err["type"] == "missing" and spot.path and isinstance(spot.path[-1], int):
        # an item of a tuple is missing: the array is too short
        return [_wrong_value(err, locate(err["loc"][:-1], tree.data), tree)]
    explain = _EXPLAINERS.get(err["type"], _wrong_value)
    if err["type"] == "literal_error" and is_union(spot.annotation):
        explain = _wrong_value  # `true | "auto"`: one message for every member's error
    return [explain(err, spot, tree)]


def _unknown_key(err: dict, spot: Spot, tree: Tree) -> Problem:
    known = list(getattr(spot.section, "model_fields", {}) or {})
    where = _source_near(spot.path, tree)
    kinds = _kinds_with_key(err["loc"], tree, str(spot.path[-1]))
    if kinds:  # a key of another kind of this section: say which, not a look-alike elsewhere
        kind = value_at(tree.data, (*spot.path[:-1], "kind"))
        message = f"unknown key for kind = {toml_value(kind)}; it is a key of " + " and ".join(
            f"kind = {toml_value(k)}" for k in kinds
        )
        return problem_at(where, dotted(spot.path), message)
    hints = _keys_like(str(spot.path[-1]), known, spot.path)
    expected = None if hints or not known else f"one of {', '.join(known)}"
    return problem_at(where, dotted(spot.path), "unknown key", expected=expected, suggestions=hints)


def _kinds_with_key(loc: tuple, tree: Tree, name: str) -> list[str]:
    """The kinds of the tagged union whose member holds the unknown key ``loc`` that have a key
    ``name`` (none when the section is no member of a tagged union)."""
    union = locate(loc[:-1], tree.data).annotation
    members = sections(union) if union is not None and is_union(union) else []
    return [tag_of(m) for m in members if name in m.model_fields]


def _keys_like(name: str, known: list[str], path: Path) -> tuple[str, ...]:
    """Keys spelt like ``name``, best first: of its own table (``known``, bare), and of other
    tables (dotted: ``model.policy.n_future_tokens``) when they match at least as well; only the
    keys of that very name when there are some."""
    from wmtp.recipe.schema import Recipe

    here = dotted(path[:-1])
    others = [k for k in schema_keys(Recipe) if k.rpartition(".")[0] != here]
    own = _scored(name, {k: k for k in known})
    best_own = own[0][0] if own else 0.0
    elsewhere = _scored(name, {k: k.rpartition(".")[2] for k in others})
    elsewhere = [s for s in elsewhere if s[0] >= best_own]
    ranked = sorted([*own, *elsewhere], key=lambda s: -s[0])  # stable: own keys first on ties
    if ranked and ranked[0][0] == 1.0:
        ranked = [s for s in ranked if s[0] == 1.0]
    return tuple(key for _, key in ranked[:3])


def _scored(name: str, words: dict[str, str]) -> list[tuple[float, str]]:
    """``(similarity, key)`` of each key whose word is spelt like ``name``, best first."""
    scored = [(_similarity(name, word), key) for key, word in words.items()]
    return sorted((s for s in scored if s[0] >= 0.6), key=lambda s: -s[0])


def _similarity(a: str, b: str) -> float:
    import difflib

    return difflib.SequenceMatcher(None, a.lower(), b.lower()).ratio()


def _unknown_kind(err: dict, spot: Spot, tree: Tree) -> Problem:
    members = sections(spot.annotation)
    tags = [tag_of(s) for s in members]
    expected = "one of " + ", ".join(map(toml_value, tags))
    where = tree.sources.get((*spot.path, "kind"), _source_near(spot.path, tree))
    key = dotted((*spot.path, "kind"))
    table = value_at(tree.data, spot.path)
    if err["type"] == "union_tag_not_found":
        keys = set(table) if isinstance(table, dict) else set()
        fitting = next((s for s in members if keys <= set(s.model_fields)), members[0])
        message = f"missing required key (add kind = {toml_value(tag_of(fitting))})"
        return problem_at(where, key, message, expected=expected)
    tag = table.get("kind") if isinstance(table, dict) else err["ctx"]["tag"]
    hints = did_you_mean(tag, tags) if isinstance(tag, str) else ()
    message = f"unknown kind {_toml_or_got(tag)}"
    return problem_at(where, key, message, expected=expected, suggestions=hints)


def _unknown_choice(err: dict, spot: Spot, tree: Tree) -> Problem:
    options = literal_values(spot.annotation) or _split_expected(err["ctx"]["expected"])
    value = err["input"]
    hints = did_you_mean(value, options) if isinstance(value, str) else ()
    expected = "one of " + ", ".join(map(toml_value, options))
    message = f"{_toml_or_got(value)} is not allowed"
    where = _source_near(spot.path, tree)
    return problem_at(where, dotted(spot.path), message, expected=expected, suggestions=hints)


def _toml_or_got(value: Any) -> str:
    """A string or number as TOML writes it (``"rho"``, ``16``); anything else in words."""
    is_scalar = isinstance(value, (str, int, float)) and not isinstance(value, bool)
    return toml_value(value) if is_scalar else got(value)


def _missing(err: dict, spot: Spot, tree: Tree) -> Problem:
    value = example(spot.annotation, spot.default)
    if sections(spot.annotation):
        entries = ", ".join(f"{k} = {toml_value(v)}" for k, v in value.items())
        message = f"missing required table (add [{dotted(spot.path)}] {entries})"
    else:
        message = f"missing required key (add {spot.path[-1]} = {toml_value(value)})"
    return problem_at(_source_near(spot.path, tree), dotted(spot.path), message)


def _wrong_value(err: dict, spot: Spot, tree: Tree) -> Problem:
    """A value of the wrong type, out of bounds or of the wrong length: what the key expects,
    what the recipe gave and what to write."""
    where = _source_near(spot.path, tree)
    if spot.annotation is None:
        return problem_at(where, dotted(spot.path), _pydantic_message(err))
    value = value_at(tree.data, spot.path)
    value = err.get("input") if value is None else value
    message = f"expected {describe(spot.annotation)}, got {got(value)}"
    return problem_at(where, dotted(spot.path), f"{message} ({_what_to_write(spot, value, tree)})")


def _what_to_write(spot: Spot, value: Any, tree: Tree) -> str:
    """``write key = <the value meant>`` when ``value`` converts, else ``e.g. key = <example>``;
    an array item or table value is shown inside the whole value of its key."""
    meant = intended(value, spot.annotation)
    if meant is not NOTHING:
        verb, new = "write", meant
    else:
        verb, new = "e.g.", example(spot.annotation, spot.default, value)
    last = max((i for i, part in enumerate(spot.path) if isinstance(part, str)), default=-1)
    if last < 0:
        return f"{verb} {toml_value(new)}"
    if inner := spot.path[last + 1 :]:
        whole = copy.deepcopy(value_at(tree.data, spot.path[: last + 1]))
        _put(whole, inner, new)
        new = whole
    return f"{verb} {spot.path[last]} = {toml_value(new)}"


def _put(data: Any, path: Path, value: Any) -> None:
    """Set ``value`` at ``path`` inside ``data`` (every container on the way exists)."""
    for part in path[:-1]:
        data = data[part]
    data[path[-1]] = value


def _pydantic_message(err: dict) -> str:
    """Pydantic's own words, for errors outside the schema's annotations (none are expected)."""
    message = err["msg"].removeprefix("Value error, ").replace("Input should be", "expected")
    return message.replace("a valid dictionary", "a table").split(" or instance of")[0]


_EXPLAINERS = {
    "extra_forbidden": _unknown_key,
    "union_tag_invalid": _unknown_kind,
    "union_tag_not_found": _unknown_kind,
    "literal_error": _unknown_choice,
    "missing": _missing,
}
"""pydantic error type -> the function that explains it (every other type: ``_wrong_value``)."""


def _rule_problem(section_path: Path, problem: dict, tree: Tree) -> Problem:
    """A broken rule at the first of its fields the recipe sets (that field's key and line),
    saying which of them the recipe never wrote (a default, or a flavour's size)."""
    fields = [(*section_path, *field.split(".")) for field in problem["fields"]]
    field = next((f for f in fields if f in tree.sources), None)
    where = tree.sources[field] if field is not None else _source_near(fields[0], tree)
    unset = [f for f in fields if value_at(tree.data, f) is None]
    message = problem["message"]
    if unset:
        message += f" ({'; '.join(_why_unset(f, tree) for f in unset)})"
    return problem_at(where, dotted(field or fields[0]), message)


def _why_unset(field: Path, tree: Tree) -> str:
    """Why the recipe has no value at ``field``: never written, or dropped with its table when
    a ``--set`` of the table's ``kind`` replaced it whole (``wmtp.recipe.load``)."""
    for depth in range(len(field) - 1, 0, -1):
        kind = tree.sources.get((*field[:depth], "kind"))
        if kind is not None and kind.kind == "cli":
            table = dotted(field[:depth])
            return f"{dotted(field)}: not set: `{kind}` replaced [{table}] whole, its keys too"
    return f"{dotted(field)}: not set in the recipe"


def _split_expected(text: str) -> list[str]:
    """``"'a', 'b' or 'c'"`` -> ``["a", "b", "c"]`` (pydantic's way of listing options)."""
    parts = text.replace(" or ", ", ").split(", ")
    return [p.strip().strip("'\"") for p in parts if p.strip()]


# --- the rules behind missing keys --------------------------------------------------------------


def _rules_behind_missing_keys(errors: list[dict], tree: Tree) -> list[Problem]:
    """What a recipe that only misses keys breaks besides: pydantic runs no rule across sections
    while a key is missing, so a new recipe would learn of ``[model.policy]`` only after adding
    ``[experiment]``. Validated again with each missing key filled by its example."""
    from pydantic import ValidationError

    from wmtp.recipe.schema import Recipe

    if any(err["type"] != "missing" for err in errors):
        return []
    filled = copy.deepcopy(tree.data)
    for err in errors:
        spot = locate(err["loc"], filled)
        if any(isinstance(part, int) for part in spot.path):
            return []
        _put(filled, spot.path, _valid_strings(example(spot.annotation, spot.default)))
    try:
        Recipe.model_validate(filled)
    except ValidationError as exc:
        filled_tree = Tree(filled, tree.sources)
        return [p for err in exc.errors(include_url=False) for p in _problems(err, filled_tree)]
    return []


def _valid_strings(value: Any) -> Any:
    """``value`` with the ``"..."`` placeholder, which no name pattern takes, as ``"x"``."""
    if isinstance(value, dict):
        return {k: _valid_strings(v) for k, v in value.items()}
    return "x" if value == PLACEHOLDER else value
