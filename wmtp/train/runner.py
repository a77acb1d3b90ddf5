"""``wmtp run`` behind the CLI: check the recipe and its inputs, prepare the run directory, train.

:func:`prepare_run` is everything checked before a process starts, without torch: the recipe (or
the resumed run's), every input file it names (``wmtp.recipe.inputs``) and the resume. A problem
there is a located error, exit 2, in about the time ``wmtp validate`` takes. :func:`run_recipe` is
the Python entry point (tests call it in-process): it prepares, then trains; it works the same
on one process and under torchrun, where rank 0 creates the run directory and tells the others.
A new run whose start fails on the user's input (data, a model that cannot be built) leaves no
run directory: its error says all its log would (:func:`_removed`).
"""

from __future__ import annotations

import contextlib
import logging
import os
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from wmtp.errors import LibraryFailure, RunError

log = logging.getLogger(__name__)

REFUSED_ON_RESUME = ("numerics", "checkpoint")
VERIFIED_ENV = "WMTP_VERIFIED_CHECKPOINT"
"""Set by ``wmtp run --nproc-per-node N`` for its workers: the checkpoint it verified once."""
"""Change categories (``wmtp diff``) that make a resumed run compute something else."""


@dataclass
class RunResult:
    run_dir: Path
    step: int
    last: dict[str, Any]
    dry_run: bool = False
    evaluated: bool = False
    """The ``evaluation`` pipeline ran: ``run_dir`` is where its results are."""
    done_before: str = ""
    """A resumed run that had already trained all its steps: nothing ran. The setting that
    planned them (``training.max_steps``, ``training.epochs = 2``)."""

    def summary(self) -> str:
        """How the run ended, as the console and ``run.log`` say it."""
        if self.evaluated and self.dry_run:
            return (
                "dry run: the model and benchmarks built, nothing evaluated; results would go "
                f"to {self.run_dir}"
            )
        if self.evaluated:
            return f"evaluated; results in {self.run_dir}"
        if self.dry_run:
            return f"dry run: every component built; run directory {self.run_dir}"
        if self.done_before:
            return (
                f"nothing to do: the run had trained all its {self.step} steps "
                f"({self.done_before}); run directory {self.run_dir}"
            )
        loss = self.last.get("loss")
        shown = f", loss {loss:.4f}" if isinstance(loss, float) else ""
        steps = "1 step" if self.step == 1 else f"{self.step} steps"
        return f"trained {steps}{shown}; run directory {self.run_dir}"


@dataclass(frozen=True)
class PreparedRun:
    """A run that passed every check that needs no torch."""

    recipe_path: Path
    recipe: Any
    checkpoint: Path | None
    """The checkpoint to resume from (``--resume``)."""
    loaded: Any = None
    """The loaded recipe (``wmtp.recipe.LoadedRecipe``): where each value was set."""


def prepare_run(
    recipe_path: str | Path | None,
    overrides: list[str] | tuple[str, ...] = (),
    *,
    resume: str | Path | None = None,
    force: bool = False,
    world_size: int | None = None,
) -> PreparedRun:
    """The recipe (or the resumed run's own: the one its newest intact checkpoint trained with),
    its inputs and the resume, checked without torch (see the module docstring); a located
    ``RecipeProblems`` lists every missing input. ``world_size``: the processes the run will
    have (default: torchrun's ``WORLD_SIZE``, or 1)."""
    from wmtp.recipe import RecipeProblems, load_recipe
    from wmtp.recipe.inputs import input_problems, unusable_inputs

    if recipe_path is None and resume is None:
        raise RunError("give a RECIPE, or --resume RUN_DIR to continue a run with its own recipe")
    run = _resumable(resume) if resume is not None else None
    loaded = load_recipe(recipe_path, overrides) if recipe_path is not None else None
    checkpoint = None
    if run is not None:
        world_size = world_size or int(os.environ.get("WORLD_SIZE", "1"))
        loaded, checkpoint = _resume_of(run, loaded, overrides, force, world_size)
    assert loaded is not None
    missing = input_problems(loaded) + unusable_inputs(loaded)
    if missing:
        raise RecipeProblems(f"{loaded.path} (paths it names that cannot be used)", missing)
    return PreparedRun(Path(loaded.path), loaded.recipe, checkpoint, loaded)


