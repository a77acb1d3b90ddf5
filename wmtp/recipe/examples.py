"""What a recipe should say instead: types in words and example values, made from the schema.

A problem's message names what the key expects (``an integer greater than 0``), what the recipe
gave (``the string "100"``) and what to write: the value the recipe meant when it converts
(``max_steps = 100``), else the field's default or a placeholder that satisfies its bounds.
"""

from __future__ import annotations

import typing
from typing import Any, Literal

import annotated_types as at

from wmtp.recipe.annotations import (
    NO_DEFAULT,
    field_default,
    field_type,
    is_section,
    members,
    section_for,
    sections,
    tag_of,
    unwrap,
)
from wmtp.recipe.dump import toml_value

NOTHING: Any = object()
"""No value: nothing converts, or nothing is known."""

PLACEHOLDER = "..."
"""The example of a string the recipe must choose (a name, a path)."""


# --- types in words ----------------------------------------------------------------------------


def describe(tp: Any) -> str:
    """``tp`` in words, after "expected": ``an integer greater than 0``, ``a table``, ..."""
    options = members(tp)
    if sections(tp):
        return "a table"
    return " or ".join(_noun(*unwrap(option)) for option in options)


_NOUNS = {bool: "boolean", int: "integer", float: "number", str: "string"}


def _noun(base: Any, constraints: list[Any], plural: bool = False) -> str:
    origin, args = typing.get_origin(base), typing.get_args(base)
    if origin is Literal:
        return ("values, each " if plural else "") + "one of " + ", ".join(map(toml_value, args))
    if origin is list:
        text = "an array of " + _noun(*unwrap(args[0]), plural=True)
        return _plural(text, plural) + _length(constraints)
    if origin is tuple:
        return _plural(f"an array of {len(args)} " + _noun(*unwrap(args[0]), plural=True), plural)
    if origin is dict or is_section(base):
        return _plural("a table", plural)
    noun = _NOUNS.get(base, "value")
    article = "an" if noun[0] in "aeiou" else "a"
    return (f"{noun}s" if plural else f"{article} {noun}") + _limits(constraints)


def _plural(text: str, plural: bool) -> str:
    return text.replace("an array", "arrays", 1).replace("a table", "tables", 1) if plural else text


_BOUNDS = (
    (at.Gt, "gt", "greater than"),
    (at.Ge, "ge", "at least"),
    (at.Lt, "lt", "less than"),
    (at.Le, "le", "at most"),
)


def _limits(constraints: list[Any]) -> str:
    """`` greater than 0 and at most 1``: a number's bounds, a string's length and pattern."""
    words = [
        f"{phrase} {toml_value(getattr(c, name))}"
        for c in constraints
        for kind, name, phrase in _BOUNDS
        if isinstance(c, kind)
    ]
    words += [
        f"of at most {c.max_length} characters" for c in constraints if isinstance(c, at.MaxLen)
    ]
    words += [f"matching {c.pattern}" for c in constraints if getattr(c, "pattern", None)]
    return (" " + " and ".join(words)) if words else ""


def _length(constraints: list[Any]) -> str:
    low = next((c.min_length for c in constraints if isinstance(c, at.MinLen)), 0)
    return f" with at least {low} entr{'y' if low == 1 else 'ies'}" if low else ""


def got(value: Any) -> str:
    """What the recipe gave, in words: ``the string "100"``, ``the integer 0``, ``a table``."""
    if isinstance(value, dict):
        return "a table"
    kind = {bool: "boolean", int: "integer", float: "number", str: "string", list: "array"}
    text = toml_value(value) if isinstance(value, (*kind,)) else str(value)
    text = text if len(text) <= 40 else text[:37] + "..."
    return f"the {kind.get(type(value), type(value).__name__)} {text}"


# --- example values ----------------------------------------------------------------------------


def example(tp: Any, default: Any = NO_DEFAULT, given: Any = None) -> Any:
    """A valid value of ``tp``: its example table, else ``default``, else a placeholder.

    ``given`` (what the recipe wrote) picks the member of a tagged union whose ``kind`` it names.
    """
    if sections(tp):
        kind = given if isinstance(given, str) else getattr(default, "kind", None)
        return example_table(section_for(tp, {"kind": kind}))
    if default is NO_DEFAULT or default is None or default in ([], {}, ()):
        return placeholder(tp)
    return default


