"""What ``wmtp export`` reads: the checkpoint or model a SOURCE names, checked whole, and its recipe.

A SOURCE is

- a run directory (``recipe.toml`` + ``checkpoints/step-N/``) or ``<experiment>/latest``: its
  newest complete checkpoint, with or without consolidated weights (``state/`` alone is enough);
- one training checkpoint, ``<run>/checkpoints/step-N`` (or any directory with ``model.safetensors``,
  ``lora.safetensors`` or a DCP ``state/``, and a ``recipe.toml`` beside it or in its run);
- a model directory wmtp can load (Meta ``params.json``, Hugging Face ``config.json``, wmtp
  ``wmtp_model.json``), with its ``recipe.toml``, ``--recipe``, or a tokenizer file beside the
  weights (``tokenizer.model`` or ``tokenizer.json``), from which a recipe is made. An earlier
  export's ``recipe.toml`` reads the tokenizer file the export holds, wherever the folder now is.

Torch-free: every check here runs before a model is built.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

from wmtp.errors import CheckpointError, ExportError
from wmtp.export import exported_step
from wmtp.models.locate import (
    CHECKPOINTS,
    DCP_STATE,
    FULL_WEIGHTS,
    LORA_WEIGHTS,
    RECIPE_FILE,
    STEP_DIR,
    follow_latest,
    is_run_dir,
    keep_named_checkpoint,
    newest_whole,
    require_base_state,
    step_dirs,
)
from wmtp.recipe.inputs import MODEL_MARKERS, TOKENIZER_FILES

HALF_WRITTEN = re.compile(r"^\.tmp-step-\d+$")
"""The name a trainer checkpoint has while it is written (renamed to ``step-N`` when whole)."""


@dataclass(frozen=True)
class Source:
    """A resolved SOURCE."""

    weights: Path
    """The training checkpoint or model directory whose weights are exported."""
    run: Path | None
    """The run directory it belongs to, if any."""
    recipe_file: Path | None
    """Its recipe (``None``: a model directory whose recipe is made from its tokenizer)."""
    trained: bool
    """A wmtp training checkpoint (not a model directory)."""

    @property
    def step(self) -> int | None:
        """The training step of a checkpoint: ``trainer.json``'s, else its ``step-N`` name; of an
        earlier export, the step it was made from."""
        trainer = self.weights / "trainer.json"
        if trainer.is_file():
            try:
                return int(json.loads(trainer.read_text())["step"])
            except (ValueError, KeyError, TypeError):
                pass
        match = STEP_DIR.match(self.weights.name)
        if match:
            return int(match.group(1))
        return exported_step(self.weights)  # an export of an export: its source's step

    @property
    def consolidated(self) -> Path | None:
        """The checkpoint's consolidated weights file, if it has one."""
        for name in (FULL_WEIGHTS, LORA_WEIGHTS):
            if (self.weights / name).is_file():
                return self.weights / name
        return None


def resolve_source(path: str | Path, recipe: str | Path | None = None) -> Source:
    """The checkpoint or model directory ``path`` names (see the module docstring)."""
    given = path
    path = follow_latest(path)
    if not path.exists():
        raise CheckpointError(f"{given}: {_why_missing(path)}")
    path = path.resolve()
    if path.is_file():
        raise CheckpointError(f"{given}: {_why_not_a_file(path)}")
    if HALF_WRITTEN.match(path.name):
        raise CheckpointError(
            f"{path}: a half-written checkpoint (the trainer writes .tmp-step-N and renames it "
            "to step-N once every file is there): its run stopped while saving; export a "
            "complete checkpoint instead"
        )
    run, weights = _run_and_checkpoint(path)
    trained = _is_training_checkpoint(weights)
    if not trained and not _is_model_dir(weights):
        raise CheckpointError(
            f"{given}: neither a run directory (recipe.toml + checkpoints/), a training "
            f"checkpoint ({FULL_WEIGHTS}, {LORA_WEIGHTS} or {DCP_STATE}/) nor a model directory "
            f"({', '.join(MODEL_MARKERS)})"
        )
    recipe_file = Path(recipe) if recipe is not None else _recipe_beside(weights, run)
    if recipe_file is None and (trained or not _tokenizer_beside(weights)):
        raise ExportError(
            f"{weights}: no recipe.toml beside the weights"
            + ("" if trained else " and no tokenizer file (tokenizer.model, tokenizer.json)")
            + "; give one with --recipe (its [tokenizer] and model section describe the model)"
        )
    return Source(weights, run, recipe_file, trained)