def _resume_of(run: Path, loaded: Any, overrides, force: bool, world_size: int) -> tuple:
    """The recipe that resumes ``run`` (``loaded``, the one given, or the one in force) with the
    frozen models the run started with, and the checkpoint it resumes from, every check passed."""
    from wmtp.recipe import load_recipe
    from wmtp.train.run_dir import pin_inputs, recipe_in_force

    if loaded is not None and loaded.recipe.pipeline.trains is None:
        raise RunError(
            f"experiment.pipeline = {loaded.recipe.experiment.pipeline!r} trains nothing to resume"
        )
    checkpoint = intact_checkpoint(run)
    if loaded is None:
        loaded = load_recipe(recipe_in_force(run, checkpoint), overrides)
    check_resume(run, checkpoint, loaded.recipe, force=force, world_size=world_size, loaded=loaded)
    # the frozen models it started with, wherever `latest` points now
    return replace(loaded, recipe=pin_inputs(run, loaded.recipe)), checkpoint


def _resumable(resume: str | Path) -> Path:
    """``resume`` as a run directory this user can write and no process trains now."""
    from wmtp.models.locate import CHECKPOINTS, is_run_dir
    from wmtp.train.run_dir import check_not_training, check_run_dir, check_writable

    given = Path(resume).resolve()
    if given.parent.name == CHECKPOINTS and is_run_dir(given.parent.parent):
        raise RunError(
            f"{resume} is a checkpoint of the run {given.parent.parent}: --resume takes the run "
            "directory, and goes on from its newest intact checkpoint (an older one would have "
            f"the run's later checkpoints overwritten): wmtp run --resume {given.parent.parent}"
        )
    run = check_run_dir(resume)
    check_writable(run)
    check_not_training(run)
    return run


def check_resume(
    run_dir: Path,
    checkpoint: Path,
    recipe: Any,
    *,
    force: bool,
    world_size: int = 1,
    loaded: Any = None,
) -> None:
    """Whether ``recipe`` may resume ``run_dir`` from ``checkpoint`` (:func:`intact_checkpoint`).
    Refuses a recipe whose numerics differ from the recipe that trained that checkpoint (its own
    ``recipe.toml``), or a global batch (micro-batch x accumulation x ``world_size``) other than
    the checkpoint's, unless ``force``, and, even forced, a change a resume cannot apply. A change
    of ``[evaluation]`` is none of these where the pipeline trains: it is read only by the
    evaluation after training, which the resumed run's recipe then gives. A new
    split of the same global batch (another world size, micro-batch or accumulation) is no
    change: every world size trains on the same global batches. Nor is a LoRA run's base model
    given at another path (``loaded``, the recipe as loaded, says where), where it is the one the
    run recorded (:func:`_without_moved_base`)."""
    from wmtp.recipe import diff_recipes, load_recipe
    from wmtp.train.run_dir import RECIPE_FILE

    # the recipe that trained the checkpoint, which the run's own recipe.toml, a file a user
    # may edit, must not stand in for
    trained = checkpoint / RECIPE_FILE
    saved = load_recipe(trained if trained.is_file() else run_dir / RECIPE_FILE).recipe
    changes = _without_moved_base(diff_recipes(saved, recipe), saved, recipe, checkpoint, loaded)
    was, now = _trained_batch(checkpoint, saved), _global_batch(recipe, world_size)
    if was[0] == now[0]:
        changes = [c for c in changes if c.key not in BATCH_SPLIT_KEYS]
    if recipe.pipeline.trains is not None:  # training never reads [evaluation]: `wmtp eval` does
        changes = [c for c in changes if not c.key.startswith("evaluation.")]
    computing = [c for c in changes if c.category in REFUSED_ON_RESUME]
    refused = [f"{c.key}: {c.old!r} -> {c.new!r} ({c.category})" for c in computing]
    applied = [f"{c.key} {c.old!r} -> {c.new!r}" for c in computing]
    if was[0] != now[0]:
        refused.append(f"global batch: {was[1]} -> {now[1]} (numerics)")
        applied.append(f"global batch {was[1]} -> {now[1]}")
    if refused and not force:
        lines = "\n".join(f"  {line}" for line in refused)
        what = (
            "use the run's recipe" if was[0] == now[0] else _batch_hint(recipe, was[0], world_size)
        )
        raise RunError(
            f"cannot resume {run_dir}: the recipe differs from the run's in what it computes:\n"
            f"{lines}\n{what}, or pass --force to resume anyway"
        )
    _refuse_what_cannot_apply(run_dir, changes, recipe)
    if refused:
        log.warning("resuming with --force; applied from the new recipe: %s", ", ".join(applied))
    _check_data(run_dir, checkpoint, force=force)


