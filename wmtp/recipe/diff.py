"""Semantic diff of two resolved recipes: every differing value by dotted key, with its category.

Categories (declared on the schema's fields, see ``wmtp.recipe._base``): ``numerics`` (changes
what is computed), ``performance`` (same math, other speed or memory), ``cosmetic`` (names,
logging) and ``checkpoint`` (model shapes: a checkpoint of one does not load into the other).
A value present on one side only (another ``kind``'s parameters, an added model) is a change
from or to ``None``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from wmtp.recipe._base import CategoryName, Section, category_of
from wmtp.recipe.dump import recipe_data
from wmtp.recipe.load import dotted
from wmtp.recipe.positions import Path
from wmtp.recipe.validate import leaf_paths

_MISSING = object()


@dataclass(frozen=True)
class Change:
    """One value that differs between two recipes."""

    key: str
    """Dotted key, e.g. ``weighting.gamma``."""
    old: Any
    """The value in the first recipe (``None``: not there)."""
    new: Any
    """The value in the second recipe (``None``: not there)."""
    category: CategoryName

    def to_json(self) -> dict:
        return {"key": self.key, "old": self.old, "new": self.new, "category": self.category}


def diff_recipes(a: Any, b: Any) -> list[Change]:
    """The changes from recipe ``a`` to recipe ``b`` (``Recipe`` objects), in document order."""
    data_a, data_b = recipe_data(a), recipe_data(b)
    paths = leaf_paths(data_a)
    paths += [p for p in leaf_paths(data_b) if p not in set(paths)]
    changes = []
    for path in paths:
        old, new = _get(data_a, path), _get(data_b, path)
        if old == new and type(old) is type(new):
            continue
        owner = a if old is not _MISSING else b
        category = field_category(owner, path)
        if category == "checkpoint" and _frozen_model(path, a, b):
            category = "numerics"  # a frozen helper's shape: the trained checkpoint still loads
        old_value = None if old is _MISSING else old
        changes.append(Change(dotted(path), old_value, None if new is _MISSING else new, category))
    return changes


def _frozen_model(path: Path, a: Any, b: Any) -> bool:
    """Whether ``path`` is inside a model that neither recipe trains."""
    return len(path) >= 2 and path[0] == "model" and path[1] not in (a.trained_role, b.trained_role)


def field_category(recipe: Any, path: Path) -> CategoryName:
    """The category of the value at ``path``: that of the field of the nearest section."""
    node: Any = recipe
    category: CategoryName = "numerics"
    for key in path:
        if isinstance(node, Section) and isinstance(key, str) and key in type(node).model_fields:
            category = category_of(node, key)
            node = getattr(node, key)
        else:
            break  # inside a plain dict or list value: the field's category holds
    return category


def _get(data: Any, path: Path) -> Any:
    for key in path:
        if isinstance(data, dict) and key in data:
            data = data[key]
        else:
            return _MISSING
    return data