def example_table(section: Any) -> dict:
    """A short valid table of ``section``: its ``kind``, its required fields, or its first field
    when none is required (``{ kind = "cosine", warmup_steps = 0 }``)."""
    table: dict[str, Any] = {} if tag_of(section) is None else {"kind": tag_of(section)}
    fields = {n: i for n, i in section.model_fields.items() if n not in ("kind", "extends")}
    required = {n: example(field_type(i)) for n, i in fields.items() if i.is_required()}
    if not required and fields:
        name, info = next(iter(fields.items()))
        required[name] = example(field_type(info), field_default(info))
    return table | required


def placeholder(tp: Any) -> Any:
    """A value of ``tp`` within its bounds: 1 where allowed, ``"..."`` for a string, ..."""
    base, constraints = unwrap(members(tp)[0])
    origin, args = typing.get_origin(base), typing.get_args(base)
    if origin is Literal:
        return args[0]
    if origin is list:
        low = next((c.min_length for c in constraints if isinstance(c, at.MinLen)), 1)
        return [placeholder(args[0])] * max(low, 1)
    if origin is tuple:
        return [placeholder(a) for a in args]
    if origin is dict:
        return {"name": placeholder(args[1])}
    if is_section(base):
        return example_table(base)
    if base in (int, float):
        return base(_number_within(constraints))
    return True if base is bool else PLACEHOLDER


def _number_within(constraints: list[Any]) -> float:
    """1 when the bounds allow it, else a value between or next to them."""
    bounds = {
        op: getattr(c, op)
        for c in constraints
        for op in _COMPARE
        if getattr(c, op, None) is not None
    }
    low, high = bounds.get("ge", bounds.get("gt")), bounds.get("le", bounds.get("lt"))
    middle = (low + high) / 2 if low is not None and high is not None else None
    tries = [1, middle, low, high]
    tries += [low + 1 if low is not None else None, high - 1 if high is not None else None]
    fits = (x for x in tries if x is not None and all(_COMPARE[o](x, b) for o, b in bounds.items()))
    return next(fits, 1)


_COMPARE = {
    "gt": lambda x, b: x > b,
    "ge": lambda x, b: x >= b,
    "lt": lambda x, b: x < b,
    "le": lambda x, b: x <= b,
}


# --- the value a recipe meant ------------------------------------------------------------------


def intended(value: Any, tp: Any) -> Any:
    """The value of type ``tp`` a recipe most likely meant by ``value``: ``"100"`` -> 100,
    ``"yes"`` -> true, ``10.0`` -> 10, ``"humaneval"`` -> ``["humaneval"]``; ``NOTHING`` when
    none fits (tables never convert)."""
    if sections(tp) or value is None:
        return NOTHING
    tries = _conversions(value)
    tries += [again for c in tries for again in _conversions(c)]
    tries += [[c] for c in (value, *tries) if not isinstance(c, (list, dict))]
    return next((c for c in tries if _fits(c, tp)), NOTHING)


_BOOL_WORDS = {"true": True, "yes": True, "on": True, "false": False, "no": False, "off": False}


def _conversions(value: Any) -> list[Any]:
    """Values of other TOML types that ``value`` may stand for, one step away."""
    if isinstance(value, str):
        word = value.strip().lower()
        return [_BOOL_WORDS[word]] if word in _BOOL_WORDS else _toml_of(value.strip())
    if isinstance(value, bool):
        return [toml_value(value)]
    if isinstance(value, float):
        return ([int(value)] if value.is_integer() else []) + [toml_value(value)]
    if isinstance(value, int):
        return ([bool(value)] if value in (0, 1) else []) + [str(value)]
    return []


def _toml_of(text: str) -> list[Any]:
    """``[v]`` when ``text`` is one TOML value (``100``, ``1e-5``, ``[1, 2]``), else ``[]``."""
    from wmtp.recipe import _toml

    try:
        return [_toml.loads(f"v = {text}")["v"]] if text and "\n" not in text else []
    except _toml.TOMLDecodeError:
        return []


def _fits(value: Any, tp: Any) -> bool:
    """Whether ``value`` is a valid ``tp`` as a recipe value (strictly, bounds included)."""
    from pydantic import ConfigDict, TypeAdapter, ValidationError

    try:
        config = ConfigDict(strict=True, allow_inf_nan=False)  # as the recipe's sections
        TypeAdapter(tp, config=config).validate_python(value)
    except ValidationError:
        return False
    return True
