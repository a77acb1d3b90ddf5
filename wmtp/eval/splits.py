"""Which problems trained the model an evaluation scores, and which benchmark problems it scores.

A problem is *seen* when it is in the training split of the run that trained the checkpoint, or
of a run whose weights that run used (its critic, its reference, the checkpoint it continued
from), followed back through their recipes. The training split is read by assembling the run's
``[data]`` section as training did (``wmtp.assembly.dataset``): the built-in HumanEval's fixed
split, a JSONL dataset's problems after ``data.split``. Problems that the length rule or
``data.n_samples`` kept out of training still count as seen: they are in the training split, so
every run of one split is scored on the same unseen problems.

A benchmark problem is matched to the training data by id: its task id (``HumanEval/12``,
``mbpp/11``, a CodeContests name) is a ``problem_id`` of the data. The built-in dataset uses the
HumanEval task ids as its problem ids; a JSONL dataset must do the same for its benchmark
problems to count as seen.

By default an evaluation scores the unseen problems only; ``evaluation.max_problems`` draws that
many of them with the fixed :data:`SAMPLE_SEED` (every model is scored on the same draw), kept
in benchmark order. ``evaluation.include_seen`` scores the seen ones too, as their own group.

Torch-free.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from wmtp.errors import RunError, WmtpError
from wmtp.eval.benchmarks import Benchmark, Problem
from wmtp.models.locate import CHECKPOINTS, RECIPE_FILE, find_trained_weights

SAMPLE_SEED = 0
"""Seed of the ``max_problems`` draw: fixed, so that every model is scored on the same problems."""

GROUPS = ("unseen", "seen")
"""The groups of problems an evaluation reports, in this order."""


@dataclass(frozen=True)
class TrainingProblems:
    """The problems the evaluated model learned from, and how that was found out."""

    seen: frozenset[str]
    """Problem ids of every training split behind the model."""
    split: str
    """The evaluated run's split in a few words (``built-in HumanEval split (held-out ...)``)."""
    sources: tuple[str, ...]
    """A line per run read (and per model whose training could not be read)."""
    template: str | None = None
    """The evaluated run's ``data.template``: how its training rows laid out a prompt (None:
    no wmtp training behind the weights)."""

    def as_dict(self) -> dict[str, Any]:
        return {
            "split": self.split,
            "seen_problems": len(self.seen),
            "sources": list(self.sources),
            "template": self.template,
        }


def untrained(path: str | Path, why: str) -> TrainingProblems:
    """A model with no wmtp training run behind it: nothing counts as seen."""
    return TrainingProblems(
        frozenset(),
        f"none ({why})",
        (
            f"{path}: {why}: no training data recorded, every problem counts as unseen "
            "(its pretraining data is unknown to wmtp)",
        ),
    )


def training_recipe_of(checkpoint: Path) -> Path | None:
    """The resolved recipe of the run that wrote ``checkpoint`` (beside it, or its run's)."""
    beside = checkpoint / RECIPE_FILE
    if beside.is_file():
        return beside
    run_recipe = checkpoint.parent.parent / RECIPE_FILE
    if checkpoint.parent.name == CHECKPOINTS and run_recipe.is_file():
        return run_recipe
    return None


def training_of_checkpoint(
    checkpoint: Path, *, pretrained: bool = False, progress: bool = False
) -> TrainingProblems:
    """What trained the weights in ``checkpoint``: its run's recipe (and the runs behind it); none
    for a pretrained model or weights without a recipe."""
    if pretrained:
        return untrained(checkpoint, "a pretrained model")
    recipe_file = training_recipe_of(checkpoint)
    if recipe_file is None:
        return untrained(checkpoint, "no recipe.toml with these weights")
    return training_problems(recipe_file, progress=progress)


def training_problems(recipe_file: Path, *, progress: bool = False) -> TrainingProblems:
    """The problems the weights of ``recipe_file``'s run learned from, following the runs whose
    weights that run used; a ``RunError`` when its own training data cannot be read."""
    seen: set[str] = set()
    sources: list[str] = []
    splits: list[str] = []
    template: str | None = None
    pending, visited = [recipe_file], set()
    while pending:
        path = pending.pop(0)
        if run_of(path) in visited:
            continue
        visited.add(run_of(path))
        recipe = _load(path)
        problems, split = _problems_of_run(path, recipe, progress, evaluated=path is recipe_file)
        if problems is not None:
            seen |= problems
            splits.append(split)
            if path is recipe_file:
                template = recipe.data.template
            pipeline = recipe.experiment.pipeline
            sources.append(f"{run_of(path)}: {pipeline} run, {len(problems)} problems of {split}")
        elif split:
            sources.append(split)
        used, notes = _runs_used(recipe, run_of(path))
        pending += used
        sources += notes
    if not splits:
        return untrained(recipe_file.parent, f"{recipe_file.name} trains nothing")
    return TrainingProblems(frozenset(seen), splits[0], tuple(sources), template)


def _problems_of_run(path: Path, recipe, progress: bool, *, evaluated: bool):
    """``(problems, split name)`` of one run; ``(None, note)`` for a run behind the evaluated
    one whose data cannot be read (the evaluated run's own must be: no guessing)."""
    try:
        return _training_split(path, recipe, progress)
    except RunError as exc:
        if evaluated:
            raise
        return None, f"{exc}; its problems are not counted"


def run_of(recipe_file: Path) -> Path:
    """The run directory a resolved recipe belongs to (also for a checkpoint's own copy)."""
    folder = recipe_file.resolve().parent  # runs/<experiment>/latest -> the run it names
    return folder.parent.parent if folder.parent.name == CHECKPOINTS else folder


