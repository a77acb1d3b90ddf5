"""What ``wmtp eval`` evaluates: a run directory or a checkpoint, its recipe, where results go.

Accepted targets:

- a run directory (``recipe.toml`` + ``checkpoints/step-N/``): its newest complete checkpoint,
  results in ``<run>/eval/``;
- a checkpoint inside a run (``<run>/checkpoints/step-N``): that checkpoint, results in
  ``<run>/eval/``;
- any other checkpoint directory (wmtp, Meta or Hugging Face format) with a ``recipe.toml``
  beside its weights, or with ``--recipe``: results in ``<checkpoint>/eval/``;
- a recipe (``recipes/evaluation.toml``): the run or checkpoint its ``model.policy.checkpoint``
  names (else the pretrained ``model.policy.path``), evaluated with this recipe; results where
  that target keeps them, or ``<runs_dir>/<experiment>/eval/`` for a pretrained model.

The recipe gives the tokenizer, the policy's dtype and attention backend, the device, the seed
and the ``[evaluation]`` settings (``--set`` overrides any of them).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from wmtp.errors import CheckpointError, RunError

STEP_DIR = re.compile(r"^step-(\d+)$")
WEIGHT_FILES = ("model.safetensors", "lora.safetensors")
PRETRAINED_MARKERS = ("wmtp_model.json", "params.json", "config.json")


@dataclass(frozen=True)
class EvalTarget:
    """A resolved ``wmtp eval`` argument."""

    checkpoint: Path
    recipe_file: Path
    out_dir: Path
    pretrained: bool = False
    """A recipe's ``model.policy.path`` (not a trained checkpoint): its format and head count
    come from the recipe."""


def _is_checkpoint(path: Path) -> bool:
    names = {p.name for p in path.iterdir()} if path.is_dir() else set()
    return bool(names & {*WEIGHT_FILES, *PRETRAINED_MARKERS})


def newest_checkpoint(run_dir: Path) -> Path:
    """The highest ``checkpoints/step-N`` holding weights (temporary ``.tmp-*`` ones are skipped)."""
    steps = sorted(
        (int(m.group(1)), p)
        for p in (run_dir / "checkpoints").glob("step-*")
        if (m := STEP_DIR.match(p.name)) and _is_checkpoint(p)
    )
    if not steps:
        raise CheckpointError(f"{run_dir}: no checkpoints/step-N with weights to evaluate")
    return steps[-1][1]


def resolve_target(
    path: str | Path, *, recipe: str | Path | None = None, out: str | Path | None = None
) -> EvalTarget:
    """Find the checkpoint, the recipe and the output folder of ``path`` (see the module doc)."""
    path = Path(path)
    if not path.exists():
        raise RunError(f"{path}: no such run directory or checkpoint")
    path = path.resolve()  # runs/<experiment>/latest -> the run it points at
    if (path / "checkpoints").is_dir() and (path / "recipe.toml").is_file():
        run, checkpoint = path, newest_checkpoint(path)
    elif path.parent.name == "checkpoints" and (path.parent.parent / "recipe.toml").is_file():
        run, checkpoint = path.parent.parent, path
    elif _is_checkpoint(path):
        run, checkpoint = None, path
    else:
        raise RunError(
            f"{path}: neither a run directory (recipe.toml + checkpoints/) nor a checkpoint "
            f"(one of {', '.join(WEIGHT_FILES + PRETRAINED_MARKERS)})"
        )
    if not _is_checkpoint(checkpoint):
        raise CheckpointError(f"{checkpoint}: holds no weights ({', '.join(WEIGHT_FILES)})")
    recipe_file = Path(recipe) if recipe is not None else _recipe_of(checkpoint, run)
    out_dir = Path(out) if out is not None else (run if run is not None else checkpoint) / "eval"
    return EvalTarget(checkpoint=checkpoint, recipe_file=recipe_file, out_dir=out_dir)


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
    default_out = Path(recipe.experiment.runs_dir) / recipe.experiment.name / "eval"
    return EvalTarget(
        Path(policy.path), recipe_file, Path(out) if out else default_out, pretrained=True
    )


def pick_device(setting: str) -> str:
    """``parallel.device``: ``auto`` is cuda when a GPU is visible, else cpu."""
    import torch

    if setting == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if setting == "cuda" and not torch.cuda.is_available():
        raise RunError("parallel.device = 'cuda' but no GPU is visible (set it to 'cpu' or 'auto')")
    return setting


def load_policy(target: EvalTarget, recipe, device: str):
    """The policy model of ``recipe`` with the weights of ``target.checkpoint``, in eval mode.

    Pretrained formats (wmtp, Meta, Hugging Face) load with ``from_pretrained``; a training
    checkpoint's bare ``model.safetensors`` / ``lora.safetensors`` loads into the model the
    recipe's ``[model.policy]`` builds (its sizes, its pretrained path, its LoRA).
    """
    from wmtp.data.tokenizers import load_tokenizer
    from wmtp.models.checkpoint import from_pretrained
    from wmtp.registry import get

    spec = recipe.model.policy
    if spec is None:
        raise RunError(
            f"{target.recipe_file}: [model.policy] is missing: there is no policy to evaluate"
        )
    tok = recipe.tokenizer
    tokenizer = load_tokenizer(tok.kind, getattr(tok, "path", None))
    names = {p.name for p in target.checkpoint.iterdir()}
    if names & set(PRETRAINED_MARKERS):
        model = from_pretrained(
            target.checkpoint,
            dtype=spec.dtype,
            attention=spec.attention,
            device=device,
            format=spec.format if target.pretrained else "auto",
            n_future_tokens=spec.n_future_tokens if target.pretrained else None,
        )
    else:
        update = {"checkpoint": None}
        if "model.safetensors" in names:  # the heads it was trained with (ntp trains one)
            update["n_future_tokens"] = heads_in(target.checkpoint / "model.safetensors")
        model = get("model", spec.kind)(
            spec.model_copy(update=update), vocab_size=tokenizer.vocab_size, device=device
        )
        _load_training_weights(model, target.checkpoint)
    if model.args.vocab_size < tokenizer.vocab_size:
        raise CheckpointError(
            f"{target.checkpoint}: the model has {model.args.vocab_size} token embeddings, "
            f"the tokenizer ({tok.kind}) {tokenizer.vocab_size} ids"
        )
    return model.eval(), tokenizer


def heads_in(weights: Path) -> int:
    """Number of prediction heads of a wmtp state dict: 1 + its ``extra_heads`` layers."""
    from safetensors import safe_open

    with safe_open(str(weights), framework="pt") as f:
        keys = list(f.keys())
    extra = {int(m.group(1)) for k in keys if (m := re.match(r"extra_heads\.(\d+)\.", k))}
    return 1 + (max(extra) + 1 if extra else 0)


def _load_training_weights(model, checkpoint: Path) -> None:
    from safetensors.torch import load_file

    from wmtp.models.checkpoint import load_checked

    param = next(model.parameters())
    if (checkpoint / "model.safetensors").is_file():
        sd = load_file(str(checkpoint / "model.safetensors"))
        sd = {k: v.to(device=param.device, dtype=param.dtype) for k, v in sd.items()}
        load_checked(model, sd, str(checkpoint / "model.safetensors"))
        return
    sd = load_file(str(checkpoint / "lora.safetensors"))
    own = model.state_dict()
    for key, value in sd.items():
        if key not in own or own[key].shape != value.shape:
            have = tuple(own[key].shape) if key in own else "no such key"
            raise CheckpointError(
                f"{checkpoint / 'lora.safetensors'}: {key} {tuple(value.shape)} does not fit the "
                f"recipe's model ({have})"
            )
    model.load_state_dict(
        {k: v.to(device=param.device, dtype=param.dtype) for k, v in sd.items()}, strict=False
    )


def evaluate_target(
    path: str | Path,
    *,
    overrides: list[str] | tuple[str, ...] = (),
    recipe: str | Path | None = None,
    out: str | Path | None = None,
    progress: bool = True,
    console=None,
) -> tuple[EvalTarget, dict]:
    """``wmtp eval``: resolve ``path``, load its recipe (``overrides`` applied) and policy, evaluate.

    Returns the target and the per-benchmark results written to ``target.out_dir``.
    """
    from wmtp.eval.evaluator import check_settings, evaluate
    from wmtp.recipe import load_recipe

    if Path(path).suffix == ".toml" and Path(path).is_file():
        if recipe is not None:
            raise RunError(f"{path} is a recipe already: leave out --recipe {recipe}")
        loaded = load_recipe(path, overrides).recipe
        target = _recipe_target(Path(path), loaded, out)
    else:
        target = resolve_target(path, recipe=recipe, out=out)
        loaded = load_recipe(target.recipe_file, overrides).recipe
    check_settings(loaded.evaluation)  # before minutes of model loading
    model, tokenizer = load_policy(target, loaded, pick_device(loaded.parallel.device))
    results = evaluate(
        model,
        tokenizer,
        loaded.evaluation,
        target.out_dir,
        seed=loaded.experiment.seed,
        model_label=str(target.checkpoint),
        progress=progress,
        console=console,
    )
    return target, results


__all__ = [
    "EvalTarget",
    "evaluate_target",
    "load_policy",
    "newest_checkpoint",
    "pick_device",
    "resolve_target",
]