def _without_moved_base(
    changes: list, saved: Any, recipe: Any, checkpoint: Path, loaded: Any
) -> list:
    """``changes`` less the trained role's ``path`` where it is the base of LoRA adapters (the
    trained weights are the adapters in ``checkpoint``; the base stays frozen) and the model at
    that path, new or not, is the base the run recorded: checked as every reader of the adapters
    checks it (``wmtp.recipe.inputs.lora_base_problem``, which says once that it was found at a
    new path). Another model there (also one put at the old path since), no model, or a new path
    where the run recorded no identity: a ``RecipeProblems`` at the key, before anything of the
    run changes."""
    from wmtp.models.locate import LORA_WEIGHTS

    role = recipe.pipeline.trains
    key = f"model.{role}.path"
    if loaded is None or role is None:
        return changes
    theirs, ours = getattr(saved.model, role, None), getattr(recipe.model, role, None)
    adapters = (checkpoint / LORA_WEIGHTS).is_file()
    if not (adapters and theirs and ours and theirs.lora and ours.lora and ours.path):
        return changes
    from wmtp.recipe import RecipeProblems
    from wmtp.recipe.inputs import lora_base_problem

    problem = lora_base_problem(loaded, role, checkpoint)
    if problem is not None:
        raise RecipeProblems(str(loaded.path), [problem])
    return [c for c in changes if c.key != key]


def _check_data(run_dir: Path, checkpoint: Path, *, force: bool) -> None:
    """Refuses, unless ``force``, data files edited since ``checkpoint`` was written: the epoch's
    order and the rows behind the saved position would not be the ones it trained on."""
    from wmtp.train.run_dir import changed_data_files

    changed = changed_data_files(checkpoint)
    if not changed:
        return
    lines = "\n".join(f"  {line}" for line in changed)
    if not force:
        raise RunError(
            f"cannot resume {run_dir}: its data changed since the checkpoint:\n{lines}\n"
            "the resumed run would train on other rows than the interrupted one; restore the "
            "data, or pass --force to go on with it as it is now"
        )
    log.warning("resuming with --force on data changed since the checkpoint:\n%s", lines)


BATCH_SPLIT_KEYS = ("training.micro_batch_size", "training.grad_accum_steps")
"""How a global batch is split; changing them with the world size keeps the batch."""


def _global_batch(recipe: Any, world_size: int) -> tuple[int, str]:
    """Rows per optimizer step, and how they are made (``8 rows (4 x 1 accum x 2 processes)``)."""
    t = recipe.training
    rows = t.micro_batch_size * t.grad_accum_steps * world_size
    processes = "process" if world_size == 1 else "processes"
    how = f"{t.micro_batch_size} x {t.grad_accum_steps} accum x {world_size} {processes}"
    return rows, f"{rows} rows ({how})"


def _trained_batch(checkpoint: Path, trained: Any) -> tuple[int, str]:
    """The global batch ``checkpoint`` trained with: its recipe ``trained`` (a resume may have
    split the batch anew) at its ``trainer.json``'s world size (one process where it does not
    say)."""
    import json

    try:
        world_size = int(json.loads((checkpoint / "trainer.json").read_text())["world_size"])
    except (OSError, ValueError, KeyError, TypeError):
        world_size = 1
    return _global_batch(trained, world_size)