def _why_missing(path: Path) -> str:
    """What a SOURCE that does not exist should have been: a step of a run names the steps the
    run has (``keep_last`` pruned the others)."""
    run = path.parent.parent
    if STEP_DIR.match(path.name) and path.parent.name == CHECKPOINTS and is_run_dir(run):
        steps = [p.name for p in step_dirs(run)]
        held = f"its checkpoints are {', '.join(steps)}" if steps else "it has no checkpoint yet"
        return (
            f"no such checkpoint in the run {run.resolve()}: {held} (training keeps the newest "
            "keep_last of them); give one of those, or the run for its newest"
        )
    return "no such run directory, checkpoint or model directory"


def _why_not_a_file(path: Path) -> str:
    """A file given as SOURCE: the folder that holds it, where that is what export reads."""
    folder = path.parent
    if is_run_dir(folder) or _is_training_checkpoint(folder) or _is_model_dir(folder):
        return f"a file; export reads the folder that holds it: give {folder}"
    return "a file, not a run directory, checkpoint or model directory (export reads a folder)"


def _run_and_checkpoint(path: Path) -> tuple[Path | None, Path]:
    """The run (if any) and the directory of weights ``path`` names, that checkpoint kept from
    its run's pruning while this export reads it."""
    if is_run_dir(path):
        return path, _newest_whole(path)
    if path.parent.name == CHECKPOINTS and is_run_dir(path.parent.parent):
        keep_named_checkpoint(path, path)
        return path.parent.parent, path
    return None, path


def _newest_whole(run: Path) -> Path:
    """The run's newest checkpoint whose files an export reads are whole (:func:`check_whole`),
    as ``wmtp eval RUN`` and a resume pass over damaged ones (``locate.newest_whole``)."""

    def whole(step: Path) -> Path:
        if _is_training_checkpoint(step):  # a model folder has no manifest to check
            check_whole(step)
        return step

    return newest_whole(run, run, whole, using="exporting")


def _is_training_checkpoint(directory: Path) -> bool:
    if _is_model_dir(directory):
        return False
    names = {p.name for p in directory.iterdir()} if directory.is_dir() else set()
    return bool(names & {FULL_WEIGHTS, LORA_WEIGHTS, DCP_STATE})


def _is_model_dir(directory: Path) -> bool:
    return directory.is_dir() and any((directory / m).is_file() for m in MODEL_MARKERS)


def _recipe_beside(weights: Path, run: Path | None) -> Path | None:
    for candidate in (weights / RECIPE_FILE, run / RECIPE_FILE if run else None):
        if candidate is not None and candidate.is_file():
            return candidate
    return None


def _tokenizer_beside(directory: Path) -> tuple[str, Path] | None:
    """``(kind, file)`` of a tokenizer file in a model directory, SentencePiece first."""
    for kind, name in TOKENIZER_FILES.items():
        if (directory / name).is_file():
            return kind, directory / name
    return None


def check_out_apart(out: Path, source: Source) -> None:
    """An ExportError where ``--out`` lies in the source run's ``checkpoints/``: the trainer's
    folder, whose ``step-N`` folders training deletes past ``keep_last`` (an export in one with
    them) and a resume adds to."""
    if source.run is None:
        return
    checkpoints = (source.run / CHECKPOINTS).resolve()
    target = Path(out).expanduser().absolute().resolve()
    if target == checkpoints or checkpoints in target.parents:
        raise ExportError(
            f"--out {out}: inside the run's {checkpoints}, which holds the trainer's checkpoints "
            "only: training deletes those past keep_last, and whatever is in them; write the "
            "export outside the run's checkpoints (such as exports/NAME)"
        )


def training_now(source: Source) -> str | None:
    """Who trains the source's run now (the line its training lock holds), or None: its
    newest checkpoint is then a snapshot, not the run's end."""
    from wmtp.errors import RunError
    from wmtp.locks import check_free
    from wmtp.train.run_dir import LOCK_FILE

    if source.run is None:
        return None
    try:
        check_free(source.run / LOCK_FILE, RunError)
    except RunError as held:
        return str(held)
    return None


def planned_steps(source: Source) -> int | None:
    """The steps the checkpoint's run was to train (its ``trainer.json``), if it says."""
    try:
        planned = json.loads((source.weights / "trainer.json").read_text()).get("max_steps")
    except (OSError, ValueError, AttributeError):
        return None
    return planned if isinstance(planned, int) else None


# Completeness ------------------------------------------------------------------------------


def verify_checkpoint(source: Source) -> None:
    """Refuse a training checkpoint that is not whole, before anything is built or written: the
    files export reads (its consolidated weights, or its DCP ``state/`` when it has none; its
    recipe and trainer state) against the checkpoint's manifest (``wmtp.train.manifest``). An
    earlier export's adapters (``--no-merge-lora``) have no manifest: an export is written whole
    or not at all."""
    if source.trained and not is_export(source.weights):
        check_whole(source.weights)


