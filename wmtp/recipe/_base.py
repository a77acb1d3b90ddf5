"""The base of every recipe section, and the change categories that ``wmtp diff`` reports.

Every section is a frozen pydantic model that forbids unknown keys and takes each field's
documentation from the docstring under it. Values are checked strictly: a recipe value must have
the TOML type its field says (a string is never a number, a bool never an integer); an integer
is still a number (``lr = 1``), and a TOML array fills a tuple field when annotated
``Annotated[tuple[...], FROM_ARRAY]`` (its items stay strict). A field's *category* says what changing it does:

- ``numerics``: changes what is computed (learning rate, weighting, data, dtype, ...);
- ``performance``: same math, other speed or memory (attention backend, sharding, compile, ...);
- ``cosmetic``: names, descriptions, logging and checkpoint intervals;
- ``checkpoint``: model shapes; a checkpoint of one recipe does not load into the other.

A section sets its default with ``category = "..."``; a field overrides it with
``Annotated[type, PERFORMANCE]`` (or ``COSMETIC`` / ``CHECKPOINT`` / ``NUMERICS``).

Cross-field rules are methods decorated with ``@rule("field_a", "field_b")`` that return a message
naming both fields when the rule is broken (``None`` otherwise). One validator runs every rule of a
section and reports all broken ones together (pydantic stops at the first raising validator, and a
recipe's report must hold every problem); each problem carries the fields it concerns, so the
loader points at the line of the first one. A rule of settings only training reads
(``@rule(..., training=True)``: ``data.max_length``) is not checked where the recipe trains
nothing: its pipeline evaluates, or it is read to evaluate the weights it trained
(``load_recipe(..., evaluating=True)``, which validates with :data:`EVALUATING` in pydantic's
context).
"""

import functools
from collections.abc import Callable
from dataclasses import dataclass
from typing import Annotated, Any, ClassVar, Literal, get_args, get_origin

from pydantic import BaseModel, BeforeValidator, ConfigDict, ValidationInfo, model_validator
from pydantic_core import PydanticCustomError

CategoryName = Literal["numerics", "performance", "cosmetic", "checkpoint"]
CATEGORIES: tuple[CategoryName, ...] = ("numerics", "performance", "cosmetic", "checkpoint")


@dataclass(frozen=True)
class Category:
    """Field metadata: the diff category of a field (see the module docstring)."""

    name: CategoryName


NUMERICS = Category("numerics")
PERFORMANCE = Category("performance")
COSMETIC = Category("cosmetic")
CHECKPOINT = Category("checkpoint")


def _tuple_from_array(value: Any) -> Any:
    return tuple(value) if isinstance(value, list) else value


FROM_ARRAY = BeforeValidator(_tuple_from_array)
"""Metadata of a tuple field: a TOML array (a list) becomes the tuple, then each item is checked
strictly (strict mode alone takes only tuples, which TOML never gives)."""


RULE_ERROR = "cross_field"
"""The pydantic error type of broken rules; its ``ctx["problems"]`` lists ``{fields, message}``."""


EVALUATING = "evaluating"
"""The key of pydantic's validation context that reads a recipe to evaluate, not to train."""


def rule(
    *fields: str, training: bool = False
) -> Callable[[Callable[[Any], str | None]], Callable[[Any], str | None]]:
    """Mark a method as a cross-field rule about ``fields`` (dotted, relative to the section);
    ``training``: a rule of settings only training reads (see the module docstring)."""

    def decorate(fn: Callable[[Any], str | None]) -> Callable[[Any], str | None]:
        fn.__rule_fields__ = fields  # type: ignore[attr-defined]
        fn.__rule_training__ = training  # type: ignore[attr-defined]
        return fn

    return decorate


@functools.cache
def _rules_of(cls: type) -> tuple[Callable[[Any], str | None], ...]:
    """The rule methods of ``cls`` and its bases, in name order."""
    found = (getattr(cls, name) for name in sorted(dir(cls)) if not name.startswith("__"))
    return tuple(fn for fn in found if hasattr(fn, "__rule_fields__"))


class Section(BaseModel):
    """A recipe section: frozen, no unknown keys, fields documented by their docstrings.

    The docstring under each field documents it (``wmtp.recipe.docs`` reads them for the JSON
    schema, ``wmtp show --explain`` and ``wmtp list``); pydantic's ``use_attribute_docstrings``
    would read them too, but at import, which costs ``wmtp validate`` a third of its time budget.
    """

    model_config = ConfigDict(
        extra="forbid",
        frozen=True,
        strict=True,  # the TOML type must match: "100" is not 100, "yes" is not true
        allow_inf_nan=False,  # TOML's inf and nan are numbers, but no setting takes them
        use_attribute_docstrings=False,  # docs are read lazily: wmtp.recipe.docs
        validate_default=False,
        # validators are built on first use, and only Recipe's whole one on the validate path
        # (not one per section class at import: 35 classes, a third of the schema's cost)
        defer_build=True,
    )

    category: ClassVar[CategoryName] = "numerics"
    """The diff category of fields that do not say otherwise."""

    @model_validator(mode="after")
    def _check_rules(self, info: ValidationInfo) -> "Section":
        problems = []
        trains = self.checks_training(info.context)
        for fn in _rules_of(type(self)):
            if fn.__rule_training__ and not trains:
                continue
            if message := fn(self):
                problems.append({"fields": fn.__rule_fields__, "message": message})
        if problems:
            summary = "; ".join(p["message"] for p in problems)
            raise PydanticCustomError(
                RULE_ERROR, "{summary}", {"summary": summary, "problems": problems}
            )
        return self

    def checks_training(self, context: dict | None) -> bool:
        """Whether the recipe is read to train (its ``training=True`` rules checked): not where
        ``context`` says it is read to evaluate."""
        return not (context or {}).get(EVALUATING)

    @classmethod
    def field_category(cls, name: str) -> CategoryName:
        """The diff category of field ``name``: declared on the field, or inside an optional
        one (``Annotated[int, NUMERICS, ...] | None``, where pydantic keeps it in the union),
        else the section's."""
        field = cls.model_fields[name]
        inner = [get_args(a)[1:] for a in get_args(field.annotation) if get_origin(a) is Annotated]
        for meta in [*field.metadata, *(m for group in inner for m in group)]:
            if isinstance(meta, Category):
                return meta.name
        return cls.category


def category_of(section: Any, name: str) -> CategoryName:
    """The diff category of ``section``'s field ``name`` (``numerics`` for non-sections)."""
    if isinstance(section, type) and issubclass(section, Section):
        return section.field_category(name)
    if isinstance(section, Section):
        return type(section).field_category(name)
    return "numerics"
