"""Descriptions of registered components for ``wmtp list``: name, summary, recipe parameters."""

from __future__ import annotations

from typing import Any

from pydantic_core import PydanticUndefined


def describe_entry(entry: Any) -> dict[str, Any]:
    """A registry entry as plain data: kind, name, summary, module and its spec's parameters."""
    from wmtp.recipe.explain import first_sentence

    return {
        "kind": entry.kind,
        "name": entry.name,
        "summary": first_sentence(entry.doc) if entry.doc else "",
        "module": entry.module,
        "parameters": spec_parameters(entry.spec) if entry.spec is not None else [],
    }


def spec_parameters(spec: type) -> list[dict[str, Any]]:
    """The fields of a recipe section: name, type, default and first sentence of the doc."""
    from wmtp.recipe.docs import field_docs
    from wmtp.recipe.explain import first_sentence

    docs = field_docs(spec)
    params = []
    for name, info in spec.model_fields.items():
        if name == "kind":
            continue
        params.append(
            {
                "name": name,
                "type": _type_name(info.annotation),
                "default": _default(info),
                "doc": first_sentence(docs.get(name, "")),
            }
        )
    return params


def _default(info: Any) -> str:
    if info.default_factory is not None:
        value = info.default_factory()
        return repr(value.model_dump() if hasattr(value, "model_dump") else value)
    if info.default is PydanticUndefined:
        return "(required)"
    return repr(info.default)


def _type_name(annotation: Any) -> str:
    text = getattr(annotation, "__name__", None) or repr(annotation)
    return text.replace("typing.", "").replace("NoneType", "None")
