"""What ``wmtp eval`` evaluates: a run directory or a checkpoint, its recipe, where results go.

Accepted targets:

- a run directory (``recipe.toml`` + ``checkpoints/step-N/``): its newest complete checkpoint,
  results in ``<run>/eval/step-N/``;
- a checkpoint inside a run (``<run>/checkpoints/step-N``): that checkpoint, results in
  ``<run>/eval/step-N/``;
- any other checkpoint directory (wmtp, Meta or Hugging Face format; a ``wmtp export``) with a
  ``recipe.toml`` beside its weights: results in ``<checkpoint>/eval/``; without one (a
  download), with ``--recipe``: results in ``<runs_dir>/<experiment>/eval/``, never in it;
- a recipe (``recipes/evaluation.toml``): the run or checkpoint its ``model.policy.checkpoint``
  names (else the pretrained ``model.policy.path``), evaluated with this recipe; results where
  that target keeps them, or ``<runs_dir>/<experiment>/eval/`` for a pretrained model.

Each benchmark's results go to ``<that folder>/<benchmark>/`` (``wmtp.eval.results``); which
problems are scored follows from the run that trained the weights (``wmtp.eval.splits``).
The recipe gives the tokenizer, the policy's dtype and attention backend, the device, the seed
and the ``[evaluation]`` settings (``--set`` overrides any of them).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from wmtp.errors import CheckpointError, RunError
from wmtp.eval.benchmarks import Loaded, load_benchmarks
from wmtp.models.locate import (
    CHECKPOINTS,
    FULL_WEIGHTS,
    LORA_WEIGHTS,
    MODEL_INFO,
    RECIPE_FILE,
    STEP_DIR,
    find_trained_weights,
    follow_latest,
    is_run_dir,
)

WEIGHT_FILES = (FULL_WEIGHTS, LORA_WEIGHTS)
PRETRAINED_MARKERS = (MODEL_INFO, "params.json", "config.json")


@dataclass(frozen=True)
class EvalTarget:
    """A resolved ``wmtp eval`` argument."""

    checkpoint: Path
    recipe_file: Path
    out_dir: Path
    pretrained: bool = False
    """A recipe's ``model.policy.path`` (not a trained checkpoint): its format and head count
    come from the recipe."""
    foreign: bool = False
    """A model folder wmtp did not write (a download: no ``recipe.toml`` beside its weights):
    results go where the recipe's runs go, never into it."""


def _is_checkpoint(path: Path) -> bool:
    names = {p.name for p in path.iterdir()} if path.is_dir() else set()
    return bool(names & {*WEIGHT_FILES, *PRETRAINED_MARKERS})


def resolve_target(
    path: str | Path, *, recipe: str | Path | None = None, out: str | Path | None = None
) -> EvalTarget:
    """Find the checkpoint, the recipe and the output folder of ``path`` (see the module doc)."""
    path = follow_latest(path)
    if not path.exists():
        raise RunError(f"{path}: no such run directory or checkpoint")
    path = path.resolve()  # runs/<experiment>/latest -> the run it points at
    if is_run_dir(path):
        run, checkpoint = path, find_trained_weights(path).directory
    elif path.parent.name == CHECKPOINTS and (path.parent.parent / RECIPE_FILE).is_file():
        run, checkpoint = path.parent.parent, path
    elif _is_checkpoint(path):
        run, checkpoint = None, path
    else:
        raise RunError(_not_a_target(path))
    if not _is_checkpoint(checkpoint):
        raise CheckpointError(f"{checkpoint}: holds no weights ({', '.join(WEIGHT_FILES)})")
    recipe_file = Path(recipe) if recipe is not None else _recipe_of(checkpoint, run)
    default_out = run / "eval" / checkpoint.name if run is not None else checkpoint / "eval"
    out_dir = Path(out) if out is not None else default_out
    foreign = run is None and not (checkpoint / RECIPE_FILE).is_file()
    return EvalTarget(checkpoint, recipe_file, out_dir, foreign=foreign)