def _load(path: Path):
    from wmtp.recipe import load_recipe

    return load_recipe(path).recipe


def _training_split(path: Path, recipe, progress: bool) -> tuple[set[str] | None, str]:
    """The training split's problems and its name (``None`` for a recipe that trains nothing);
    a ``RunError`` when the data cannot be read."""
    from wmtp import assembly
    from wmtp.pipelines import pipeline_info

    if pipeline_info(recipe.experiment.pipeline).trains is None:
        return None, ""
    try:
        data = assembly.dataset(recipe, assembly.tokenizer(recipe), progress=progress)
    except WmtpError as exc:
        raise RunError(
            f"{path}: cannot tell which problems trained this model ({exc}); run wmtp eval from "
            "the directory the run was trained in (the recipe's paths are relative to it)"
        ) from None
    return set(data.train_problems), split_name(recipe)


def split_name(recipe) -> str:
    """How ``recipe``'s data is split, in a few words."""
    spec = recipe.data
    split = getattr(spec, "split", None)
    if spec.kind == "humaneval":
        return f"the built-in HumanEval split (held-out fraction {split.heldout_fraction:g})"
    if split is not None and split.heldout_path is not None:
        return f"{spec.path} (held out: the file {split.heldout_path})"
    if split is not None:
        seed = recipe.experiment.seed
        return f"{spec.path} (held-out fraction {split.heldout_fraction:g}, seed {seed})"
    return f"data.kind = {spec.kind!r}"


def _runs_used(recipe, run: Path) -> tuple[list[Path], list[str]]:
    """Recipes of the runs whose weights ``recipe``'s models load (``model.<role>.checkpoint``,
    as the run recorded it resolved in ``inputs.json``: a ``latest`` link may name another run
    by now), and a note for each that cannot be found or read."""
    from wmtp.pipelines import pipeline_info
    from wmtp.train.run_dir import read_inputs

    resolved = read_inputs(run)
    found, notes = [], []
    for role in pipeline_info(recipe.experiment.pipeline).uses:
        spec = getattr(recipe.model, role, None)
        if spec is None or not spec.checkpoint:
            continue
        checkpoint = resolved.get(f"model.{role}.checkpoint", spec.checkpoint)
        where = f"model.{role}.checkpoint = {checkpoint}"
        try:
            recipe_file = find_trained_weights(checkpoint).recipe_file
        except WmtpError as exc:
            notes.append(f"{where}: {exc}; its training problems are unknown (not counted)")
            continue
        if recipe_file is None:
            notes.append(f"{where}: no recipe.toml beside it; its training problems are unknown")
        else:
            found.append(recipe_file)
    return found, notes


@dataclass(frozen=True)
class ScoredProblems:
    """A benchmark's problems as one evaluation scores them."""

    benchmark: Benchmark
    groups: dict[str, tuple[Problem, ...]]
    """``unseen`` (and ``seen`` when asked) -> the problems scored, in benchmark order."""
    available: dict[str, int]
    """``unseen`` / ``seen`` -> how many the benchmark has, before ``max_problems``."""
    max_problems: int | None

    @property
    def problems(self) -> tuple[Problem, ...]:
        """Every problem scored, unseen first."""
        return tuple(p for group in self.groups.values() for p in group)

    def as_dict(self) -> dict[str, Any]:
        return {
            "unseen": self.available["unseen"],
            "seen": self.available["seen"],
            "scored": {name: len(group) for name, group in self.groups.items()},
            "max_problems": self.max_problems,
            "sample_seed": SAMPLE_SEED,
        }


def choose_problems(
    benchmark: Benchmark,
    training: TrainingProblems,
    *,
    include_seen: bool,
    max_problems: int | None,
) -> ScoredProblems:
    """The unseen problems (``max_problems`` of them, drawn with :data:`SAMPLE_SEED`), and the
    seen ones when ``include_seen``; a ``RunError`` when there is nothing to score."""
    by_group = {
        "unseen": [p for p in benchmark.problems if p.task_id not in training.seen],
        "seen": [p for p in benchmark.problems if p.task_id in training.seen],
    }
    if not by_group["unseen"] and not include_seen:
        raise RunError(
            f"all {len(benchmark.problems)} {benchmark.name} problems trained this model "
            f"({training.split}): none is left unseen to score; --include-seen (or "
            "evaluation.include_seen = true) scores them, reported as seen"
        )
    chosen = {"unseen": draw(by_group["unseen"], max_problems)}
    if include_seen and by_group["seen"]:
        chosen["seen"] = draw(by_group["seen"], max_problems)
    chosen = {name: group for name, group in chosen.items() if group}
    available = {name: len(group) for name, group in by_group.items()}
    return ScoredProblems(benchmark, chosen, available, max_problems)


def draw(problems: list[Problem], limit: int | None) -> tuple[Problem, ...]:
    """``limit`` of ``problems`` drawn with :data:`SAMPLE_SEED`, in their order (all when
    ``limit`` is None or not below their number)."""
    if limit is None or limit >= len(problems):
        return tuple(problems)
    keep = sorted(random.Random(SAMPLE_SEED).sample(range(len(problems)), limit))
    return tuple(problems[i] for i in keep)


__all__ = [
    "GROUPS",
    "SAMPLE_SEED",
    "ScoredProblems",
    "TrainingProblems",
    "choose_problems",
    "draw",
    "split_name",
    "training_of_checkpoint",
    "training_problems",
    "training_recipe_of",
    "untrained",
]
