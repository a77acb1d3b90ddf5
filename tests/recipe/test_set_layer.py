"""``--set`` arguments are one layer over the recipe, as the README's precedence says (``--set``
> the recipe > what it extends): among themselves a later one wins at its key, and a ``kind``
one of them changes replaces the recipe's table, never what another ``--set`` wrote in it."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import tomllib

REPO = Path(__file__).resolve().parents[2]


def shown(*sets: str) -> dict:
    """``wmtp show recipes/baseline.toml --set ...`` (a production recipe: a cosine schedule of
    100 warm-up steps, a uniform weighting), read back."""
    args = [a for s in sets for a in ("--set", s)]
    done = subprocess.run(
        [sys.executable, "-m", "wmtp.cli", "show", "recipes/baseline.toml", *args],
        cwd=REPO, capture_output=True, text=True, timeout=120, env={"WMTP_NO_CACHE": "1"},
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    return tomllib.loads(done.stdout)


@pytest.mark.parametrize("first_kind", [True, False], ids=["kind-first", "kind-last"])
def test_a_kind_set_keeps_the_keys_other_sets_wrote_in_its_table(first_kind):
    sets = ["training.schedule.warmup_steps=3", "training.schedule.kind=linear"]
    schedule = shown(*(reversed(sets) if first_kind else sets))["training"]["schedule"]
    assert schedule == {"kind": "linear", "warmup_steps": 3, "min_lr_ratio": 0.1}, schedule


def test_the_recipes_keys_under_a_changed_kind_go_and_a_later_set_wins():
    schedule = shown("training.schedule.kind=linear")["training"]["schedule"]
    assert schedule["warmup_steps"] == 0, schedule  # the recipe's 100 went with its cosine table
    assert shown("training.lr=1e-4", "training.lr=3e-4")["training"]["lr"] == 3e-4
    later_table = shown("training.schedule.warmup_steps=3", "training.schedule={warmup_steps=7}")
    assert later_table["training"]["schedule"]["warmup_steps"] == 7