def _not_a_target(path: Path) -> str:
    """Why ``path`` is nothing ``wmtp eval`` takes; a file of a checkpoint names its folder."""
    takes = (
        "neither a run directory (recipe.toml + checkpoints/) nor a checkpoint (one of "
        f"{', '.join(WEIGHT_FILES + PRETRAINED_MARKERS)})"
    )
    if not path.is_file():
        return f"{path}: {takes}"
    folder = f": give its folder, {path.parent}" if _is_checkpoint(path.parent) else ""
    return f"{path}: a file, {takes}, nor an evaluation recipe (.toml){folder}"


def _recipe_of(checkpoint: Path, run: Path | None) -> Path:
    for candidate in (checkpoint / "recipe.toml", run / "recipe.toml" if run else None):
        if candidate is not None and candidate.is_file():
            return candidate
    raise RunError(
        f"{checkpoint}: no recipe.toml beside the weights; give one with --recipe "
        "(it names the tokenizer, dtype and evaluation settings)"
    )


def _recipe_target(recipe_file: Path, recipe, out: str | Path | None) -> EvalTarget:
    """The target of a recipe: its policy's trained checkpoint, else its pretrained path."""
    policy = recipe.model.policy
    if policy is None or not (policy.checkpoint or policy.path):
        raise RunError(
            f"{recipe_file}: model.policy.checkpoint (a run or checkpoint) or model.policy.path "
            "(a pretrained model) must name the model to evaluate"
        )
    if policy.checkpoint:
        return resolve_target(policy.checkpoint, recipe=recipe_file, out=out)
    return EvalTarget(
        Path(policy.path), recipe_file, Path(out) if out else _runs_eval(recipe), pretrained=True
    )


def _runs_eval(recipe: Any) -> Path:
    """Where the results of a model wmtp did not train go: ``<runs_dir>/<experiment>/eval``."""
    return Path(recipe.experiment.runs_dir) / recipe.experiment.name / "eval"


def load_target_recipe(target: EvalTarget, overrides: list[str] | tuple[str, ...] = ()):
    """The recipe of a resolved target (a ``LoadedRecipe``: where each value was set),
    ``overrides`` applied, read to evaluate (a training recipe's rules of training, such as
    ``data.max_length`` within ``max_seq_len``, unchecked); an export's read with the tokenizer
    file it holds, wherever the folder now is (``own_tokenizer_overrides``). LoRA adapters'
    base is checked at the path in force (a moved one given with ``--set``)."""
    from wmtp.export.source import check_adapters_base

    loaded = _read_target_recipe(target, overrides)
    check_adapters_base(loaded, "policy", target.checkpoint)  # before any data is read
    return loaded


def _read_target_recipe(target: EvalTarget, overrides: list[str] | tuple[str, ...] = ()):
    """:func:`load_target_recipe`, its inputs unchecked: the recipe as the target trained with
    it, whose sizes a ``--set`` must keep (:func:`_keep_trained_sizes`), where its base may
    have moved since."""
    from wmtp.export.source import own_tokenizer_overrides
    from wmtp.recipe import load_recipe

    own = own_tokenizer_overrides(target.recipe_file)
    return load_recipe(target.recipe_file, [*own, *overrides], evaluating=True)


def load_policy(target: EvalTarget, recipe, device: str, *, fold_adapters: bool = True):
    """The policy model of ``recipe`` with the weights of ``target.checkpoint``, in eval mode,
    and the tokenizer: both through ``wmtp.assembly``, as training builds them.

    A trained checkpoint (``model.safetensors`` / ``lora.safetensors``) becomes the section's
    ``checkpoint`` (over its pretrained ``path`` and LoRA), evaluated with the heads it trained;
    a pretrained model directory (wmtp, Meta or Hugging Face) becomes its ``path``. LoRA
    adapters are folded into their base weights (unless ``fold_adapters`` is false: the tests'
    unmerged reference): decoding then runs one matmul per projection, as for a plain model
    (and its fused projections apply), instead of three.
    """
    from wmtp import assembly
    from wmtp.models.lora import fold_lora

    spec = recipe.model.policy
    if spec is None:
        raise RunError(
            f"{target.recipe_file}: [model.policy] is missing: there is no policy to evaluate"
        )
    tokenizer = assembly.tokenizer(recipe)
    model = assembly.trained_model(
        recipe,
        "policy",
        target.checkpoint,
        tokenizer=tokenizer,
        device=device,
        format=spec.format if target.pretrained else "auto",
        own_sizes=not target.pretrained,  # a model directory: its own sizes and heads
    )
    if fold_adapters:
        fold_lora(model)
    return model.eval(), tokenizer


