"""Descriptions for ``wmtp list``: registered components (name, summary, recipe parameters) and
model flavours (sizes, parameter count)."""

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
        "facts": entry.obj.facts() if hasattr(entry.obj, "facts") else {},
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
    """A field's default as a recipe writes it (TOML: ``"auto"``, ``true``, an inline table),
    to copy into one; ``(required)``, or ``(unset)`` where the field is off until set."""
    from pydantic_core import to_jsonable_python

    from wmtp.recipe.dump import toml_value

    if info.default_factory is not None:
        value = info.default_factory()
    elif info.default is PydanticUndefined:
        return "(required)"
    else:
        value = info.default
    if hasattr(value, "model_dump"):  # a section: its set values, as the recipe dump has them
        value = value.model_dump(mode="json", exclude_none=True)
    value = to_jsonable_python(value)
    return "(unset)" if value is None else toml_value(value)


def _type_name(annotation: Any) -> str:
    text = getattr(annotation, "__name__", None) or repr(annotation)
    return text.replace("typing.", "").replace("NoneType", "None")


# --- model flavours ------------------------------------------------------------------------------

FLAVOUR_KIND = "flavour"
"""``wmtp list flavour``: the named model sizes of ``wmtp.models.args.FLAVOURS`` (not components
of the registry, so listing them imports no torch)."""

FLAVOUR_SIZES = (
    "dim",
    "n_layers",
    "n_heads",
    "n_kv_heads",
    "vocab_size",
    "max_seq_len",
    "n_future_tokens",
)
"""The sizes ``wmtp list flavour`` shows (names of ``ModelArgs``), with the parameter count."""


def describe_flavours() -> list[dict[str, Any]]:
    """Every model flavour as plain data, shaped like a component: kind, name, summary, module,
    parameters (none), and its sizes and parameter count."""
    from wmtp.models.args import FLAVOURS

    return [_describe_flavour(name, args) for name, args in FLAVOURS.items()]


def _describe_flavour(name: str, args: Any) -> dict[str, Any]:
    sizes = {key: getattr(args, key) for key in FLAVOUR_SIZES}
    sizes["n_kv_heads"] = args.kv_heads  # unset means one per query head
    params, per_vocab_token = _flavour_params(args)
    count = _readable(params) + (f" + {per_vocab_token} x vocab" if per_vocab_token else "")
    vocab = "from the tokenizer" if args.vocab_size == -1 else str(args.vocab_size)
    summary = (
        f"{count} parameters: dim {args.dim}, {args.n_layers} layers, {args.n_heads} heads "
        f"({args.kv_heads} kv), vocab {vocab}, max_seq_len {args.max_seq_len}, "
        f"{args.n_future_tokens} MTP head{'s' if args.n_future_tokens > 1 else ''}"
    )
    return {
        "kind": FLAVOUR_KIND,
        "name": name,
        "summary": summary,
        "module": "wmtp.models.args",
        "parameters": [],
        "sizes": sizes,
        "params": None if per_vocab_token else params,
        "params_text": count,
    }


def _flavour_params(args: Any) -> tuple[int, int]:
    """``(parameters, parameters per vocabulary token)``: the count, or for a flavour whose
    vocabulary comes from the tokenizer (``vocab_size = -1``), the count without the vocabulary
    and what each token adds (the embedding and unembedding rows)."""
    from wmtp.models.args import param_count

    if args.vocab_size > 0:
        return param_count(args), 0
    one, two = param_count(args.with_vocab(1)), param_count(args.with_vocab(2))
    return one - (two - one), two - one


def _readable(count: int) -> str:
    """``6738415616`` -> ``6.7B``; ``886114304`` -> ``886.1M``; ``950`` -> ``950``."""
    for scale, suffix in ((1e9, "B"), (1e6, "M"), (1e3, "K")):
        if count >= scale:
            return f"{count / scale:.1f}{suffix}"
    return str(count)


_FLAVOUR_COLUMNS = (
    ("dim", "dim"),
    ("layers", "n_layers"),
    ("heads", "n_heads"),
    ("kv heads", "n_kv_heads"),
    ("vocab", "vocab_size"),
    ("max_seq_len", "max_seq_len"),
    ("MTP heads", "n_future_tokens"),
)


def flavour_table(flavours: list[dict[str, Any]]) -> list[str]:
    """Lines of a table of ``describe_flavours()`` entries: name, sizes, parameters."""
    rows = [
        [f["name"], *(_size(f["sizes"][key]) for _, key in _FLAVOUR_COLUMNS), f["params_text"]]
        for f in flavours
    ]
    head = ["name", *(title for title, _ in _FLAVOUR_COLUMNS), "parameters"]
    widths = [max(len(r[i]) for r in [head, *rows]) for i in range(len(head))]
    return [
        "  ".join(
            cell.ljust(width) if i in (0, len(head) - 1) else cell.rjust(width)
            for i, (cell, width) in enumerate(zip(row, widths, strict=True))
        ).rstrip()
        for row in [head, *rows]
    ]


def _size(value: int) -> str:
    return "tokenizer" if value == -1 else str(value)