def base_only_in_state(source: Source, spec) -> bool:
    """Whether the source's adapters trained over a random initialisation (LoRA, no ``path``):
    its ``lora.safetensors`` holds the adapters alone, and the base they add to is in its DCP
    ``state/`` only (a model built anew would draw another)."""
    return source.trained and spec.lora is not None and not spec.path


def check_base_kept(source: Source, spec) -> None:
    """A CheckpointError, before any model is built, where :func:`base_only_in_state` and the
    checkpoint has no ``state/`` to read that base from."""
    if base_only_in_state(source, spec):
        require_base_state(source.weights)


def is_export(folder: Path) -> bool:
    """Whether ``folder`` is a ``wmtp export`` (its marker lists what it wrote)."""
    from wmtp.export import EXPORT
    from wmtp.output_folder import written_by

    return written_by(folder, EXPORT) is not None


def check_whole(checkpoint: Path) -> None:
    """A CheckpointError naming the first file an export of ``checkpoint`` reads that does not
    match its manifest: the consolidated weights, or the DCP ``state/`` where there are none."""
    from wmtp.train.manifest import listed, verify

    consolidated = [n for n in (FULL_WEIGHTS, LORA_WEIGHTS) if (checkpoint / n).is_file()][:1]
    read = consolidated or [n for n in listed(checkpoint) if n.startswith(f"{DCP_STATE}/")]
    verify(checkpoint, only=[*read, "recipe.toml", "trainer.json"])


# The recipe ------------------------------------------------------------------------------


def source_recipe(source: Source, overrides: list[str] | tuple[str, ...] = ()):
    """The recipe that describes the source: its own (``overrides``, the user's ``--set``,
    applied: a LoRA base moved elsewhere, ``model.<role>.path=NEW``), or one made from a model
    directory's tokenizer (an ``evaluation`` recipe whose policy is the directory)."""
    from wmtp.recipe import load_recipe
    from wmtp.recipe.schema import Recipe

    if source.recipe_file is not None:
        file = source.recipe_file
        loaded = load_recipe(file, [*own_tokenizer_overrides(file), *overrides])
        check_adapters_base(loaded, loaded.recipe.trained_role or "policy", source.weights)
        return loaded.recipe
    kind, file = _tokenizer_beside(source.weights)
    return Recipe.model_validate(
        {
            "experiment": {"name": "export", "pipeline": "evaluation"},
            "tokenizer": {"kind": kind, "path": str(file)},
            "model": {"policy": {"kind": "llama_mtp", "path": str(source.weights)}},
        }
    )


def check_adapters_base(loaded, role: str, weights: Path) -> None:
    """A located ``RecipeProblems`` where ``weights`` holds LoRA adapters alone (a LoRA run's
    checkpoint, a ``--no-merge-lora`` export) and the recipe's ``model.<role>.path`` is not
    their base: no model there, or not the one they trained over (``inputs.lora_base_problem``,
    which ``wmtp run`` and ``wmtp validate`` ask of a recipe's ``checkpoint`` too): said at that
    key, before anything reads data or builds a model."""
    from wmtp.recipe import RecipeProblems
    from wmtp.recipe.inputs import lora_base_problem

    problem = lora_base_problem(loaded, role, weights)
    if problem is not None:
        raise RecipeProblems(str(loaded.path), [problem])


def own_tokenizer_overrides(recipe_file: Path) -> list[str]:
    """The ``--set`` that points an export's ``recipe.toml`` at the tokenizer file the export
    holds, or none. That recipe names its tokenizer by the absolute path the export wrote it to;
    once the folder is moved, copied or downloaded, that path is gone or another folder's. The
    export's own file (the one its marker lists under that name) is read instead; a ``--set``
    of the user's, given after it, still wins."""
    from wmtp.export import EXPORT
    from wmtp.output_folder import written_by
    from wmtp.recipe import load_recipe

    folder = recipe_file.parent
    listed = written_by(folder, EXPORT) if recipe_file.name == RECIPE_FILE else None
    if not listed:
        return []
    path = getattr(load_recipe(recipe_file).recipe.tokenizer, "path", None)  # byte: no file
    own = folder / Path(path).name if path else None
    if own is None or Path(path) == own or own.name not in listed:
        return []
    return [f"tokenizer.path={json.dumps(str(own))}"]


def source_recipe_text(source: Source, recipe) -> str:
    """The recipe as its file says it, or the made one as TOML."""
    if source.recipe_file is not None:
        return source.recipe_file.read_text()
    from wmtp.recipe.dump import dump_recipe

    return dump_recipe(recipe)


__all__ = [
    "Source",
    "base_only_in_state",
    "check_adapters_base",
    "check_base_kept",
    "check_out_apart",
    "is_export",
    "planned_steps",
    "resolve_source",
    "source_recipe",
    "source_recipe_text",
    "training_now",
    "verify_checkpoint",
]
