"""From a recipe to its components: one function per component kind, each through the registry.

Every caller assembles components here, the same way: the trainer (the model that trains, the
frozen ones, the data, the weighting, the pipeline), ``wmtp eval``, ``wmtp bench decode`` and
``wmtp export`` (a model with given weights: :func:`trained_model`; the tokenizer),
``wmtp bench step`` (through the trainer) and ``wmtp validate --data`` (the tokenizer, the
dataset). Each registered builder receives only its own recipe section, plus what that section
cannot know (the tokenizer's vocabulary, the device, whether the model trains). Importing this
module needs no torch; building a model does.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

from wmtp import registry
from wmtp.errors import CheckpointError, RecipeError
from wmtp.pipelines import Role

if TYPE_CHECKING:
    from wmtp.data.dataset import TrainData
    from wmtp.data.tokenizers import Tokenizer

log = logging.getLogger(__name__)


def tokenizer(recipe: Any) -> Tokenizer:
    """The ``[tokenizer]`` every model of the recipe shares."""
    spec = recipe.tokenizer
    return registry.get("tokenizer", spec.kind)(spec)


def dataset(recipe: Any, tokenizer: Tokenizer, *, progress: bool = True) -> TrainData:
    """The ``[data]`` section's training data (its sampler from ``data.sampling``)."""
    spec = recipe.data
    build = registry.get("dataset", spec.kind)
    return build(spec, tokenizer=tokenizer, seed=recipe.experiment.seed, progress=progress)


def weighting(recipe: Any) -> Any:
    """The ``[weighting]`` section's weighting object."""
    spec = recipe.weighting
    return registry.get("weighting", spec.kind)(spec)


def model(
    recipe: Any,
    role: Role,
    *,
    tokenizer: Tokenizer,
    device: Any,
    trainable: bool = False,
    n_future_tokens: int | None = None,
) -> Any:
    """``[model.<role>]`` built by its kind's builder (``wmtp.models.components``, which says in
    what order); a trained ``checkpoint`` must have been trained with this recipe's tokenizer
    (and, for a value model, its head: :func:`check_checkpoint_recipe`)."""
    spec = getattr(recipe.model, role)
    if spec is None:
        raise RecipeError(f"the recipe has no [model.{role}]")
    check_checkpoint_recipe(role, spec, recipe)
    build = registry.get("model", spec.kind)
    built = build(
        spec,
        vocab_size=tokenizer.vocab_size,
        device=device,
        trainable=trainable,
        n_future_tokens=n_future_tokens,
    )
    log.info(
        "model.%s: %s, attention %s (%s)",
        role,
        "trains" if trainable else "frozen",
        built.attention.name,
        built.attention.reason,
    )
    return built


def trained_model(
    recipe: Any,
    role: Role,
    weights: Path,
    *,
    tokenizer: Tokenizer,
    device: Any,
    format: str = "auto",
    own_sizes: bool = True,
    dtype: str | None = None,
    attention: str | None = None,
) -> Any:
    """``[model.<role>]`` holding the weights in the directory ``weights``, as every caller that
    loads weights to use them builds it (``wmtp eval``, ``wmtp bench decode``, ``wmtp export``).

    A wmtp training checkpoint (``model.safetensors`` or ``lora.safetensors``, no model
    description beside) becomes the section's ``checkpoint``, over its pretrained ``path`` and
    LoRA, with the heads it trained. A model directory (wmtp, Meta or Hugging Face, in ``format``)
    becomes its ``path``; ``own_sizes``: with that model's own sizes and heads (the section's
    flavour, heads and LoRA left out). ``dtype`` and ``attention`` replace the section's.
    """
    from wmtp.models.locate import FULL_WEIGHTS, LORA_WEIGHTS, find_trained_weights
    from wmtp.recipe.inputs import MODEL_MARKERS

    spec = getattr(recipe.model, role)
    if spec is None:
        raise RecipeError(f"the recipe has no [model.{role}]")
    names = {p.name for p in Path(weights).iterdir()}
    heads = None
    if names & {FULL_WEIGHTS, LORA_WEIGHTS} and not names & set(MODEL_MARKERS):
        from wmtp.models.descriptions import heads_in

        update: dict[str, Any] = {"checkpoint": str(weights)}
        heads = heads_in(find_trained_weights(weights).file)  # what was trained
    else:
        check_model_dir_tokenizer(weights, recipe)
        update = {"path": str(weights), "format": format, "checkpoint": None}
        if own_sizes:
            fields = ("flavour", "n_future_tokens", "lora")
            update.update({f: None for f in fields if f in type(spec).model_fields})
    update.update({k: v for k, v in (("dtype", dtype), ("attention", attention)) if v})
    models = recipe.model.model_copy(update={role: spec.model_copy(update=update)})
    built = recipe.model_copy(update={"model": models})
    return model(built, role, tokenizer=tokenizer, device=device, n_future_tokens=heads)


