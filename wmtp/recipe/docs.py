"""Field documentation, read from the docstring under each field (on demand, not at import).

The JSON schema, ``wmtp show --explain`` and ``wmtp list`` use it. Reading docstrings needs the
source of each section's module; doing it lazily keeps ``wmtp validate`` fast.
"""

from __future__ import annotations

import ast
import functools
import inspect
import itertools
import sys
from typing import Any


@functools.cache
def field_docs(cls: type) -> dict[str, str]:
    """Field name -> its docstring, for ``cls`` and the classes it inherits fields from."""
    docs: dict[str, str] = {}
    for klass in reversed(cls.__mro__):
        if "model_fields" in vars(klass) or hasattr(klass, "__pydantic_fields__"):
            docs.update(_class_docs(klass))
    fields = getattr(cls, "model_fields", {})
    return {name: doc for name, doc in docs.items() if name in fields}


def class_doc(cls: type) -> str:
    """The class docstring, cleaned (empty when there is none of its own)."""
    return inspect.cleandoc(cls.__doc__) if cls.__dict__.get("__doc__") else ""


@functools.cache
def _module_tree(module: str) -> ast.Module | None:
    try:
        return ast.parse(inspect.getsource(sys.modules[module]))
    except (OSError, TypeError, KeyError):
        return None


def _class_docs(klass: type) -> dict[str, str]:
    tree = _module_tree(klass.__module__)
    node = next(
        (
            n
            for n in getattr(tree, "body", [])
            if isinstance(n, ast.ClassDef) and n.name == klass.__name__
        ),
        None,
    )
    if node is None:
        return {}
    docs = {}
    for stmt, after in itertools.pairwise(node.body):
        is_field = isinstance(stmt, ast.AnnAssign) and isinstance(stmt.target, ast.Name)
        if is_field and _is_string(after):
            docs[stmt.target.id] = inspect.cleandoc(after.value.value)  # type: ignore[attr-defined]
    return docs


def _is_string(node: Any) -> bool:
    return (
        isinstance(node, ast.Expr)
        and isinstance(node.value, ast.Constant)
        and isinstance(node.value.value, str)
    )
