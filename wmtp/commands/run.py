"""``wmtp run``: train a recipe on one process, or on several through torchrun.

Multi-node: run ``torchrun`` yourself on every node with its own flags and the same arguments,
e.g. ``torchrun --nnodes 2 --node-rank 0 --nproc-per-node 8 --rdzv-backend c10d
--rdzv-endpoint HOST:29500 -m wmtp.cli run recipes/verifiable.toml`` (node-rank 1 on the other).
"""

from __future__ import annotations

import logging
import os
import signal
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
from wmtp.commands._output import console_log


def register(app: typer.Typer) -> None:
    """Add ``run`` to ``app``."""
    command(app, "run", no_args_is_help=True)(run)


def run(
    recipe: Annotated[
        Path | None,
        typer.Argument(
            help="The recipe to train (optional with --resume: the run's own recipe).",
            show_default=False,
        ),
    ] = None,
    set_: SetOption = None,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Build every component, then stop before training.")
    ] = False,
    resume: Annotated[
        Path | None,
        typer.Option(
            "--resume", help="Continue RUN_DIR from its newest checkpoint.", metavar="RUN_DIR"
        ),
    ] = None,
    force: Annotated[
        bool,
        typer.Option(
            "--force",
            help="Resume even when the recipe's numerics, the global batch or the data files "
            "changed since the checkpoint (other shapes, another pipeline or another source "
            "of the trained weights are refused even so).",
        ),
    ] = False,
    nproc_per_node: NprocOption = 1,
    sandbox: SandboxOption = None,
) -> None:
    """Train RECIPE into a new run directory (or an evaluation recipe: evaluate).

    The run directory, runs/<experiment>/<YYYYmmdd-HHMMSS>-<hash8>/, holds the resolved recipe,
    fingerprint, metrics, TensorBoard events and checkpoints.

    The recipe, every file it names and the resume are checked first, before torch loads: a
    problem is a located message and exit code 2. So is one the start meets later (a malformed
    data line, a model that cannot be built here): a new run then leaves no run directory; any
    other failure keeps the run's log, run.log, in it. The built-in HumanEval dataset (and an
    evaluation recipe) run code in the sandbox: see --sandbox."""
    from wmtp.sandbox import choose
    from wmtp.train.launcher import die_with_parent

    rank = int(os.environ.get("RANK", "0"))
    console_log(logging.INFO if rank == 0 else logging.WARNING)
    choose(sandbox)
    if recipe is not None and resume is None:
        _warn_if_a_run(recipe, rank)
    if nproc_per_node > 1 and "WORLD_SIZE" not in os.environ:
        from wmtp.train.runner import VERIFIED_ENV, prepare_run

        # Once here, exit 2 and no torch: not once per worker under torchrun's summary.
        prepared = prepare_run(
            recipe, list(set_ or ()), resume=resume, force=force, world_size=nproc_per_node
        )
        if prepared.checkpoint is not None:
            os.environ[VERIFIED_ENV] = str(prepared.checkpoint)
        relaunch(("run",), nproc_per_node)
    if "WORLD_SIZE" in os.environ:  # a torchrun worker: end with torchrun, even a killed one
        die_with_parent()
    from wmtp.train.runner import run_recipe

    try:
        result = run_recipe(
            recipe, list(set_ or ()), resume=resume, force=force, dry_run=dry_run, console=rank == 0
        )
    except KeyboardInterrupt as exc:  # before the run's own handlers were in place
        signum = getattr(exc, "signum", signal.SIGINT)  # SIGTERM: a stopping.Terminated
        name = signal.Signals(signum).name
        console.print(f"stopped: {name} while starting; nothing was trained", highlight=False)
        raise typer.Exit(128 + signum) from None
    if rank == 0:
        console.print(result.summary(), highlight=False, soft_wrap=True)  # paths whole


def _warn_if_a_run(recipe: Path, rank: int) -> None:
    """A run directory given as RECIPE trains a new run from its ``recipe.toml``: said, since a
    user who meant to continue it (``--resume``) would otherwise find out only from the new
    run's folder. Once: not again by the workers ``--nproc-per-node`` launches."""
    from wmtp.models.locate import follow_latest, is_run_dir
    from wmtp.train.run_log import FAILURES_ENV

    if rank != 0 or FAILURES_ENV in os.environ or not is_run_dir(follow_latest(recipe)):
        return
    logging.getLogger(__name__).warning(
        "%s is a run: this starts a new run from its recipe.toml; to continue that run "
        "instead: wmtp run --resume %s",
        recipe,
        recipe,
    )
