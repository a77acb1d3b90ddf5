"""The recipe's JSON Schema (``schemas/recipe.schema.json``), for editors that complete and check
TOML keys (Taplo / Even Better TOML read the ``#:schema`` line every recipe starts with).

Editors check each file alone, but a recipe may extend another and leave out what it inherits.
So the file schema requires nothing, and tagged unions become ``anyOf`` (a table that omits its
inherited ``kind`` matches several members); unknown keys, unknown kinds, wrong types and
out-of-range values are still flagged. ``wmtp validate`` checks the merged recipe in full.
Draft-07, the newest dialect Taplo's validator fully supports.
"""

from __future__ import annotations

import json
from typing import Any

SCHEMA_PATH = "schemas/recipe.schema.json"
"""Where ``wmtp schema`` writes it, relative to the repository root."""

JSON_SCHEMA_DIALECT = "http://json-schema.org/draft-07/schema#"


def recipe_json_schema() -> dict[str, Any]:
    """The JSON Schema of a recipe file, every property described by its field's docstring."""
    from wmtp.recipe.docs import class_doc, field_docs
    from wmtp.recipe.schema import Recipe, Section

    schema = Recipe.model_json_schema(ref_template="#/definitions/{model}")
    classes = {cls.__name__: cls for cls in _sections(Recipe, Section)}
    for name, definition in [("Recipe", schema), *schema.get("$defs", {}).items()]:
        cls = classes.get(name)
        if cls is None:
            continue
        if doc := class_doc(cls):
            definition["description"] = doc
        docs = field_docs(cls)
        for field, prop in definition.get("properties", {}).items():
            if field in docs:
                prop["description"] = docs[field]
    schema["definitions"] = schema.pop("$defs", {})
    _for_partial_files(schema)
    return {"$schema": JSON_SCHEMA_DIALECT, "title": "wmtp recipe", **schema}


def _for_partial_files(node: Any) -> None:
    """Drop ``required``, turn ``oneOf`` into ``anyOf`` and drop OpenAPI's ``discriminator``."""
    if isinstance(node, dict):
        node.pop("required", None)
        node.pop("discriminator", None)
        if "oneOf" in node:
            node["anyOf"] = node.pop("oneOf")
        for value in node.values():
            _for_partial_files(value)
    elif isinstance(node, list):
        for value in node:
            _for_partial_files(value)


def render_json_schema() -> str:
    """The schema file's text (stable: sorted definitions, two-space indent, final newline)."""
    schema = recipe_json_schema()
    schema["definitions"] = dict(sorted(schema["definitions"].items()))
    return json.dumps(schema, indent=2, ensure_ascii=False) + "\n"


def _sections(root: type, base: type) -> list[type]:
    """Every section class reachable from ``root`` through its fields' annotations."""
    import typing

    found: list[type] = []
    todo = [root]
    while todo:
        cls = todo.pop()
        if cls in found:
            continue
        found.append(cls)
        for field in cls.model_fields.values():
            todo += [
                t
                for t in _types_in(field.annotation, typing)
                if isinstance(t, type) and issubclass(t, base)
            ]
    return found


def _types_in(annotation: Any, typing: Any) -> list[Any]:
    args = typing.get_args(annotation)
    return [annotation, *(t for a in args for t in _types_in(a, typing))]