def check_checkpoint_recipe(role: str, spec: Any, recipe: Any) -> None:
    """A wmtp ``checkpoint`` carries the recipe that trained it. What changes the weights'
    meaning without changing their shapes must agree with this recipe: the ``[tokenizer]``
    (another gives the same ids other meanings), a value model's ``head`` (a ``linear`` and a
    ``sigmoid`` head hold the same tensors, on other scales) and, for LoRA adapters, their
    ``lora`` settings (alpha and rank scale them) and the base they add to: the path they
    trained over, or that model moved, known by the identity their run recorded
    (:func:`_check_base`). A CheckpointError if not."""
    if not spec.checkpoint:
        return
    from wmtp.models.locate import find_trained_weights

    trained = find_trained_weights(spec.checkpoint)
    theirs = _trained_recipe(role, spec, trained)
    where = f"model.{role}.checkpoint = {spec.checkpoint!r}"
    if not same_tokenizer(theirs.tokenizer, recipe.tokenizer):
        raise CheckpointError(
            f"{where} was trained with tokenizer {theirs.tokenizer.model_dump()} "
            f"({trained.recipe_file}), but this recipe's [tokenizer] is "
            f"{recipe.tokenizer.model_dump()}"
        )
    their_role = _trained_role(theirs, role)
    their_spec = getattr(theirs.model, their_role, None)
    adapters = trained.kind == "lora" and their_spec is not None
    settings = [("head", _head)] if hasattr(spec, "head") else []
    settings += [("format", _plain), ("lora", _adapter_scale)] if adapters else []
    for field, shown in settings:
        ours, before = shown(getattr(spec, field)), shown(getattr(their_spec, field, None))
        if their_spec is not None and ours != before:
            raise CheckpointError(
                f"model.{role}.{field} = {ours!r}, but {where} was trained with {field} = "
                f"{before!r} ({trained.recipe_file}): set model.{role}.{field} to match"
            )
    if adapters:
        _check_base(role, spec, trained, their_role, their_spec.path)


def same_tokenizer(theirs: Any, ours: Any) -> bool:
    """Whether two ``[tokenizer]`` sections give the same ids: the same section, or the same kind
    reading files of the same bytes (the tokenizer's ``identity``: an export's copy of the
    ``tokenizer.model`` it was trained with, a run moved to another folder). A file that cannot
    be read is no match."""
    if theirs == ours:
        return True
    if theirs.kind != ours.kind:
        return False
    from wmtp.data.tokenizers import load_tokenizer
    from wmtp.errors import DataError

    try:
        identities = {load_tokenizer(t.kind, t.path).identity for t in (theirs, ours)}
    except (OSError, DataError):
        return False
    return len(identities) == 1


def _trained_role(theirs: Any, role: str) -> str:
    """The ``[model.*]`` section of the recipe that trained a checkpoint that holds its weights:
    the role its pipeline trains (a rho1 ``reference`` was ref_tuning's ``policy``), else
    ``role``."""
    from wmtp.pipelines import pipeline_info

    return pipeline_info(theirs.experiment.pipeline).trains or role


