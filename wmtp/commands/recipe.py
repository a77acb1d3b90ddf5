"""Recipe commands: ``validate``, ``diff``, ``show``, ``schema``, ``list``.

None of them imports torch (``validate --env`` and ``list`` excepted: they inspect the machine
and the registered components; ``list flavour`` reads only the flavour table).
"""

from __future__ import annotations

import enum
import itertools
import json
from pathlib import Path
from typing import Annotated, Any

import typer

from wmtp.commands import _common
from wmtp.commands._common import Command, SetOption, command
from wmtp.commands._output import USER_ERROR_EXIT


class OutputFormat(str, enum.Enum):
    """Human-readable text or one JSON document."""

    text = "text"
    json = "json"

    def __str__(self) -> str:
        return self.value


FormatOption = Annotated[
    OutputFormat,
    typer.Option(
        "--format",
        metavar=_common.choices(OutputFormat),
        help="text for people, json for machines.",
    ),
]


def register(app: typer.Typer) -> None:
    """Add the recipe commands to ``app``."""
    command(app, "validate", no_args_is_help=False, cls=JsonUsageErrors)(validate)
    command(app, "diff", no_args_is_help=True)(diff)
    command(app, "show", no_args_is_help=True)(show)
    command(app, "schema")(schema)
    command(app, "list")(list_components)


# --- validate --------------------------------------------------------------------------------


UsageError: type[Exception] = typer.BadParameter.__base__
"""Click's ``UsageError``, the base of every usage error, of the Click that Typer runs (a copy
of its own since Typer 0.2x, the ``click`` package before)."""


class JsonUsageErrors(Command):
    """A command whose usage errors (an option's bad value, an unknown option, no recipes) are,
    with ``--format json``, one JSON document on stdout in the shape of its other errors
    (``report_error``'s), exit 2, rather than Typer's box on stderr: a machine reader of
    ``--format json`` parses every outcome."""

    def make_context(self, info_name, args, parent=None, **extra):
        json_asked = _asks_for_json(args)  # before parsing, which may consume ``args``
        try:
            return super().make_context(info_name, args, parent, **extra)
        except UsageError as exc:
            if not json_asked:
                raise
            raise _said_as_json(exc) from None

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except UsageError as exc:
            if str(ctx.params.get("format")) != OutputFormat.json.value:
                raise
            raise _said_as_json(exc) from None


def _asks_for_json(args: list[str]) -> bool:
    """Whether a command line gives ``--format json`` (read before Click parses it)."""
    pairs = itertools.pairwise(args)
    return "--format=json" in args or any(a == "--format" and b == "json" for a, b in pairs)


def _said_as_json(exc: Any) -> typer.Exit:
    """A usage error printed as JSON on stdout; the exit that ends the command."""
    print(json.dumps({"error": "UsageError", "message": exc.format_message()}, indent=2))
    return typer.Exit(USER_ERROR_EXIT)


def validate(
    recipes: Annotated[
        list[Path] | None,
        typer.Argument(
            help="Recipe files, or run directories (their recipe.toml); default: every "
            "recipes/*.toml.",
            show_default=False,
        ),
    ] = None,
    world_size: Annotated[
        int,
        typer.Option("--world-size", "-n", min=1, metavar="N", help="GPUs to estimate memory for."),
    ] = 1,
    overrides: SetOption = None,
    env: Annotated[
        bool,
        typer.Option(
            "--env",
            help="Also check this machine (GPUs, bf16, flash-attn, torch, the sandbox), and fail "
            "on input files the recipe names that are missing (without it: notes).",
        ),
    ] = False,
    format: FormatOption = OutputFormat.text,
    data: Annotated[
        bool,
        typer.Option(
            "--data",
            help="Size activation memory by the longest row of each recipe's training data "
            "(read and tokenized as training does; padded batches are only as long as their "
            "longest example) instead of data.max_length. Slower: reads the data, never cached.",
        ),
    ] = False,
) -> None:
    """Check recipes and print what they will cost; exit 0 when all are valid, 2 otherwise.

    Every problem of a recipe is reported at once, each with file:line:column, the dotted key,
    what was expected and did-you-mean suggestions. Valid recipes show the effective batch,
    tokens per optimizer step, parameters of each model and estimated memory per GPU; a recipe
    that only evaluates, its model's parameters and the memory per GPU of evaluating (weights
    and the KV cache of the rows decoded together). A training recipe's benchmark files are
    read too, as `wmtp eval` of its run will read them.
    """
    from wmtp.commands import _validate

    paths = recipes or _validate.default_recipes()
    if not paths:
        raise typer.BadParameter(f"no recipes given and none in {_validate.DEFAULT_RECIPES}/")
    code = _validate.run(paths, overrides or (), world_size, env, str(format), data=data)
    if code:
        raise typer.Exit(code)