def _batch_hint(recipe: Any, rows: int, world_size: int) -> str:
    """How to keep ``rows`` per step at ``world_size``: the accumulation, when one does."""
    per_step = recipe.training.micro_batch_size * world_size
    if rows % per_step:
        return f"set micro_batch_size x grad_accum_steps x {world_size} to {rows} to keep it"
    return f"set training.grad_accum_steps={rows // per_step} to keep the global batch"


def _refuse_what_cannot_apply(run_dir: Path, changes: list, recipe: Any) -> None:
    """Changes no resume can honour, --force or not: the trained model's shapes (the
    checkpoint's tensors have the old ones), its weights' source (they come from the
    checkpoint) and the pipeline (another objective, another model)."""
    trained = f"model.{recipe.pipeline.trains}."
    weights = (f"{trained}path", f"{trained}format", f"{trained}checkpoint")
    why = {}
    for c in changes:
        if c.category == "checkpoint":
            why[c.key] = "the checkpoint holds tensors of the old shapes"
        elif c.key in weights:
            why[c.key] = "the trained weights come from the checkpoint being resumed"
        elif c.key == "experiment.pipeline":
            why[c.key] = "another pipeline trains another objective: start a new run"
    if why:
        lines = "\n".join(f"  {key}: {reason}" for key, reason in why.items())
        raise RunError(f"cannot resume {run_dir} with these changes, even with --force:\n{lines}")


def intact_checkpoint(run_dir: Path) -> Path:
    """The newest checkpoint of ``run_dir`` whose every file matches its manifest; each damaged
    one on the way is named (which file, why) in a warning, and none intact is a RunError."""
    from wmtp.errors import CheckpointError
    from wmtp.models.locate import step_dirs
    from wmtp.train.manifest import verify

    steps = step_dirs(run_dir)
    if not steps:
        raise RunError(f"cannot resume {run_dir}: it has no complete checkpoint under checkpoints/")
    verified = os.environ.get(VERIFIED_ENV)
    if verified and Path(verified) in steps:  # the launcher verified it for its workers
        return Path(verified)
    damaged = []
    for step in reversed(steps):
        try:
            verify(step)
        except CheckpointError as exc:
            damaged.append(exc.render())
            log.warning("%s; trying the checkpoint before it", exc.render())
            continue
        if damaged:
            log.warning("resuming from %s, the newest intact checkpoint", step.name)
        return step
    raise RunError(f"cannot resume {run_dir}: no intact checkpoint:\n  " + "\n  ".join(damaged))


def _shared_run_dir(ctx, make) -> Path:
    """Rank 0 makes the run directory; every rank gets its path."""
    import torch.distributed as dist

    path = [str(make()) if ctx.is_main else None]
    if dist.is_initialized() and ctx.world_size > 1:
        dist.broadcast_object_list(path, src=0)
    return Path(path[0])


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
    prepared = prepare_run(recipe_path, overrides, resume=resume, force=force)  # no torch yet
    recipe, checkpoint = prepared.recipe, prepared.checkpoint
    if recipe.pipeline.trains is None:
        return _evaluate(prepared.recipe_path, overrides, console=console, dry_run=dry_run)
    from wmtp.parallel import init_distributed, teardown
    from wmtp.recipe import dump_recipe
    from wmtp.train.guards import StopSignals
    from wmtp.train.run_dir import (
        pin_inputs_against_pruning,
        record_moved_bases,
        training_lock,
    )
    from wmtp.train.run_log import TRAINING_SUFFIX, RunLog, exit_without_peers, mark_rank

    text = dump_recipe(recipe)
    _check_device(prepared)
    _check_sandbox(prepared)
    _warn_memory(prepared)
    _warn_tokenizer(prepared)
    ctx = init_distributed(recipe.parallel.device)
    run_dir: Path | None = None
    with StopSignals(ctx) as signals, RunLog() as run_log, contextlib.ExitStack() as held:
        signals.record = run_log.ended  # a second signal's stop, said on the console already
        if ctx.is_distributed:  # from here a signal stops this rank with a checkpoint
            mark_rank(ctx.rank, TRAINING_SUFFIX)
        try:
            run_dir = (
                Path(resume).resolve() if resume is not None else _new_run_dir(ctx, recipe, text)
            )
            if ctx.is_main:  # before its log: a second resume of a run in training writes nothing
                held.enter_context(training_lock(run_dir))
                pin_inputs_against_pruning(run_dir)  # its frozen models' checkpoints, till it ends
                if resume is not None and not dry_run:
                    record_moved_bases(run_dir, recipe)  # a LoRA base found at another path
            run_log.attach(run_dir, ctx)
            result = _train(
                recipe, text, run_dir, ctx, signals, checkpoint, dry_run, stop_at_step, console
            )
            run_log.ended(result.summary())
            return result
        except BaseException as exc:
            signals.run_failed()
            new_start = resume is None and signals.building  # no step ran: nothing to keep
            error = _located(_naming_the_run(exc, ctx, run_dir, new_start), prepared.loaded)
            failed_start = new_start and _failed_on_input(error, ctx)
            if not (failed_start and _removed(run_dir, ctx, held, run_log)):
                run_log.failed(error, run_dir)
            if ctx.is_distributed:
                exit_without_peers(error, ctx.rank, failed_start=failed_start)
            if error is exc:
                raise
            raise error from None
        finally:
            teardown()


