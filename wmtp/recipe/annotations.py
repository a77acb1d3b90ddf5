"""Reading the schema's type annotations: what a value should be, its bounds, which section a
table is, and every dotted key the schema knows.

The problem messages (``wmtp.recipe.validate``, ``wmtp.recipe.examples``) walk the schema beside
a broken recipe with these; a valid recipe never needs them.
"""

from __future__ import annotations

import functools
import types
import typing
from typing import Annotated, Any, Literal, Union

from pydantic import BaseModel
from pydantic.fields import FieldInfo
from pydantic_core import PydanticUndefined

NO_DEFAULT: Any = PydanticUndefined
"""The default of a required field."""


def field_type(info: FieldInfo) -> Any:
    """A field's annotation with its constraints (pydantic keeps those apart, in ``metadata``)."""
    return Annotated[(info.annotation, *info.metadata)] if info.metadata else info.annotation


def field_default(info: FieldInfo) -> Any:
    """A field's default value (made by its factory when it has one); ``NO_DEFAULT`` if required."""
    if info.default_factory is not None:
        return info.default_factory()  # type: ignore[call-arg]
    return info.default


def unwrap(tp: Any) -> tuple[Any, list[Any]]:
    """``Annotated[T, ...]`` -> ``(T, constraints)``, those inside a ``Field(...)`` included."""
    constraints: list[Any] = []
    while typing.get_origin(tp) is Annotated:
        tp, *metadata = typing.get_args(tp)
        for item in metadata:
            constraints += item.metadata if isinstance(item, FieldInfo) else [item]
    return tp, constraints


def members(tp: Any) -> list[Any]:
    """The types a union accepts, ``None`` left out; ``[tp]`` for any other type."""
    base, _ = unwrap(tp)
    if typing.get_origin(base) in (Union, types.UnionType):
        return [m for m in typing.get_args(base) if m is not type(None)]
    return [tp]


def is_section(tp: Any) -> bool:
    """Whether ``tp`` is a section class (a pydantic model)."""
    base, _ = unwrap(tp)
    return isinstance(base, type) and issubclass(base, BaseModel)


def sections(tp: Any) -> list[type[BaseModel]]:
    """The section classes ``tp`` accepts: itself, or the members of a (tagged) union."""
    return [unwrap(m)[0] for m in members(tp) if is_section(m)]


def tag_of(section: type[BaseModel]) -> str | None:
    """The ``kind`` a section is chosen by in a tagged union (``None`` if it has none)."""
    kind = section.model_fields.get("kind")
    return kind.default if kind is not None else None


def section_for(tp: Any, value: Any) -> type[BaseModel] | None:
    """The section a table ``value`` of type ``tp`` is: the union member its ``kind`` names, else
    the first; ``None`` when ``tp`` is not a table of fields."""
    found = sections(tp)
    kind = value.get("kind") if isinstance(value, dict) else None
    chosen = [s for s in found if kind is not None and tag_of(s) == kind]
    return (chosen or found or [None])[0]


def literal_values(tp: Any) -> list[Any]:
    """The values a ``Literal`` type allows (``[]`` for other types)."""
    base, _ = unwrap(members(tp)[0]) if tp is not None else (None, [])
    return list(typing.get_args(base)) if typing.get_origin(base) is Literal else []


def is_union(tp: Any) -> bool:
    """Whether ``tp`` accepts several types (pydantic then names the member in an error's loc)."""
    return len(members(tp)) > 1


def child_type(tp: Any, part: str | int, value: Any) -> Any:
    """The type of ``part`` (a field, an array index or a table key) inside a ``tp`` value."""
    section = section_for(tp, value)
    if section is not None:
        info = section.model_fields.get(part) if isinstance(part, str) else None
        return field_type(info) if info is not None else None
    base, _ = unwrap(members(tp)[0])
    args, origin = typing.get_args(base), typing.get_origin(base)
    if origin is list:
        return args[0]
    if origin is tuple and isinstance(part, int) and part < len(args):
        return args[part]
    if origin is dict:
        return args[1]
    return None


@functools.cache
def schema_keys(root: type[BaseModel]) -> tuple[str, ...]:
    """Every dotted key of ``root``'s fields and of its sections' fields, in schema order
    (the members of a tagged union all contribute theirs)."""
    keys: list[str] = []
    for name, info in root.model_fields.items():
        keys.append(name)
        for section in sections(info.annotation):
            keys += [f"{name}.{key}" for key in schema_keys(section) if f"{name}.{key}" not in keys]
    return tuple(keys)
