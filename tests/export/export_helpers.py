"""Helpers of the export tests: short real trainings, the wmtp model of a path, the CLI."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

import torch

from tests.train.train_helpers import REPO, TINY, runs_override

TINY_CRITIC = REPO / "recipes" / "tiny_critic.toml"
SHORT = (
    "training.max_steps=3",
    "training.schedule.warmup_steps=1",
    "training.micro_batch_size=2",
    "training.log_every=1",
    "training.eval_every=0",
    "training.checkpoint_every=3",
)
"""Three steps, a checkpoint at the last: enough to move every weight away from its start."""


@contextlib.contextmanager
def in_repo():
    """Recipes name the HumanEval cache relative to the repository."""
    before = os.getcwd()
    os.chdir(REPO)
    try:
        yield
    finally:
        os.chdir(before)


def train(root: Path, recipe: Path = TINY, *sets: str) -> Path:
    """The run directory of ``recipe`` trained in this process with ``SHORT`` and ``sets``."""
    from wmtp.train.runner import run_recipe

    with in_repo():
        return run_recipe(recipe, [*SHORT, *sets, runs_override(root)], console=False).run_dir


TOKENS = torch.tensor([[256, *b"def fibonacci(n):\n    return n"]])
"""A prompt in the byte tokenizer's ids (BOS first)."""


def wmtp_model(path: Path, *, fold_adapters: bool = True):
    """The policy ``wmtp eval`` evaluates for ``path`` (a run, a checkpoint, an export); with
    ``fold_adapters=False``, a LoRA run's adapters stay apart, as training runs them."""
    from wmtp.eval.target import load_policy, resolve_target
    from wmtp.recipe import load_recipe

    target = resolve_target(path)
    recipe = load_recipe(target.recipe_file).recipe
    return load_policy(target, recipe, "cpu", fold_adapters=fold_adapters)[0]


def logits(model, tokens=TOKENS) -> torch.Tensor:
    """wmtp logits ``[B, S, n_heads, V]`` in fp32."""
    with torch.no_grad():
        return model(tokens).float()


def export(*args) -> object:
    """``wmtp export ARGS`` through the CLI; the result with rich's line wrapping undone."""
    from typer.testing import CliRunner

    from wmtp.cli import app

    result = CliRunner().invoke(app, ["export", *map(str, args), "--no-progress"])
    result.flat = " ".join(result.output.split())
    return result
