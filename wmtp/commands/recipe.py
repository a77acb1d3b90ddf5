"""Recipe commands: ``validate``, ``diff``, ``show``, ``schema``, ``list``.

None of them imports torch (``validate --env`` and ``list`` excepted: they inspect the machine
and the registered components).
"""

from __future__ import annotations

import enum
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Annotated, Any

import typer

from wmtp.commands import _common
from wmtp.commands._common import SetOption, command

DEFAULT_RECIPES = "recipes"
"""``wmtp validate`` with no argument checks every ``*.toml`` here."""


class OutputFormat(str, enum.Enum):
    """Human-readable text or one JSON document."""

    text = "text"
    json = "json"

    def __str__(self) -> str:
        return self.value


FormatOption = Annotated[
    OutputFormat, typer.Option("--format", help="text for people, json for machines.")
]


def register(app: typer.Typer) -> None:
    """Add the recipe commands to ``app``."""
    command(app, "validate", no_args_is_help=False)(validate)
    command(app, "diff", no_args_is_help=True)(diff)
    command(app, "show", no_args_is_help=True)(show)
    command(app, "schema")(schema)
    command(app, "list")(list_components)


# --- validate --------------------------------------------------------------------------------


def validate(
    recipes: Annotated[
        list[Path] | None,
        typer.Argument(help="Recipe files (default: every recipes/*.toml).", show_default=False),
    ] = None,
    world_size: Annotated[
        int, typer.Option("--world-size", "-n", min=1, help="GPUs to estimate memory for.")
    ] = 1,
    overrides: SetOption = None,
    env: Annotated[
        bool, typer.Option("--env", help="Also check this machine: GPUs, bf16, flash-attn, torch.")
    ] = False,
    format: FormatOption = OutputFormat.text,
) -> None:
    """Check recipes and print what they will cost; exit 0 when all are valid, 2 otherwise.

    Every problem of a recipe is reported at once, each with file:line:column, the dotted key,
    what was expected and did-you-mean suggestions. Valid recipes show the effective batch,
    tokens per optimizer step, parameters of each model and estimated memory per GPU.
    """
    paths = recipes or sorted(Path(DEFAULT_RECIPES).glob("*.toml"))
    if not paths:
        raise typer.BadParameter(f"no recipes given and none in {DEFAULT_RECIPES}/")
    machine = _environment() if env else None
    text = format is OutputFormat.text
    results = [_validate_one(p, overrides or (), world_size, machine, text) for p in paths]
    if not text:
        typer.echo(json.dumps({"recipes": results, "environment": machine}, indent=2))
    elif machine:
        typer.echo("environment: " + ", ".join(f"{k}={v}" for k, v in machine.items()))
    if not all(r["valid"] for r in results):
        raise typer.Exit(2)


def _validate_one(
    path: Path, overrides: Sequence[str], world_size: int, machine: dict | None, text: bool
) -> dict[str, Any]:
    """Load, estimate and (with a machine) check one recipe; print it when ``text``."""
    from wmtp.estimate import estimate
    from wmtp.recipe import RecipeProblems, load_recipe

    try:
        loaded = load_recipe(path, overrides)
    except RecipeProblems as exc:
        if text:
            _print_problem("invalid:", exc.render())
        return {"recipe": str(path), "valid": False, **exc.to_json()}
    cost = estimate(loaded.recipe, world_size)
    env_problems = _environment_problems(loaded.recipe, machine, world_size) if machine else []
    if text:
        _print_estimate(str(path), loaded.recipe, cost, env_problems)
    return {
        "recipe": str(path),
        "valid": not env_problems,
        "estimate": cost.to_json(),
        "environment_problems": env_problems,
    }


def _print_estimate(path: str, recipe: Any, cost: Any, env_problems: list[str]) -> None:
    from wmtp.estimate import GIB

    exp = recipe.experiment
    typer.echo(f"{path}: ok ({exp.name}, pipeline {exp.pipeline})")
    typer.echo(
        f"  batch {cost.effective_batch} {'pairs' if exp.pipeline == 'critic' else 'sequences'}/step "
        f"({recipe.training.micro_batch_size} x {recipe.training.grad_accum_steps} accum "
        f"x {cost.world_size} GPUs), {cost.tokens_per_step:,} tokens/step"
    )
    for model in cost.models:
        if model.args is not None:
            typer.echo(
                f"  model.{model.role}: {model.total:,} parameters, {model.trainable:,} trained"
            )
    if cost.memory is not None:
        parts = ", ".join(
            f"{k} {v / GIB:.2f}" for k, v in cost.memory.parts().items() if k != "total" and v
        )
        typer.echo(
            f"  memory/GPU ~{cost.memory.total / GIB:.2f} GiB ({recipe.parallel.sharding}, "
            f"world size {cost.world_size}): {parts}"
        )
    for note in cost.notes:
        typer.echo(f"  note: {note}")
    for problem in env_problems:
        _print_problem("environment:", problem, indent="  ")


