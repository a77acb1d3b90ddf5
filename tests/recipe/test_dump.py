"""Round trips: the resolved recipe written as TOML loads back to the identical object."""

from __future__ import annotations

import json

import pytest

from wmtp.recipe import dump_recipe, load_recipe
from wmtp.recipe._toml import loads as toml_loads
from wmtp.recipe.dump import dumps
from wmtp.recipe.explain import explain_recipe

from .conftest import MINIMAL, RECIPES

ALL_RECIPES = sorted(RECIPES.glob("*.toml"))


@pytest.mark.parametrize("path", ALL_RECIPES, ids=lambda p: p.name)
def test_every_recipe_round_trips(path, tmp_path):
    recipe = load_recipe(path).recipe
    text = dump_recipe(recipe)
    out = tmp_path / "resolved.toml"
    out.write_text(text)
    again = load_recipe(out).recipe
    assert again == recipe
    assert dump_recipe(again) == text  # and the text is a fixed point


def test_explain_output_is_toml_of_the_same_recipe(tmp_path):
    loaded = load_recipe(RECIPES / "verifiable.toml", ["training.lr=2e-5"])
    text = explain_recipe(loaded)
    assert "lr = 2e-05  # --set training.lr=2e-5 · Peak learning rate (AdamW)." in text
    assert "gamma = 1.0  # recipes/verifiable.toml" in text or "gamma = 1.0  # " in text
    out = tmp_path / "explained.toml"
    out.write_text(text)
    assert load_recipe(out).recipe == loaded.recipe


def test_strings_and_numbers_that_need_care_round_trip(write):
    tricky = 'quote " backslash \\ tab \t unicode é ✓ newline \n control \x01'
    overrides = [
        f"experiment.description={json.dumps(tricky)}",
        'experiment.tags=["a b", "ü"]',
        "training.lr=1e-300",
        "training.eps=0.1",
    ]
    recipe = load_recipe(write("r.toml", MINIMAL), overrides).recipe
    assert recipe.experiment.description == tricky
    out = write("out.toml", dump_recipe(recipe))
    assert load_recipe(out).recipe == recipe


def test_writer_quotes_keys_and_keeps_empty_tables():
    data = {"a": {"odd key": 1, "x.y": [1.5, float("inf")], "empty": {}}, "b": True}
    assert toml_loads(dumps(data)) == data


def test_kind_comes_first_and_arrays_stay_on_one_line():
    text = dump_recipe(load_recipe(RECIPES / "verifiable.toml").recipe)
    weighting = text.split("[weighting]\n")[1]
    assert weighting.startswith('kind = "td"\n')
    assert 'targets = ["wq", "wk", "wv", "wo", "w1", "w2", "w3"]' in text