@dataclass(frozen=True)
class PreparedEval:
    """What an evaluation needs before torch or a model loads, every part checked."""

    target: EvalTarget
    recipe: Any
    """The recipe in force (``overrides`` applied)."""
    benchmarks: list[Loaded]
    """``recipe.evaluation.benchmarks``, every one read."""


def prepare_eval(
    path: str | Path,
    *,
    overrides: list[str] | tuple[str, ...] = (),
    recipe: str | Path | None = None,
    out: str | Path | None = None,
) -> PreparedEval:
    """Resolve ``path`` and load its recipe (``overrides`` applied), read every benchmark and
    check the results' folder: every mistake found before torch or a model loads."""
    from wmtp.eval.evaluator import check_not_evaluating
    from wmtp.folders import check_output_folder
    from wmtp.recipe import RecipeProblems, load_recipe
    from wmtp.recipe.inputs import input_problems

    if Path(path).suffix == ".toml" and Path(path).is_file():
        if recipe is not None:
            raise RunError(f"{path} is a recipe already: leave out --recipe {recipe}")
        read = load_recipe(path, overrides)
        if read.recipe.pipeline.trains is None:  # an evaluation recipe: its inputs, as run says
            missing = input_problems(read)
            if missing:
                raise RecipeProblems(f"{path} (paths it names that cannot be used)", missing)
        target = _recipe_target(Path(path), read.recipe, out)
    else:
        target = resolve_target(path, recipe=recipe, out=out)
        refuse_a_critic(path, target, "wmtp eval scores a policy's generations")
        read = load_target_recipe(target, overrides)
        if overrides and not target.pretrained:
            _keep_trained_sizes(read, _read_target_recipe(target).recipe, target.checkpoint)
        if target.foreign and out is None:
            target = dataclasses.replace(target, out_dir=_runs_eval(read.recipe))
    benchmarks = load_benchmarks(read)
    what = "--out" if out is not None else "the results' folder"
    check_output_folder(target.out_dir, what)
    for entry in benchmarks:  # each benchmark's results go into a folder of its name
        place = target.out_dir / entry.benchmark.name
        if place.exists() and not place.is_dir():
            raise RunError(
                f"{what} {target.out_dir}: {place.name} there is a file, where the results of "
                f"benchmark {entry.benchmark.name!r} go (a folder): move it, or give another --out"
            )
    check_not_evaluating(target.out_dir)
    return PreparedEval(target, read.recipe, benchmarks)


def refuse_a_critic(path: str | Path, target: EvalTarget, needs: str) -> None:
    """Weights a critic run trained (a value model: no tokens to generate), said as such
    before they load, whatever recipe is given with ``--recipe``; ``needs``: why the command
    needs a policy."""
    from wmtp.recipe.inputs import wrong_role

    candidates = [target.checkpoint / RECIPE_FILE]
    if target.checkpoint.parent.name == CHECKPOINTS:  # a checkpoint of a run: the run's recipe
        candidates.append(target.checkpoint.parent.parent / RECIPE_FILE)
    trained_by = next((c for c in candidates if c.is_file()), None)
    wrong = wrong_role(trained_by, "policy")
    if wrong is not None:
        raise RunError(f"{path}: {wrong}; {needs}")


SIZE_KEYS = ("flavour", "dim", "n_layers", "n_heads", "n_kv_heads", "vocab_size", "multiple_of",
             "ffn_dim_multiplier", "ffn_dim", "lora")  # fmt: skip
