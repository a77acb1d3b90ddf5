"""``wmtp show --explain``: the resolved recipe with, after each value, where it came from and
what it means (the first sentence of its field's docstring). The result is still valid TOML."""

from __future__ import annotations

from typing import Any

from wmtp.recipe._base import Section
from wmtp.recipe.dump import dumps, recipe_data
from wmtp.recipe.load import LoadedRecipe, dotted


def explain_recipe(loaded: LoadedRecipe) -> str:
    """TOML of ``loaded.recipe`` with a ``# source · meaning`` comment after every value."""

    def comment(path: tuple[str, ...]) -> str:
        source = loaded.provenance.get(dotted(path))
        doc = field_doc(loaded.recipe, path)
        return " · ".join(part for part in (str(source) if source else None, doc) if part)

    return dumps(recipe_data(loaded.recipe), comment)


def field_doc(recipe: Any, path: tuple[str, ...]) -> str | None:
    """First sentence of the docstring of the field holding the value at ``path``."""
    from wmtp.recipe.docs import field_docs

    node: Any = recipe
    doc = None
    for key in path:
        if not (isinstance(node, Section) and key in type(node).model_fields):
            break
        doc = field_docs(type(node)).get(key)
        node = getattr(node, key)
    return first_sentence(doc) if doc else None


def first_sentence(doc: str) -> str:
    """The first sentence of ``doc`` on one line."""
    text = " ".join(doc.split())
    end = text.find(". ")
    return text if end < 0 else text[: end + 1]