# --- diff --------------------------------------------------------------------------------------


def diff(
    a: Annotated[Path, typer.Argument(help="First recipe, or a run directory.")],
    b: Annotated[Path, typer.Argument(help="Second recipe, or a run directory.")],
    format: FormatOption = OutputFormat.text,
) -> None:
    """Compare two resolved recipes by dotted key; exit 0 when equal, 1 when different.

    Each change is classed: numerics (changes what is computed), performance (same math, other
    speed or memory), cosmetic (names, logging) or checkpoint (model shapes: checkpoints of one
    do not load into the other). A run directory stands for the recipe it was run with.
    """
    from wmtp.recipe import diff_recipes, load_recipe

    changes = diff_recipes(load_recipe(a).recipe, load_recipe(b).recipe)
    if format is OutputFormat.json:
        typer.echo(
            json.dumps(
                {"a": str(a), "b": str(b), "changes": [c.to_json() for c in changes]}, indent=2
            )
        )
    elif not changes:
        typer.echo(f"{a} and {b} are the same recipe")
    else:
        _print_changes(changes)
    if changes:
        raise typer.Exit(1)


def _print_changes(changes: list[Any]) -> None:
    from wmtp.recipe._base import CATEGORIES

    width = max(len(c.key) for c in changes)
    for category in CATEGORIES:
        group = [c for c in changes if c.category == category]
        if not group:
            continue
        typer.echo(f"{category} ({len(group)}):")
        for c in group:
            typer.echo(f"  {c.key:<{width}}  {_short(c.old)} -> {_short(c.new)}")


def _short(value: Any) -> str:
    text = "(unset)" if value is None else json.dumps(value)
    return text if len(text) <= 60 else text[:57] + "..."


# --- show --------------------------------------------------------------------------------------


def show(
    recipe: Annotated[Path, typer.Argument(help="Recipe file, or a run directory.")],
    overrides: SetOption = None,
    explain: Annotated[
        bool,
        typer.Option("--explain", help="After each value: where it came from and what it means."),
    ] = False,
) -> None:
    """Print the resolved recipe as TOML (extends, --set and defaults applied).

    The output loads back to the identical recipe; with --explain each value is followed by a
    comment naming its source (file:line:column, --set, or default) and its meaning.
    """
    from wmtp.recipe import dump_recipe, load_recipe

    loaded = load_recipe(recipe, overrides or ())
    if explain:
        from wmtp.recipe.explain import explain_recipe

        typer.echo(explain_recipe(loaded), nl=False)
    else:
        typer.echo(dump_recipe(loaded.recipe), nl=False)


# --- schema ------------------------------------------------------------------------------------


