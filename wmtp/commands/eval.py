"""Evaluation commands: ``eval`` (pass@k of a run or checkpoint) and ``report`` (compare runs).

Heavy imports (torch, matplotlib) happen inside the commands.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from wmtp.commands._common import (
    NprocOption,
    SandboxOption,
    SetOption,
    command,
    console,
    relaunch,
)


def register(app: typer.Typer) -> None:
    """Add ``eval`` and ``report`` to ``app``."""
    command(app, "eval", no_args_is_help=True)(eval_command)
    command(app, "report", no_args_is_help=True)(report_command)


def eval_command(
    target: Annotated[
        Path,
        typer.Argument(
            help="A run directory (its newest checkpoint), a run's checkpoints/step-N, a "
            "checkpoint directory with a recipe.toml beside its weights (a `wmtp export` has "
            "one), or an evaluation recipe "
            "(its model.policy.checkpoint or .path).",
            show_default=False,
        ),
    ],
    overrides: SetOption = None,
    recipe: Annotated[
        Path | None,
        typer.Option(
            "--recipe",
            metavar="FILE",
            help="Recipe to use instead of the one beside the checkpoint (tokenizer, "
            "dtype, \\[evaluation]).",
        ),
    ] = None,
    out: Annotated[
        Path | None,
        typer.Option(
            "--out",
            metavar="DIR",
            help="Folder for the <benchmark>/ result folders (default: <run>/eval/step-N; "
            "<checkpoint>/eval for a checkpoint with its recipe.toml, such as an export; "
            "<runs_dir>/<experiment>/eval for a pretrained model).",
        ),
    ] = None,
    include_seen: Annotated[
        bool,
        typer.Option(
            "--include-seen",
            help="Also score the problems the model trained on, reported separately as seen "
            "(evaluation.include_seen = true).",
        ),
    ] = False,
    progress: Annotated[
        bool, typer.Option("--progress/--no-progress", help="Show progress bars.")
    ] = True,
    sandbox: SandboxOption = None,
    nproc_per_node: NprocOption = 1,
) -> None:
    """pass@k of a trained policy on the recipe's \\[evaluation] benchmarks, in the sandbox.

    Scores the problems the model did not train on (its run's training split says which;
    --include-seen adds the others, reported apart). Generates n samples per problem, checks each
    in the sandbox on a worker pool, writes <run>/eval/step-N/<benchmark>/ (samples.jsonl,
    problems.jsonl, summary.json: pass@k ± standard error, the split, decoding settings,
    sandbox, wall times), and prints a table. With --nproc-per-node N, N processes (one per
    GPU) each generate and check a share of the problems: the same samples, N times the speed.
    """
    import os

    from wmtp.eval.target import evaluate_target, prepare_eval
    from wmtp.sandbox import choose

    choose(sandbox)
    seen = ["evaluation.include_seen=true"] if include_seen else []
    settings = {"overrides": [*(overrides or []), *seen], "recipe": recipe, "out": out}
    if "WORLD_SIZE" in os.environ:  # a torchrun worker: end with torchrun, even a killed one
        from wmtp.train.launcher import die_with_parent

        die_with_parent()
    elif nproc_per_node > 1:
        prepare_eval(target, **settings)  # a mistake is one message, before any worker starts
        relaunch(("eval",), nproc_per_node)
    resolved, _ = evaluate_target(target, **settings, progress=progress, console=console)
    if int(os.environ.get("RANK", "0")) == 0:
        from wmtp.recipe.load import display_path

        where = display_path(resolved.out_dir)
        console.print(f"results in {where}", highlight=False, soft_wrap=True)  # the path whole


def report_command(
    runs: Annotated[
        list[Path],
        typer.Argument(help="Run directories to compare.", show_default=False),
    ],
    out: Annotated[
        Path, typer.Option("--out", metavar="DIR", help="Folder for the figures and report.md.")
    ],
    step: Annotated[
        int | None,
        typer.Option(
            "--step",
            min=0,
            metavar="N",
            help="Headline pass@k of this checkpoint step (default: each run's newest evaluated).",
        ),
    ] = None,
) -> None:
    """Figures (cross-entropy on the same footing, per head, token weights, pass@k by step,
    throughput, critic) and report.md: a headline table, then each run's details.

    Reads each run's metrics.jsonl, TensorBoard events, recipe.toml and eval/step-N/ results.
    """
    from wmtp.eval.report import write_report

    report = write_report(runs, out, step=step)
    for label, words in report.said.items():
        console.print(f"{label}: pass@k {words}", highlight=False)
    for path in report.files:
        console.print(f"wrote {path}", highlight=False)
