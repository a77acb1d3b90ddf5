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


def _make_run_dir_at_once(text: str, runs_dir: str, start, names) -> None:
    start.wait()
    names.put(create_run_dir(text, "tiny", runs_dir).name)


def test_runs_of_one_recipe_started_at_once_get_a_directory_each(tmp_path):
    """Eight processes (a sweep script's launches, say) make the run directory of one recipe at
    the same instant: each gets its own, none fails on another's."""
    import multiprocessing

    context = multiprocessing.get_context("spawn")
    start, names = context.Barrier(8), context.Queue()
    text = TINY.read_text()
    workers = [
        context.Process(target=_make_run_dir_at_once, args=(text, str(tmp_path), start, names))
        for _ in range(8)
    ]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(timeout=120)
    assert [worker.exitcode for worker in workers] == [0] * 8
    made = sorted(names.get(timeout=5) for _ in workers)
    assert len(set(made)) == 8 and sorted(p.name for p in (tmp_path / "tiny").iterdir()) == made
