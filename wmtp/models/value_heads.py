"""A value head's description as plain data, checked against the recipe schema. Torch-free:
``wmtp validate`` compares a critic checkpoint's head with the recipe's without building one
(``wmtp.assembly.check_checkpoint_recipe``); ``wmtp.models.value`` builds heads from it."""

from __future__ import annotations

from wmtp.errors import ComponentError


def head_config(head) -> dict:
    """A value head description as a plain dict (what a wmtp value checkpoint saves): from a kind
    name, a dict or a recipe spec; checked against the recipe schema (``ValueHeadSpec``)."""
    if isinstance(head, str):
        config = {"kind": head}
    elif isinstance(head, dict):
        config = dict(head)
    elif hasattr(head, "model_dump"):
        config = head.model_dump()
    else:
        raise ComponentError(f"value head must be a kind, a dict or a spec; got {head!r}")
    return head_spec(config).model_dump(exclude_defaults=True) | {"kind": config["kind"]}


def head_spec(config: dict):
    """The recipe spec (``[model.critic] head``) of a head description; a ComponentError for one
    the schema does not accept."""
    from pydantic import TypeAdapter, ValidationError

    from wmtp.recipe.specs.models import ValueHeadSpec

    try:
        return TypeAdapter(ValueHeadSpec).validate_python(config)
    except ValidationError as exc:
        problems = "; ".join(e["msg"] for e in exc.errors(include_url=False))
        raise ComponentError(f"value head {config}: {problems}") from None


__all__ = ["head_config", "head_spec"]