"""``[model.policy]`` keys that give the weights' shapes."""


def _keep_trained_sizes(read: Any, trained: Any, checkpoint: Path) -> None:
    """A located ``RecipeProblems`` for each ``--set`` that changes the shapes of a trained
    checkpoint's model (its weights fit only the sizes it trained with), before it loads."""
    from wmtp.recipe import RecipeProblems
    from wmtp.recipe.inputs import located_problem

    ours, theirs = read.recipe.model.policy, trained.model.policy
    if ours is None or theirs is None:
        return
    problems = [
        located_problem(
            read,
            f"model.policy.{key}",
            f"{checkpoint} was trained with {_trained_value(theirs, key)}: its weights fit only "
            "the sizes they trained with (leave this out)",
        )
        for key in SIZE_KEYS
        if getattr(ours, key) != getattr(theirs, key)
    ]
    if problems:
        raise RecipeProblems(str(read.path), problems)


def _trained_value(spec: Any, key: str) -> str:
    """``key = value`` as the trained section has it, or as its flavour gives it."""
    from wmtp.models.args import flavour

    value = getattr(spec, key)
    if value is None and spec.flavour and key != "lora":
        return f"{key} = {getattr(flavour(spec.flavour), key, None)!r} (flavour {spec.flavour!r})"
    return f"{key} = {value!r}"


def evaluate_target(
    path: str | Path,
    *,
    overrides: list[str] | tuple[str, ...] = (),
    recipe: str | Path | None = None,
    out: str | Path | None = None,
    progress: bool = True,
    console=None,
    dry_run: bool = False,
) -> tuple[EvalTarget, dict]:
    """``wmtp eval``: resolve ``path``, load its recipe (``overrides`` applied) and policy, evaluate
    (``dry_run``: stop once the policy is built; nothing decoded, run or written).

    Under torchrun every rank loads the policy on its own device and evaluates its share of the
    problems (``wmtp.eval.ranks``); rank 0 shows progress and writes. Returns the target and, on
    rank 0, the per-benchmark results written to ``target.out_dir``.
    """
    from wmtp.eval.evaluator import evaluate
    from wmtp.eval.ranks import EvalRanks
    from wmtp.eval.splits import training_of_checkpoint
    from wmtp.parallel import init_distributed, teardown
    from wmtp.train.run_log import exit_without_peers

    prepared = prepare_eval(path, overrides=overrides, recipe=recipe, out=out)
    target, loaded = prepared.target, prepared.recipe
    ctx = init_distributed(loaded.parallel.device)
    try:
        ranks = EvalRanks.joined(ctx)
        progress = progress and ranks.is_main
        training = training_of_checkpoint(
            target.checkpoint, pretrained=target.pretrained, progress=progress
        )
        model, tokenizer = load_policy(target, loaded, ctx.device)
        if dry_run:
            teardown()
            return target, {}
        results = evaluate(
            model,
            tokenizer,
            loaded.evaluation,
            target.out_dir,
            seed=loaded.experiment.seed,
            model_label=str(target.checkpoint),
            training=training,
            benchmarks=prepared.benchmarks,
            step=checkpoint_step(target.checkpoint),
            progress=progress,
            console=console if ranks.is_main else None,
            ranks=ranks,
        )
    except BaseException as exc:
        if ctx.is_distributed:  # one record for the launcher, no wait for blocked peers
            exit_without_peers(exc, ctx.rank)
        raise
    teardown()
    return target, results


def checkpoint_step(checkpoint: Path) -> int | None:
    """N of a run's ``checkpoints/step-N``; for a ``wmtp export``, the step it was exported from;
    None for any other model directory."""
    match = STEP_DIR.match(checkpoint.name)
    if match and checkpoint.parent.name == CHECKPOINTS:
        return int(match.group(1))
    from wmtp.export import exported_step

    return exported_step(checkpoint)


__all__ = [
    "EvalTarget",
    "PreparedEval",
    "evaluate_target",
    "load_policy",
    "prepare_eval",
    "resolve_target",
]