def schema(
    output: Annotated[
        Path, typer.Option("--output", "-o", metavar="FILE", help="Where to write the JSON schema.")
    ] = Path("schemas/recipe.schema.json"),
    check: Annotated[
        bool, typer.Option("--check", help="Write nothing; exit 1 when the file is stale.")
    ] = False,
) -> None:
    """Write the recipes' JSON Schema, used by TOML editors through each recipe's #:schema line."""
    from wmtp.recipe.jsonschema import render_json_schema

    text = render_json_schema()
    if check:
        current = output.read_bytes().decode("utf-8", "replace") if output.is_file() else None
        if current != text:
            state = "is stale" if current is not None else "does not exist"
            default = output == Path("schemas/recipe.schema.json")
            again = "wmtp schema" if default else f"wmtp schema -o {output}"
            _common.err_console.print(
                f"{output} {state}: run `{again}`", highlight=False, soft_wrap=True
            )
            raise typer.Exit(1)
        typer.echo(f"{output} is up to date")
        return
    from wmtp.atomic import write_text
    from wmtp.folders import check_output_folder

    current = _earlier_schema(output)
    check_output_folder(output.parent, "--output")
    output.parent.mkdir(parents=True, exist_ok=True)
    write_text(output, text)
    typer.echo(f"wrote {output}" + (" (unchanged)" if current == text else ""))


def _earlier_schema(output: Path) -> str | None:
    """The recipe schema ``output`` holds, None when there is no file; a StorageError (exit 2)
    when something else is there, which ``wmtp schema`` never writes over (a recipe given as
    ``-o`` by mistake, a folder)."""
    from wmtp.errors import StorageError

    if not output.exists():
        return None
    try:
        current = output.read_text(encoding="utf-8")
        is_schema = json.loads(current).get("title") == "Recipe" and "$schema" in current
    except (OSError, UnicodeDecodeError, ValueError, AttributeError):
        is_schema = False
    if not is_schema:
        raise StorageError(
            f"--output {output}: holds something other than a recipe schema; wmtp schema "
            "replaces only its own file: give another --output"
        )
    return current


# --- list --------------------------------------------------------------------------------------


def list_components(
    kind: Annotated[
        str | None,
        typer.Argument(help="Only this kind (model, weighting, pipeline, flavour, ...)."),
    ] = None,
    format: FormatOption = OutputFormat.text,
) -> None:
    """List registered components by kind, with their recipe parameters and docs.

    Kind flavour: the named model sizes for model.*.flavour, with their sizes."""
    from wmtp.recipe.components import FLAVOUR_KIND, describe_flavours

    # flavours alone need no registry, whose components import torch
    entries = describe_flavours() if kind == FLAVOUR_KIND else _component_entries(kind)
    if format is OutputFormat.json:
        typer.echo(json.dumps(entries, indent=2, default=str))
        return
    _print_entries(entries)


def _component_entries(kind: str | None) -> list[dict[str, Any]]:
    """Registered components (of ``kind``; every kind and the flavours when ``None``)."""
    from wmtp import registry
    from wmtp.recipe.components import FLAVOUR_KIND, describe_entry, describe_flavours

    kinds = sorted([*registry.kinds(), FLAVOUR_KIND])
    if kind is not None and kind not in kinds:
        from wmtp.errors import ComponentError
        from wmtp.recipe.errors import did_you_mean

        hints = did_you_mean(kind, kinds)
        hint = f"; did you mean {' or '.join(map(repr, hints))}?" if hints else ""
        raise ComponentError(f"no components of kind {kind!r}{hint} (kinds: {', '.join(kinds)})")
    entries = [describe_entry(e) for e in registry.entries(kind)]
    if kind is None:  # the flavours in their place among the kinds (sorted is stable)
        entries = sorted([*entries, *describe_flavours()], key=lambda e: e["kind"])
    return entries


def _print_entries(entries: list[dict[str, Any]]) -> None:
    from wmtp.recipe.components import FLAVOUR_KIND, flavour_table

    kinds = list(dict.fromkeys(e["kind"] for e in entries))
    for kind in kinds:
        typer.echo(f"{kind}:")
        group = [e for e in entries if e["kind"] == kind]
        if kind == FLAVOUR_KIND:
            typer.echo("\n".join(f"  {line}" for line in flavour_table(group)))
            continue
        for entry in group:
            typer.echo(f"  {entry['name']}  {entry['summary']}")
            for fact, value in entry.get("facts", {}).items():
                typer.echo(f"      {fact}: {value}")
            for param in entry["parameters"]:
                typer.echo(f"      {param['name']} = {param['default']}  {param['doc']}")
