"""Writing recipes: the resolved recipe as TOML that loads back to the identical object.

A small writer of our own rather than ``tomli_w``: recipes hold only tables, strings, numbers,
booleans and short arrays, and people read the result (``wmtp show``, every run's
``recipe.toml``), so arrays stay on one line and ``kind`` comes first in its table.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable
from typing import Any

_BARE_KEY = re.compile(r"^[A-Za-z0-9_-]+$")


def recipe_data(recipe: Any) -> dict:
    """The resolved recipe as plain TOML-able data: every value explicit, unset ones left out
    (TOML has no null, and every field that may be unset defaults to unset); ``kind`` first."""
    return _kind_first(recipe.model_dump(mode="json", exclude_none=True))


def dump_recipe(recipe: Any) -> str:
    """``recipe`` as TOML text; ``load_recipe`` of that text gives an equal ``Recipe``."""
    return dumps(recipe_data(recipe))


Comment = Callable[[tuple[str, ...]], "str | None"]


def dumps(data: dict, comment: Comment | None = None) -> str:
    """TOML text of ``data``: scalars and arrays of a table, then its sub-tables as sections.

    ``comment(path)`` may return a comment for the value at ``path``, written after it.
    """
    return "\n".join(_table_lines(data, (), comment)).strip() + "\n"


def _table_lines(data: dict, path: tuple[str, ...], comment: Comment | None) -> list[str]:
    scalars = {k: v for k, v in data.items() if not isinstance(v, dict)}
    tables = {k: v for k, v in data.items() if isinstance(v, dict)}
    lines: list[str] = []
    if path and (scalars or not tables):
        lines.append(f"[{'.'.join(_key(p) for p in path)}]")
    for key, value in scalars.items():
        line = f"{_key(key)} = {toml_value(value)}"
        note = comment((*path, key)) if comment else None
        lines.append(f"{line}  # {note}" if note else line)
    if lines:
        lines.append("")
    for key, value in tables.items():
        lines += _table_lines(value, (*path, key), comment)
    return lines


def _key(key: str) -> str:
    return key if _BARE_KEY.match(key) else _basic_string(key)


def _basic_string(text: str) -> str:
    """``text`` as a TOML basic string, in ASCII (whatever the locale a file is written in):
    JSON's escapes for quotes, backslashes and control characters (TOML has the same), and
    ``\\uXXXX`` / ``\\UXXXXXXXX`` for every other character past ``~``. Not ``json.dumps``
    alone: it writes a character beyond U+FFFF as a surrogate pair, which TOML refuses, and DEL
    raw, which TOML forbids."""
    quoted = json.dumps(text, ensure_ascii=False)
    return "".join(c if c < "\x7f" else _escaped(c) for c in quoted)


def _escaped(character: str) -> str:
    code = ord(character)
    return f"\\u{code:04x}" if code <= 0xFFFF else f"\\U{code:08x}"


def toml_value(value: Any) -> str:
    """``value`` as TOML (a table inline, as inside arrays)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        if math.isinf(value):
            return "inf" if value > 0 else "-inf"
        return repr(value)
    if isinstance(value, str):
        return _basic_string(value)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    if isinstance(value, dict):  # inside arrays (and inline in problem messages)
        return "{ " + ", ".join(f"{_key(k)} = {toml_value(v)}" for k, v in value.items()) + " }"
    raise TypeError(f"cannot write {type(value).__name__} to TOML: {value!r}")


def _kind_first(data: Any) -> Any:
    if isinstance(data, dict):
        ordered = {"kind": data["kind"]} if "kind" in data else {}
        ordered.update({k: _kind_first(v) for k, v in data.items() if k != "kind"})
        return ordered
    if isinstance(data, list):
        return [_kind_first(v) for v in data]
    return data