def _input_error(exc: BaseException) -> bool:
    """Whether ``exc`` is a problem of the user's input (the recipe, its data, a checkpoint or
    tokenizer it names), which its located message says whole: a ``WmtpError`` other than a stop
    (``Interrupted``), a write the file system refused (``StorageError``) or a
    ``LibraryFailure``, whose log says more than the message."""
    from wmtp.errors import Interrupted, StorageError, WmtpError

    kept = (Interrupted, StorageError, LibraryFailure)
    return isinstance(exc, WmtpError) and not isinstance(exc, kept)


def _failed_on_input(error: BaseException, ctx) -> bool:
    """Whether the user's input failed this start: ``error`` is such a problem, or the stop
    torchrun sent this rank (``Interrupted``) after a peer's start failed on one, maybe before
    this rank met the same."""
    from wmtp.errors import Interrupted
    from wmtp.train.run_log import peer_failed_start

    if _input_error(error):
        return True
    return ctx.is_distributed and isinstance(error, Interrupted) and peer_failed_start(ctx.rank)


def _removed(run_dir: Path | None, ctx, held: contextlib.ExitStack, run_log) -> bool:
    """Remove the new run directory of a start the user's input failed, its lock and log closed
    first (rank 0's, which made it); ``False``, keeping it, where it holds anything a step or
    someone else wrote (``wmtp.train.run_dir.holds_only_its_start``)."""
    from wmtp.train.run_dir import holds_only_its_start, remove_failed_start

    if not ctx.is_main or run_dir is None or not holds_only_its_start(run_dir):
        return False
    held.close()  # the training lock, a file of the directory
    run_log.close()
    remove_failed_start(run_dir)
    return True


def _check_device(prepared: PreparedRun) -> None:
    """``parallel.device = "cuda"`` without a visible GPU: a problem of the recipe, located where
    it was set (as ``wmtp validate --env`` says it), before torch.distributed starts."""
    import torch

    from wmtp.recipe import RecipeProblems
    from wmtp.recipe.inputs import NO_CUDA, located_problem

    if prepared.recipe.parallel.device == "cuda" and not torch.cuda.is_available():
        problem = located_problem(prepared.loaded, "parallel.device", NO_CUDA)
        raise RecipeProblems(str(prepared.loaded.path), [problem])


def _check_sandbox(prepared: PreparedRun) -> None:
    """The built-in HumanEval to build where the sandbox that labels its candidates cannot run:
    said at ``data.cache_dir`` before the models are built, as ``wmtp validate --env`` says it."""
    from wmtp.data.humaneval import sandbox_refusal
    from wmtp.recipe import RecipeProblems
    from wmtp.recipe.inputs import located_problem

    why = sandbox_refusal(prepared.recipe.data)
    if why is not None:
        problem = located_problem(prepared.loaded, "data.cache_dir", why)
        raise RecipeProblems(str(prepared.loaded.path), [problem])


