"""Frozen helper models of the weighted pipelines: the critic (verifiable) and the reference (rho1).

A frozen model is built by the model registry from its own ``[model.critic]`` /
``[model.reference]`` section (its own dtype and attention backend, ``path`` then the wmtp
``checkpoint``), checked against the run before any step:

- its tokenizer: a checkpoint trained by wmtp carries its resolved recipe; its ``[tokenizer]``
  must equal this recipe's (a different tokenizer gives the same ids other meanings);
- its vocabulary: embedding rows must equal the policy's (and hold every id of the tokenizer);

then put in eval mode with ``requires_grad = False`` and, in a process group, sharded like the
policy (FSDP2 per block, parameters kept in the model's own dtype: nothing is trained).
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch

from wmtp import registry
from wmtp.errors import CheckpointError, RecipeError

log = logging.getLogger(__name__)

RECIPE_FILE = "recipe.toml"
WEIGHT_FILES = ("model.safetensors", "lora.safetensors")


def saved_recipe_file(checkpoint: str | Path) -> Path | None:
    """The resolved recipe saved with a wmtp checkpoint (in the step or the run directory)."""
    from wmtp.models.components import resolve_wmtp_checkpoint

    directory = trainer_checkpoint(checkpoint) or resolve_wmtp_checkpoint(checkpoint)
    for candidate in (directory / RECIPE_FILE, directory.parent.parent / RECIPE_FILE):
        if candidate.is_file():
            return candidate
    return None


def check_tokenizer(role: str, spec, tokenizer_spec) -> None:
    """A wmtp checkpoint's saved ``[tokenizer]`` must be this recipe's; a CheckpointError if not."""
    if not spec.checkpoint:
        return
    saved = saved_recipe_file(spec.checkpoint)
    if saved is None:
        raise CheckpointError(
            f"model.{role}.checkpoint = {spec.checkpoint!r}: no {RECIPE_FILE} beside the weights, "
            "so its tokenizer cannot be checked (wmtp writes one with every checkpoint)"
        )
    from wmtp.recipe import load_recipe

    try:
        theirs = load_recipe(saved).recipe.tokenizer
    except RecipeError as exc:
        raise CheckpointError(f"{saved}: the checkpoint's recipe does not load: {exc}") from exc
    if theirs != tokenizer_spec:
        raise CheckpointError(
            f"model.{role}.checkpoint = {spec.checkpoint!r} was trained with tokenizer "
            f"{theirs.model_dump()} ({saved}), but this recipe's [tokenizer] is "
            f"{tokenizer_spec.model_dump()}"
        )


def check_vocabulary(role: str, model_vocab: int, policy_vocab: int, tokenizer_vocab: int) -> None:
    """Embedding rows must equal the policy's and cover the tokenizer's ids."""
    if model_vocab != policy_vocab:
        raise CheckpointError(
            f"model.{role} has a vocabulary of {model_vocab} tokens but model.policy has "
            f"{policy_vocab}: they must share one tokenizer"
        )
    if model_vocab < tokenizer_vocab:
        raise CheckpointError(
            f"model.{role} has {model_vocab} embedding rows, fewer than the tokenizer's "
            f"{tokenizer_vocab} ids"
        )


def freeze(model: torch.nn.Module) -> torch.nn.Module:
    """Eval mode, no gradients."""
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model


def shard_like_policy(model: torch.nn.Module, ctx, parallel_spec, dtype: str) -> torch.nn.Module:
    """FSDP2 per block and root in a process group (the policy's sharding), storage dtype kept."""
    if not ctx.is_distributed:
        return model
    from wmtp.parallel import apply_fsdp
    from wmtp.parallel.fsdp import to_dtype

    return apply_fsdp(
        model,
        list(model.blocks()),
        ctx,
        sharding=parallel_spec.sharding,
        param_dtype=to_dtype(dtype),
        reduce_dtype=to_dtype(dtype),
    )


def trainer_checkpoint(path: str | Path) -> Path | None:
    """The newest ``checkpoints/step-N`` of a run directory (or ``<experiment>/latest``), or
    ``path`` itself when it is a trainer checkpoint; None when it is neither."""
    from wmtp.train.checkpoint import latest_checkpoint

    path = Path(path)
    for weights in WEIGHT_FILES:
        if (path / weights).is_file() and (path / "trainer.json").is_file():
            return path
    if (path / RECIPE_FILE).is_file():
        return latest_checkpoint(path)
    return None


def _load_trainer_weights(model: torch.nn.Module, ckpt: Path) -> None:
    """Full weights (``model.safetensors``) or LoRA adapters (``lora.safetensors``) of a trainer
    checkpoint into ``model``; every key and shape is checked before anything is copied."""
    from safetensors.torch import load_file

    from wmtp.models.checkpoint import load_checked

    param = next(model.parameters())
    if (ckpt / "model.safetensors").is_file():
        sd = load_file(str(ckpt / "model.safetensors"), device=str(param.device))
        load_checked(model, {k: v.to(param.dtype) for k, v in sd.items()}, str(ckpt))
        return
    sd = load_file(str(ckpt / "lora.safetensors"), device=str(param.device))
    own = model.state_dict()
    problems = [f"unexpected key {k!r}" for k in sd if k not in own]
    problems += [
        f"key {k!r}: checkpoint has shape {tuple(v.shape)}, model expects {tuple(own[k].shape)}"
        for k, v in sd.items()
        if k in own and v.shape != own[k].shape
    ]
    if problems:
        raise CheckpointError(f"{ckpt}: the LoRA adapters do not fit: " + "; ".join(problems))
    model.load_state_dict({k: v.to(param.dtype) for k, v in sd.items()}, strict=False)


def build_frozen(role: str, spec, tokenizer, device) -> torch.nn.Module:
    """``model.<role>`` with its trained weights: through the model registry for wmtp model
    checkpoints; a trainer checkpoint (``checkpoints/step-N`` of a run) is loaded here, into the
    model the spec describes (a checkpoint of another shape is an error naming the key)."""
    build = registry.get("model", spec.kind)
    ckpt = trainer_checkpoint(spec.checkpoint) if spec.checkpoint else None
    if ckpt is None:
        return build(spec, vocab_size=tokenizer.vocab_size, device=device)
    model = build(
        spec.model_copy(update={"checkpoint": None}), vocab_size=tokenizer.vocab_size, device=device
    )
    _load_trainer_weights(model, ckpt)
    log.info("model.%s: weights of %s", role, ckpt)
    return model


def load_frozen(role: str, recipe, *, tokenizer, policy_vocab: int, ctx) -> torch.nn.Module:
    """Build, check, freeze and shard ``model.<role>`` of ``recipe`` on ``ctx.device``."""
    spec = getattr(recipe.model, role)
    assert spec is not None, f"the recipe has no model.{role} (the schema should have said so)"
    check_tokenizer(role, spec, recipe.tokenizer)
    model = build_frozen(role, spec, tokenizer, ctx.device)
    vocab = model.args.vocab_size
    check_vocabulary(role, vocab, policy_vocab, tokenizer.vocab_size)
    log.info("model.%s: frozen, %s, attention %s", role, spec.dtype, spec.attention)
    return shard_like_policy(freeze(model), ctx, recipe.parallel, spec.dtype)
