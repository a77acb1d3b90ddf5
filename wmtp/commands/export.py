"""``wmtp export``: a trained run, checkpoint or model as Hugging Face, Meta or wmtp files.

Parsing only; the work is ``wmtp.export.export_model`` (torch loads when the command runs).
"""

from __future__ import annotations

import enum
import re
from pathlib import Path
from typing import Annotated

import typer

from wmtp.commands._common import SetOption, choices, command, console


class Target(str, enum.Enum):
    """The values of ``--to`` (``wmtp.export.formats.TARGETS``)."""

    hf = "hf"
    meta = "meta"
    wmtp = "wmtp"


class DType(str, enum.Enum):
    bfloat16 = "bfloat16"
    float16 = "float16"
    float32 = "float32"


class Heads(str, enum.Enum):
    all = "all"
    one = "1"


SIZE_UNITS = {"": 1, "B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "KIB": 2**10}
SIZE_UNITS |= {"MIB": 2**20, "GIB": 2**30}
DEFAULT_SHARD_SIZE = "5GB"


def register(app: typer.Typer) -> None:
    """Add ``export`` to ``app``."""
    command(app, "export", no_args_is_help=True)(export_command)


def export_command(
    source: Annotated[
        Path,
        typer.Argument(
            help="A run directory (its newest checkpoint), a checkpoint (checkpoints/step-N; "
            "sharded state/ alone is enough), or a model directory wmtp loads (Meta, Hugging "
            "Face, wmtp).",
            show_default=False,
        ),
    ],
    to: Annotated[
        Target,
        typer.Option(
            "--to",
            metavar=choices(Target),
            help="hf: a plain LlamaForCausalLM (trunk + head 1; heads 2..n beside it); meta: "
            "params.json + consolidated.pth, Meta's multi-token layout; wmtp: wmtp's own format.",
            show_default=False,
        ),
    ],
    out: Annotated[
        Path,
        typer.Option(
            "--out",
            metavar="DIR",
            help="Folder to write: a new or empty one (or, with --force, an earlier export), "
            "outside the run's checkpoints/.",
        ),
    ],
    merge_lora: Annotated[
        bool,
        typer.Option(
            "--merge-lora/--no-merge-lora",
            help="Fold trained LoRA adapters into the weights, or (--to wmtp) keep them apart "
            "over the recipe's base model, which the export then needs (refused for a model "
            "without adapters).",
        ),
    ] = True,
    dtype: Annotated[
        DType | None,
        typer.Option(
            "--dtype",
            metavar=choices(DType),
            help="dtype of the written weights, which the export's recipe.toml computes in "
            "(default: the recipe's model dtype; bfloat16 for a model folder without a recipe, "
            "whatever its weights' own).",
        ),
    ] = None,
    heads: Annotated[
        Heads,
        typer.Option(
            "--heads",
            metavar=choices(Heads),
            help="all: every prediction head; 1: the next-token model alone.",
        ),
    ] = Heads.all,
    force: Annotated[
        bool,
        typer.Option(
            "--force",
            help="Replace --out when it holds an earlier export (its wmtp_export.json lists "
            "everything in it).",
        ),
    ] = False,
    recipe: Annotated[
        Path | None,
        typer.Option(
            "--recipe",
            metavar="FILE",
            help="Recipe of a source without one beside it (its tokenizer and model section).",
        ),
    ] = None,
    max_shard_size: Annotated[
        str | None,
        typer.Option(
            "--max-shard-size",
            metavar="SIZE",
            help="--to hf only: largest safetensors file, such as 500MB or 2GiB "
            f"({DEFAULT_SHARD_SIZE} when not given); meta and wmtp write one file.",
            show_default=False,
        ),
    ] = None,
    progress: Annotated[
        bool, typer.Option("--progress/--no-progress", help="Show progress while writing.")
    ] = True,
    overrides: SetOption = None,
) -> None:
    """Write a trained model in a format other tools load, with its tokenizer and a model card.

    The model is built as training and `wmtp eval` build it (its recipe, its checkpoint), on the
    CPU, then written under a temporary name and renamed when complete. `wmtp eval DIR` and
    `wmtp bench decode --checkpoint DIR` take a policy's export as they take a run; a critic's
    (a value model) is the `\\[model.critic]` of a later recipe (its model card says how).
    """
    from wmtp.export import export_model

    max_shard_bytes = shard_bytes(max_shard_size, to)
    result = export_model(
        source,
        to=to.value,
        out=out,
        merge_lora=merge_lora,
        dtype=dtype.value if dtype else None,
        heads=heads.value,
        force=force,
        recipe=recipe,
        overrides=tuple(overrides or ()),
        max_shard_bytes=max_shard_bytes,
        progress=progress,
        console=console,
    )
    step = f" (step {result.source.step})" if result.source.trained else ""
    console.print(
        f"exported {result.source.weights}{step} -> {result.out} ({result.to}, {result.dtype}, "
        f"{_what(result)}): {', '.join(sorted(result.files))}",
        highlight=False,
        soft_wrap=True,  # paths whole, off a terminal too
    )


def _what(result) -> str:
    """``2 heads``, ``1 head``, or ``value model`` (a critic predicts no tokens)."""
    if result.kind == "value_model":
        return "value model"
    return f"{result.heads} head{'s' * (result.heads > 1)}"


def shard_bytes(text: str | None, to: Target) -> int:
    """``--max-shard-size`` in bytes (the default where not given); refused for a format that
    writes its weights as one file, where it would do nothing."""
    if text is None:
        return parse_size(DEFAULT_SHARD_SIZE)
    if to != Target.hf:
        raise typer.BadParameter(
            f"shards the safetensors of --to hf only; --to {to.value} writes its weights as "
            "one file: leave it out",
            param_hint="--max-shard-size",
        )
    return parse_size(text)


def parse_size(text: str) -> int:
    """Bytes of ``5GB``, ``500MB``, ``2GiB``, ``1000`` (decimal units, as transformers')."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([A-Za-z]*)\s*", text)
    unit = match.group(2).upper() if match else None
    if match is None or unit not in SIZE_UNITS or float(match.group(1)) <= 0:
        raise typer.BadParameter(
            f"{text!r}: a size such as 5GB, 500MB or 2GiB", param_hint="--max-shard-size"
        )
    return int(float(match.group(1)) * SIZE_UNITS[unit])