def _warn_memory(prepared: PreparedRun) -> None:
    """On the CPU, a run past this machine's memory is killed by the kernel without a word:
    said before it starts, located (a warning: the estimate may overshoot what a run needs)."""
    import torch

    from wmtp.estimate import estimate, host_memory, memory_shortfall
    from wmtp.recipe.inputs import located_problem

    device = prepared.recipe.parallel.device
    if device == "cuda" or (device == "auto" and torch.cuda.is_available()):
        return  # a GPU's out-of-memory error is caught and said (wmtp.train.out_of_memory)
    world = int(os.environ.get("WORLD_SIZE", "1"))
    here = int(os.environ.get("LOCAL_WORLD_SIZE", world))
    cost = estimate(prepared.recipe, world)
    why = memory_shortfall(cost, host_memory(), "this machine's memory", here)
    if why is not None:
        where = located_problem(prepared.loaded, cost.memory.KEY, why).render()
        log.warning("%s; past it the kernel stops the run without a message (exit 137)", where)


def _warn_tokenizer(prepared: PreparedRun) -> None:
    """A tokenizer that loses code's whitespace, said before the run starts (located)."""
    from wmtp.recipe.inputs import tokenizer_warnings

    for warning in tokenizer_warnings(prepared.loaded):
        log.warning("%s", warning.render())


def _naming_the_run(
    exc: BaseException, ctx, run_dir: Path | None, new_start: bool
) -> BaseException:
    """A run directory removed while the run trained, said as such (whatever write found it
    gone); a stop before the first step (``StopSignal``), said as ``Interrupted``; a write the
    file system refused, said as ``StorageError`` (its trace kept as the cause, for
    ``run.log``), each with what the run directory keeps. Any other exception as it is.
    ``new_start``: a new run before its first step, which writes nothing that could fail for its
    directory being gone, and whose rank 0 removes that directory when the start failed on the
    user's input (the other ranks' own error says why)."""
    import signal

    from wmtp.errors import Interrupted, RunError, StopSignal, StorageError, WmtpError
    from wmtp.folders import refused_write

    removed = run_dir is not None and not new_start and not run_dir.exists()
    if removed and not isinstance(exc, Interrupted):
        gone = RunError(
            f"the run directory {run_dir} was removed while the run trained, and this run with "
            "it: nothing of it is left to resume; start a new run"
        )
        gone.__cause__ = exc
        return gone
    if isinstance(exc, StopSignal):
        name = signal.Signals(exc.signum).name
        kept = f"nothing was trained; {_kept(run_dir, ctx)}"
        return Interrupted(f"{name} before the first step: {kept}", exc.signum)
    refusal = refused_write(exc) if not isinstance(exc, WmtpError) else None
    if refusal is None:
        return exc
    error = StorageError(f"{refusal.render()}; {_kept(run_dir, ctx)}")
    error.__cause__ = exc
    return error


def _located(exc: BaseException, loaded: Any) -> BaseException:
    """A data problem that names the recipe key deciding it (``RecipeDataError``: a difficulty
    bin with weight and no rows) as a problem of the recipe, at that key's file:line or
    ``--set``, as ``wmtp validate --data`` says it; any other exception as it is."""
    from wmtp.errors import RecipeDataError
    from wmtp.recipe import RecipeProblems
    from wmtp.recipe.inputs import located_problem

    if not isinstance(exc, RecipeDataError) or loaded is None:
        return exc
    located = RecipeProblems(loaded.path, [located_problem(loaded, exc.key, exc.message)])
    located.__cause__ = exc
    return located


def _kept(run_dir: Path | None, ctx) -> str:
    """What a run that ended early leaves: a new run's directory has no checkpoint (never
    ``latest``), a resumed run's checkpoints are as they were."""
    from wmtp.train.run_dir import resume_command

    if run_dir is None:
        return "no run directory was made"
    if any((run_dir / "checkpoints").glob("step-*")):
        return (
            f"its checkpoints are as they were; continue with: "
            f"{resume_command(run_dir, ctx.world_size)}"
        )
    kept = "its recipe and log" if (run_dir / "run.log").is_file() else "its recipe"
    return f"{run_dir} keeps {kept}, no checkpoint"