# The base model of LoRA adapters ---------------------------------------------------------


def check_lora_base(role: str, spec: Any, weights: Path) -> None:
    """``model.<role>.path`` as the base model of the LoRA adapters alone in ``weights`` (a LoRA
    run's checkpoint, a ``--no-merge-lora`` export): a CheckpointError where no model is there
    (saying what to do) or it is not the base they trained over (:func:`_check_base`). Asked
    before anything reads data, by ``wmtp.recipe.inputs.lora_base_problem``; weights or a
    recipe beside them that do not load are said where they load."""
    from wmtp.models.descriptions import checkpoint_format
    from wmtp.models.locate import find_trained_weights, sharded_adapters

    try:
        trained = sharded_adapters(weights) or find_trained_weights(weights)
        theirs = _trained_recipe(role, spec, trained)
    except CheckpointError:
        return
    their_role = _trained_role(theirs, role)
    their_spec = getattr(theirs.model, their_role, None)
    if their_spec is None:
        return
    try:
        checkpoint_format(Path(spec.path).expanduser(), spec.format)
    except CheckpointError as exc:
        raise _no_base(role, spec, trained, their_role, their_spec.path, str(exc)) from None
    _check_base(role, spec, trained, their_role, their_spec.path)


def _no_base(
    role: str, spec: Any, trained: Any, their_role: str, trained_over: str | None, why: str
) -> CheckpointError:
    """No model at ``model.<role>.path``, the base of the adapters in ``trained``: why, and the
    ways to give it back. Pointing the key at a copy elsewhere is one only where their run
    recorded the base's identity (:func:`_check_base`)."""
    from wmtp.export.run_info import recorded_base

    base = Path(spec.path).expanduser()
    why = why.removeprefix(f"checkpoint {base}: ")
    if str(base.resolve()) != spec.path:
        why += f" (resolved to {base.resolve()})"
    said = f"{spec.path!r}: the base model that the LoRA adapters in {trained.directory} apply to"
    if _resolved_path(spec.path) != _resolved_path(trained_over):
        return CheckpointError(f"{said}: {why} (they trained over {trained_over!r})")
    fix = "put it back there, or make that path a link to where it is now"
    if recorded_base(trained.directory, f"model.{their_role}.path") is not None:
        fix += (
            f", or set model.{role}.path to where it is now (--set model.{role}.path=NEW): "
            "the model there is checked against the base they trained over"
        )
    return CheckpointError(f"{said}: {why}: {fix}")


def _check_base(role: str, spec: Any, trained: Any, their_role: str, trained_over: Any) -> None:
    """``model.<role>.path`` must be the base the LoRA adapters in ``trained`` trained over,
    ``trained_over`` as their recipe names it. Where their run recorded the base's identity
    (``wmtp.models.descriptions.base_identity``), that model at any path (found elsewhere: said
    once, :func:`_say_found`), and not another model put at their path since
    (:func:`_check_identity`). Where none was recorded (a run of an older wmtp), their path,
    whatever it holds now. A CheckpointError otherwise."""
    from wmtp.export.run_info import recorded_base

    ours, theirs = _resolved_path(spec.path), _resolved_path(trained_over)
    recorded = recorded_base(trained.directory, f"model.{their_role}.path") if ours else None
    if recorded is not None:
        _check_identity(role, spec, trained, trained_over, recorded)
    elif ours != theirs:
        where = (
            f"model.{role}.checkpoint = {spec.checkpoint!r}"
            if spec.checkpoint
            else f"the LoRA adapters in {trained.directory}"
        )
        raise CheckpointError(
            f"model.{role}.path = {ours!r}, but {where} was trained with path = {theirs!r} "
            f"({trained.recipe_file}): set model.{role}.path to match"
        )


