"""One registry for every component kind, with plugins through entry points.

A component is registered under a *kind* (``"model"``, ``"attention"``, ``"weighting"``,
``"value_head"``, ``"tokenizer"``, ``"dataset"``, ``"sampler"``, ``"pipeline"``, ``"evaluator"``)
and a *name* (the recipe's ``kind = "..."`` tag)::

    @register("weighting", "td", spec=TDWeightingSpec)
    def build_td_weighting(spec: TDWeightingSpec) -> Weighting: ...

Built-in components and third-party plugins load the same way: every module named in the
``wmtp.components`` entry-point group is imported once, on first lookup, and registers what it
defines. Importing this module, and loading every built-in component module, is cheap (no torch:
builders import what they need when they run).
"""

from __future__ import annotations

import difflib
import importlib
import inspect
from collections.abc import Callable
from dataclasses import dataclass
from importlib.metadata import entry_points
from typing import Any

from wmtp.errors import ComponentError

ENTRY_POINT_GROUP = "wmtp.components"


@dataclass(frozen=True)
class Entry:
    """One registered component."""

    kind: str
    name: str
    obj: Any
    spec: type | None
    """The pydantic model of its recipe section, when it has one (drives ``wmtp list``)."""
    module: str

    @property
    def doc(self) -> str:
        own = getattr(self.obj, "doc", None)  # table entries (attention, pipeline) carry their doc
        return own if isinstance(own, str) else inspect.getdoc(self.obj) or ""


_ENTRIES: dict[str, dict[str, Entry]] = {}
_PLUGINS_LOADED = False


def register(kind: str, name: str, *, spec: type | None = None) -> Callable[[Any], Any]:
    """Decorator: register ``obj`` as component ``name`` of ``kind``; returns ``obj`` unchanged."""

    def decorate(obj: Any) -> Any:
        existing = _ENTRIES.get(kind, {}).get(name)
        if existing is not None and existing.obj is not obj:
            raise ComponentError(
                f"{kind} {name!r} is registered twice: by {existing.module} and by {obj.__module__}"
            )
        _ENTRIES.setdefault(kind, {})[name] = Entry(kind, name, obj, spec, obj.__module__)
        return obj

    return decorate


# The modules that register wmtp's own components. They are also declared in pyproject's
# ``wmtp.components`` entry points, but are imported from here too, so a source checkout that was
# never pip-installed (a GPU machine with the tree on PYTHONPATH) has every component.
BUILTIN_MODULES = (
    "wmtp.models.components",
    "wmtp.data.components",
    "wmtp.weighting.components",
    "wmtp.pipelines",
    "wmtp.eval.benchmarks",
)


def load_plugins() -> None:
    """Import the built-in component modules, then every ``wmtp.components`` plugin (once)."""
    global _PLUGINS_LOADED
    if _PLUGINS_LOADED:
        return
    _PLUGINS_LOADED = True
    plugins = sorted(entry_points(group=ENTRY_POINT_GROUP), key=lambda e: e.name)
    modules = dict.fromkeys([*BUILTIN_MODULES, *(ep.value.split(":")[0] for ep in plugins)])
    for module in modules:
        importlib.import_module(module)


def get(kind: str, name: str) -> Any:
    """The object registered as ``name`` of ``kind``; a did-you-mean error when there is none."""
    load_plugins()
    known = _ENTRIES.get(kind, {})
    if name in known:
        return known[name].obj
    if not known:
        raise ComponentError(f"no components of kind {kind!r} are registered")
    close = difflib.get_close_matches(name, list(known), n=3)
    hint = f"; did you mean {', '.join(map(repr, close))}?" if close else ""
    raise ComponentError(f"unknown {kind} {name!r}{hint} (known: {', '.join(sorted(known))})")


def entries(kind: str | None = None) -> list[Entry]:
    """Registered components, sorted by kind then name; only ``kind`` when given."""
    load_plugins()
    kinds = [kind] if kind is not None else sorted(_ENTRIES)
    return [e for k in kinds for _, e in sorted(_ENTRIES.get(k, {}).items())]


def kinds() -> list[str]:
    """Every component kind that has at least one registered component."""
    load_plugins()
    return sorted(_ENTRIES)