def _train(recipe, text, run_dir, ctx, signals, checkpoint, dry_run, stop_at_step, console):
    """Build the trainer, resume it if asked, train. The trainer (its model, optimizer, device
    mesh) lives only in here, so it is gone before ``teardown`` leaves the process group."""
    from wmtp.train.loop import Trainer

    trainer = Trainer(recipe, text, run_dir, ctx, stop_at_step=stop_at_step, console=console)
    with _told(trainer, "while building the model and its optimizer"):
        trainer.build()
    if signals.requested():  # a StopSignal that code on the way caught (BaseException and all)
        trainer.stop_for_signal(signals.requested())
    if dry_run:
        trainer.batches.steps_per_epoch()  # no row left to train on fails here, as the run would
        return RunResult(run_dir, 0, {}, dry_run=True)
    if checkpoint is not None:
        trainer.resume(checkpoint)
        if trainer.step >= trainer.max_steps:
            trainer.finished()
            return RunResult(run_dir, trainer.step, {}, done_before=_planned_length(recipe))
    signals.building = False  # from the first step, a signal stops after a step, checkpointed
    with _told(trainer, None):
        out = trainer.run(signals)
    return RunResult(run_dir, trainer.step, out)


def _planned_length(recipe: Any) -> str:
    """The setting that planned a run's steps, in words."""
    epochs = recipe.training.epochs
    return "training.max_steps" if epochs is None else f"training.epochs = {epochs:g}"


@contextlib.contextmanager
def _told(trainer, doing: str | None):
    """A failure we can explain (memory, torch.compile) raised as one message that says what to
    change, from the original (which ``run.log`` keeps); ``doing``: what ran, ``None`` for the
    step in progress."""
    from wmtp.train.out_of_memory import out_of_memory_error

    try:
        yield
    except Exception as exc:
        error = out_of_memory_error(exc, trainer, doing) or _compile_error(exc, trainer)
        if error is None:
            raise
        raise error from exc


def _compile_error(exc: Exception, trainer) -> LibraryFailure | None:
    """A failure of torch.compile as one message naming ``parallel.compile`` (the full trace goes
    to the run's ``run.log``); ``None`` for any other exception."""
    from wmtp.parallel.checkpointing import compile_failure

    failure = compile_failure(exc)
    if failure is None:
        return None
    kept = (
        f"; its checkpoints up to step {trainer.saved_step} are kept" if trainer.saved_step else ""
    )
    setting = trainer.recipe.parallel.compile
    setting = '"auto"' if setting == "auto" else str(setting).lower()
    return LibraryFailure(
        f"torch.compile of the transformer blocks failed at step {trainer.step + 1} "
        f"(parallel.compile = {setting}): {failure}. "
        f"The run stopped{kept}; train without compiling: --set parallel.compile=false"
    )


def _new_run_dir(ctx, recipe: Any, text: str) -> Path:
    from wmtp.train.run_dir import create_run_dir, write_inputs

    def make() -> Path:
        run = create_run_dir(
            text, recipe.experiment.name, recipe.experiment.runs_dir, ctx.world_size
        )
        write_inputs(run, recipe)  # what `runs/x/latest` was when this run started
        return run

    return _shared_run_dir(ctx, make)


def _evaluate(recipe_path, overrides, *, console: bool, dry_run: bool = False) -> RunResult:
    """The ``evaluation`` pipeline: what ``wmtp eval RECIPE`` does (the recipe names the model);
    a dry run builds the model and reads the benchmarks, and evaluates nothing."""
    from wmtp.commands._common import console as rich_console
    from wmtp.eval.target import evaluate_target

    target, _ = evaluate_target(
        recipe_path,
        overrides=overrides,
        progress=console,
        console=rich_console if console else None,
        dry_run=dry_run,
    )
    return RunResult(Path(target.out_dir), 0, {}, dry_run=dry_run, evaluated=True)