def _print_problem(label: str, message: str, indent: str = "") -> None:
    """``label message`` on stderr, the label in bold red (rich is imported only for problems:
    valid recipes print plain text)."""
    from rich.markup import escape

    _common.err_console.print(
        f"{indent}[bold red]{label}[/] {escape(message)}", highlight=False, soft_wrap=True
    )


def _environment() -> dict[str, Any]:
    """What this machine offers: torch version, GPUs, bf16, flash-attn."""
    import importlib.util

    import torch

    cuda = torch.cuda.is_available()
    flash = importlib.util.find_spec("flash_attn") is not None
    if flash:
        try:
            import flash_attn  # noqa: F401
        except Exception:  # installed but broken (wrong CUDA / torch build)
            flash = False
    return {
        "torch": torch.__version__,
        "python": sys.version.split()[0],
        "cuda": cuda,
        "gpus": torch.cuda.device_count() if cuda else 0,
        "gpu_name": torch.cuda.get_device_name(0) if cuda else None,
        "bf16": bool(cuda and torch.cuda.is_bf16_supported()),
        "flash_attn": flash,
        "sandbox": _sandbox_isolation(),
    }


def _sandbox_isolation() -> str:
    """Which isolation the code-execution sandbox uses here (bubblewrap, or rlimits and why)."""
    from wmtp.eval.sandbox import isolation

    found = isolation()
    return f"{found.kind} ({found.detail})"


def _environment_problems(recipe: Any, machine: dict, world_size: int) -> list[str]:
    problems = []
    models = [(r, getattr(recipe.model, r)) for r in ("policy", "reference", "critic")]
    for role, spec in models:
        if spec is None:
            continue
        if spec.attention == "flash_attn" and not machine["flash_attn"]:
            problems.append(
                f"model.{role}.attention = 'flash_attn' but flash_attn cannot be imported"
            )
        if spec.dtype == "bfloat16" and machine["cuda"] and not machine["bf16"]:
            problems.append(
                f"model.{role}.dtype = 'bfloat16' but {machine['gpu_name']} has no bf16"
            )
    if recipe.parallel.device == "cuda" and not machine["cuda"]:
        problems.append("parallel.device = 'cuda' but no CUDA device is available")
    if machine["cuda"] and world_size > machine["gpus"]:
        problems.append(f"--world-size {world_size} but this machine has {machine['gpus']} GPUs")
    return problems


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
        Path, typer.Option("--output", "-o", help="Where to write the JSON schema.")
    ] = Path("schemas/recipe.schema.json"),
    check: Annotated[
        bool, typer.Option("--check", help="Write nothing; exit 1 when the file is stale.")
    ] = False,
) -> None:
    """Write the recipes' JSON Schema, used by TOML editors through each recipe's #:schema line."""
    from wmtp.recipe.jsonschema import render_json_schema

    text = render_json_schema()
    current = output.read_text(encoding="utf-8") if output.is_file() else None
    if check:
        if current != text:
            _common.err_console.print(
                f"{output} is stale: run `wmtp schema`", highlight=False, soft_wrap=True
            )
            raise typer.Exit(1)
        typer.echo(f"{output} is up to date")
        return
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(text, encoding="utf-8")
    typer.echo(f"wrote {output}" + (" (unchanged)" if current == text else ""))


# --- list --------------------------------------------------------------------------------------


def list_components(
    kind: Annotated[
        str | None, typer.Argument(help="Only this kind (model, weighting, pipeline, ...).")
    ] = None,
    format: FormatOption = OutputFormat.text,
) -> None:
    """List registered components by kind, with their recipe parameters and docs."""
    from wmtp import registry
    from wmtp.recipe.components import describe_entry

    if kind is not None and kind not in registry.kinds():
        from wmtp.errors import ComponentError
        from wmtp.recipe.errors import did_you_mean

        hints = did_you_mean(kind, registry.kinds())
        hint = f"; did you mean {' or '.join(map(repr, hints))}?" if hints else ""
        raise ComponentError(
            f"no components of kind {kind!r}{hint} (kinds: {', '.join(registry.kinds())})"
        )
    entries = [describe_entry(e) for e in registry.entries(kind)]
    if format is OutputFormat.json:
        typer.echo(json.dumps(entries, indent=2, default=str))
        return
    current = None
    for entry in entries:
        if entry["kind"] != current:
            current = entry["kind"]
            typer.echo(f"{current}:")
        typer.echo(f"  {entry['name']}  {entry['summary']}")
        for param in entry["parameters"]:
            typer.echo(f"      {param['name']} = {param['default']}  {param['doc']}")
