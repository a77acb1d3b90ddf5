"""``wmtp run`` behind the CLI: resolve the recipe, prepare the run directory, train.

:func:`run_recipe` is the Python entry point (tests call it in-process): it works the same on one
process and under torchrun, where rank 0 creates the run directory and tells the others.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from wmtp.errors import RunError

log = logging.getLogger(__name__)

REFUSED_ON_RESUME = ("numerics", "checkpoint")
"""Change categories (``wmtp diff``) that make a resumed run compute something else."""


@dataclass
class RunResult:
    run_dir: Path
    step: int
    last: dict[str, Any]
    dry_run: bool = False
    evaluated: bool = False
    """The ``evaluation`` pipeline ran: ``run_dir`` is where its results are."""


def check_resume(run_dir: Path, recipe: Any, *, force: bool) -> Path:
    """The checkpoint to resume ``run_dir`` from; refuses a recipe whose numerics differ."""
    from wmtp.recipe import diff_recipes, load_recipe
    from wmtp.train.checkpoint import latest_checkpoint
    from wmtp.train.run_dir import RECIPE_FILE, check_run_dir

    run_dir = check_run_dir(run_dir)
    saved = load_recipe(run_dir / RECIPE_FILE).recipe
    refused = [c for c in diff_recipes(saved, recipe) if c.category in REFUSED_ON_RESUME]
    if refused and not force:
        lines = "\n".join(f"  {c.key}: {c.old!r} -> {c.new!r} ({c.category})" for c in refused)
        raise RunError(
            f"cannot resume {run_dir}: the recipe differs from the run's in what it computes:\n"
            f"{lines}\nuse the run's recipe, or pass --force to resume anyway"
        )
    ckpt = latest_checkpoint(run_dir)
    if ckpt is None:
        raise RunError(f"cannot resume {run_dir}: it has no complete checkpoint under checkpoints/")
    return ckpt


def _shared_run_dir(ctx, make) -> Path:
    """Rank 0 makes the run directory; every rank gets its path."""
    import torch.distributed as dist

    path = [str(make()) if ctx.is_main else None]
    if dist.is_initialized() and ctx.world_size > 1:
        dist.broadcast_object_list(path, src=0)
    return Path(path[0])


def check_before_launch(
    recipe_path: str | Path | None,
    overrides: list[str],
    *,
    resume: str | Path | None = None,
    force: bool = False,
) -> None:
    """What ``run_recipe`` checks before any process starts: the recipe (or the resumed run's)
    and the resume; a located error here ends ``--nproc-per-node N`` once, with exit code 2,
    instead of once per worker under torchrun's summary."""
    _, recipe = resolve_recipe(recipe_path, overrides, resume)
    if resume is not None:
        check_resume(Path(resume), recipe, force=force)


def resolve_recipe(
    recipe_path: str | Path | None, overrides: list[str] | tuple[str, ...], resume
) -> tuple[Path, Any]:
    """``(path, recipe)``: RECIPE with its overrides, or without one the resumed run's own."""
    from wmtp.recipe import load_recipe
    from wmtp.train.run_dir import RECIPE_FILE, check_run_dir

    if recipe_path is None:
        if resume is None:
            raise RunError(
                "give a RECIPE, or --resume RUN_DIR to continue a run with its own recipe"
            )
        recipe_path = check_run_dir(resume) / RECIPE_FILE
    return Path(recipe_path), load_recipe(recipe_path, overrides).recipe


def run_recipe(
    recipe_path: str | Path | None,
    overrides: list[str] | tuple[str, ...] = (),
    *,
    resume: str | Path | None = None,
    force: bool = False,
    dry_run: bool = False,
    stop_at_step: int | None = None,
    console: bool = True,
) -> RunResult:
    """Train ``recipe_path`` (or the resumed run's own recipe) and return where and how far."""
    from wmtp.parallel import init_distributed, teardown
    from wmtp.recipe import dump_recipe
    from wmtp.train.loop import Trainer
    from wmtp.train.run_dir import create_run_dir

    recipe_path, recipe = resolve_recipe(recipe_path, overrides, resume)
    if recipe.pipeline.trains is None:
        if resume is not None:
            raise RunError(
                f"experiment.pipeline = {recipe.experiment.pipeline!r} trains nothing to resume"
            )
        return _evaluate(recipe_path, overrides, console=console)
    checkpoint = check_resume(Path(resume), recipe, force=force) if resume is not None else None
    text = dump_recipe(recipe)
    ctx = init_distributed(recipe.parallel.device)
    try:
        if resume is not None:
            run_dir = Path(resume).resolve()
        else:
            run_dir = _shared_run_dir(
                ctx,
                lambda: create_run_dir(
                    text, recipe.experiment.name, recipe.experiment.runs_dir, ctx.world_size
                ),
            )
        trainer = Trainer(recipe, text, run_dir, ctx, stop_at_step=stop_at_step, console=console)
        trainer.build()
        if dry_run:
            return RunResult(run_dir, 0, {}, dry_run=True)
        if checkpoint is not None:
            trainer.resume(checkpoint)
        out = trainer.run()
        return RunResult(run_dir, trainer.step, out)
    except BaseException as exc:
        if ctx.is_distributed:
            _exit_without_peers(exc, ctx.rank)
        raise
    finally:
        teardown()


def _exit_without_peers(exc: BaseException, rank: int) -> None:
    """A failing rank of a multi-process run says why once and exits at once.

    Leaving the process group cleanly would wait for peers that are blocked in a collective (NCCL
    then hangs until its timeout); exiting lets torchrun see the failure and stop every other rank.
    """
    import os
    import sys
    import traceback

    from wmtp.errors import WmtpError

    if isinstance(exc, WmtpError):
        print(f"error (rank {rank}): {exc.render()}", file=sys.stderr)
    elif not isinstance(exc, KeyboardInterrupt | SystemExit):
        traceback.print_exception(exc, file=sys.stderr)
    sys.stderr.flush()
    sys.stdout.flush()
    os._exit(2 if isinstance(exc, WmtpError) else 1)


def _evaluate(recipe_path, overrides, *, console: bool) -> RunResult:
    """The ``evaluation`` pipeline: what ``wmtp eval RECIPE`` does (the recipe names the model)."""
    from wmtp.commands._common import console as rich_console
    from wmtp.eval.target import evaluate_target

    target, _ = evaluate_target(
        recipe_path,
        overrides=overrides,
        progress=console,
        console=rich_console if console else None,
    )
    return RunResult(run_dir=Path(target.out_dir), step=0, last={}, evaluated=True)
