"""Run directories: name, resolved recipe that loads back identical, fingerprint, latest link."""

from __future__ import annotations

import json
import re

import torch

from tests.train.train_helpers import TINY
from wmtp.recipe import dump_recipe, load_recipe
from wmtp.train.run_dir import create_run_dir, point_latest, recipe_hash


def test_run_dir_holds_recipe_and_fingerprint_and_is_not_latest_yet(tmp_path):
    recipe = load_recipe(TINY).recipe
    text = dump_recipe(recipe)
    first = create_run_dir(text, "tiny", tmp_path)
    second = create_run_dir(text, "tiny", tmp_path)
    assert re.fullmatch(r"\d{8}-\d{6}-[0-9a-f]{8}(-\d+)?", first.name)
    assert first.name[16:24] == recipe_hash(text)[:8]
    assert first != second
    assert load_recipe(first / "recipe.toml").recipe == recipe
    fp = json.loads((first / "fingerprint.json").read_text())
    assert fp["recipe_sha256"] == recipe_hash(text)
    assert fp["torch_version"] == torch.__version__
    assert fp["devices"] and "git_sha" in fp
    assert not (tmp_path / "tiny" / "latest").exists()  # a run becomes latest with a checkpoint
    point_latest(first)
    assert (tmp_path / "tiny" / "latest").resolve() == first.resolve()