def _check_identity(role: str, spec: Any, trained: Any, trained_over: Any, recorded: dict):
    """The model at ``model.<role>.path`` against the ``recorded`` identity of the base the
    adapters in ``trained`` trained over: a CheckpointError naming what differs."""
    from wmtp.models.descriptions import base_identity, identity_difference

    moved = _resolved_path(spec.path) != _resolved_path(trained_over)
    try:
        found = base_identity(spec.path, spec.format)
    except CheckpointError:
        if not moved:  # gone from their path: said as such (inputs.lora_base_problem)
            return
        raise
    difference = identity_difference(recorded, found)
    if difference is not None:
        raise CheckpointError(
            f"model.{role}.path = {spec.path!r} is not the base model the LoRA adapters in "
            f"{trained.directory} trained over ({trained_over!r}): {difference}"
        )
    if moved:
        _say_found(role, spec.path, trained.directory, trained_over)


_found: set[tuple[str, str]] = set()
"""(adapters, base) pairs :func:`_say_found` has said: once a process, however often checked."""


def _say_found(role: str, path: str, adapters: Path, trained_over: Any) -> None:
    """One line where the base of LoRA adapters is found at another path than they trained
    over: the user sees which model is used, and that it was checked."""
    said = (str(adapters), str(_resolved_path(path)))
    if said in _found:
        return
    _found.add(said)
    log.warning(
        "model.%s.path = %r: the base model the LoRA adapters in %s trained over (at %r then), "
        "found here: its files are the ones their run recorded",
        role,
        path,
        adapters,
        trained_over,
    )


def _head(head: Any) -> Any:
    from wmtp.models.value_heads import head_config

    return None if head is None else head_config(head)


def _resolved_path(path: Any) -> str | None:
    return None if path is None else str(Path(path).expanduser().resolve())


def _plain(value: Any) -> Any:
    return value


def _adapter_scale(lora: Any) -> Any:
    """What scales LoRA adapters (dropout, a training-time setting, aside)."""
    return None if lora is None else lora.model_dump(exclude={"dropout"})


def _trained_recipe(role: str, spec: Any, trained: Any) -> Any:
    """The recipe saved beside a wmtp checkpoint (a CheckpointError where there is none)."""
    if trained.recipe_file is None:
        raise CheckpointError(
            f"model.{role}.checkpoint = {spec.checkpoint!r}: no recipe.toml beside the weights "
            f"({trained.directory}), so its tokenizer cannot be checked (wmtp writes one with "
            "every checkpoint)"
        )
    return _saved_recipe(trained.recipe_file)


def _saved_recipe(file: Path) -> Any:
    """The recipe wmtp saved beside weights (a moved export's read with the tokenizer file it
    holds); a CheckpointError where it does not load."""
    from wmtp.export.source import own_tokenizer_overrides
    from wmtp.recipe import load_recipe

    try:
        return load_recipe(file, own_tokenizer_overrides(file)).recipe
    except RecipeError as exc:
        raise CheckpointError(
            f"{file}: the recipe saved with the weights does not load: {exc}"
        ) from exc


def check_model_dir_tokenizer(directory: Path, recipe: Any) -> None:
    """A model directory holding the recipe wmtp saved with it (a ``wmtp export``) says the
    tokenizer it was trained with: this recipe's must give the same ids (:func:`same_tokenizer`).
    A pretrained directory without one is taken as it is."""
    saved = Path(directory) / "recipe.toml"
    if not saved.is_file():
        return
    theirs = _saved_recipe(saved).tokenizer
    if not same_tokenizer(theirs, recipe.tokenizer):
        raise CheckpointError(
            f"{directory} was trained with tokenizer {theirs.model_dump()} ({saved}), but this "
            f"recipe's [tokenizer] is {recipe.tokenizer.model_dump()}"
        )


__all__ = [
    "check_checkpoint_recipe",
    "check_lora_base",
    "check_model_dir_tokenizer",
    "dataset",
    "model",
    "tokenizer",
    "trained_model",
    "weighting",
]
