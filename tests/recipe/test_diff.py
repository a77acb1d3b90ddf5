"""Semantic diff: each change by dotted key, classed numerics / performance / cosmetic / checkpoint."""

from __future__ import annotations

from wmtp.recipe import diff_recipes, load_recipe
from wmtp.recipe.diff import Change

from .conftest import MINIMAL, RECIPES


def changes(write, *overrides):
    base = load_recipe(write("a.toml", MINIMAL)).recipe
    other = load_recipe("a.toml", list(overrides)).recipe
    return diff_recipes(base, other)


def test_equal_recipes_have_no_changes(write):
    assert changes(write) == []
    a = load_recipe(RECIPES / "base.toml").recipe
    b = load_recipe(RECIPES / "baseline.toml").recipe
    assert [c.key for c in diff_recipes(a, b)] == ["experiment.name"]


def test_numerics(write):
    assert changes(write, "training.lr=3e-4") == [Change("training.lr", 1e-5, 3e-4, "numerics")]
    assert changes(write, "model.policy.dtype=bfloat16")[0].category == "numerics"
    assert changes(write, "experiment.seed=1")[0].category == "numerics"
    assert changes(write, "data.packing=true")[0].category == "numerics"  # other batches


def test_performance(write):
    for override in (
        "model.policy.attention=eager",
        "parallel.activation_checkpointing=true",
        "parallel.sharding=no_shard",
        "parallel.compile=true",
        "training.mtp_loss=chunked",
        "training.mtp_loss=joint",
    ):
        (change,) = changes(write, override)
        assert change.category == "performance", override


def test_cosmetic(write):
    for override in ("experiment.name=other", "training.log_every=1", "experiment.tags=['x']"):
        (change,) = changes(write, override)
        assert change.category == "cosmetic", override


def test_checkpoint(write):
    assert changes(write, "model.policy.dim=128") == [
        Change("model.policy.dim", None, 128, "checkpoint")
    ]
    assert changes(write, "model.policy.n_future_tokens=3")[0].category == "checkpoint"
    (lora, *rest) = changes(write, "model.policy.lora={rank = 4}")
    assert lora.category == "checkpoint" and lora.key == "model.policy.lora.rank"
    assert {c.key: c.category for c in rest}["model.policy.lora.alpha"] == "numerics"


def test_a_frozen_helper_model_is_not_checkpoint_incompatible(write):
    found = changes(write, "model.critic.flavour=tiny")
    assert [(c.key, c.category) for c in found if c.key.endswith("flavour")] == [
        ("model.critic.flavour", "numerics")
    ]


def test_changed_kind_lists_the_new_parameters(write):
    td = ("experiment.pipeline=verifiable", "weighting={kind='td'}", "model.critic.flavour=tiny")
    found = {c.key: c for c in changes(write, *td)}
    assert found["weighting.kind"] == Change("weighting.kind", "uniform", "td", "numerics")
    assert found["weighting.gamma"].old is None and found["weighting.gamma"].new == 1.0


def test_production_recipes_differ_as_expected():
    a = load_recipe(RECIPES / "baseline.toml").recipe
    b = load_recipe(RECIPES / "verifiable.toml").recipe
    found = {c.key: c.category for c in diff_recipes(a, b)}
    assert found["experiment.pipeline"] == "numerics"
    assert found["weighting.kind"] == "numerics"
    assert found["experiment.name"] == "cosmetic"
    assert "model.policy.dim" not in found
