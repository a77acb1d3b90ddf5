"""Composition: extends chains, deep merge, precedence, --set, run directories, provenance."""

from __future__ import annotations

import pytest

from wmtp.recipe import load_recipe
from wmtp.recipe.errors import RecipeProblems
from wmtp.recipe.schema import TDWeightingSpec, UniformWeightingSpec

from .conftest import MINIMAL


def test_minimal_recipe_loads_with_defaults(write):
    loaded = load_recipe(write("r.toml", MINIMAL))
    recipe = loaded.recipe
    assert recipe.experiment.name == "t"
    assert recipe.model.policy.model_args(259).n_future_tokens == 2
    assert recipe.training.lr == 1e-5  # schema default
    assert recipe.extends is None
    assert loaded.files == ("r.toml",)


def test_extends_chain_merges_tables_and_nearest_wins(write):
    write("base.toml", MINIMAL)
    write(
        "mid.toml",
        """\
        extends = "base.toml"
        [training]
        lr = 2e-4
        grad_accum_steps = 4
        """,
    )
    child = write(
        "sub/child.toml",
        """\
        extends = "../mid.toml"
        [training]
        lr = 3e-4
        """,
    )
    loaded = load_recipe(child)
    t = loaded.recipe.training
    assert (t.lr, t.grad_accum_steps, t.max_steps) == (3e-4, 4, 10)
    assert loaded.files == ("sub/child.toml", "mid.toml", "base.toml")


def test_extends_list_later_entries_win(write):
    write("a.toml", MINIMAL + "\n[evaluation]\nn_samples = 30\nk = [1]\n")
    write("b.toml", "[evaluation]\nn_samples = 40\n")
    child = write("c.toml", 'extends = ["a.toml", "b.toml"]\n')
    ev = load_recipe(child).recipe.evaluation
    assert (ev.n_samples, ev.k) == (40, [1])


def test_set_overrides_beat_the_file(write):
    path = write("r.toml", MINIMAL)
    overrides = [
        "training.lr=5e-4",
        "model.policy.attention=eager",  # a bare word is a string
        'experiment.tags=["a", "b"]',
        "experiment.pipeline=verifiable",
        "weighting={kind = 'td', min_weight = 0.2}",
        "model.critic.flavour=tiny",
    ]
    recipe = load_recipe(path, overrides).recipe
    assert recipe.training.lr == 5e-4
    assert recipe.model.policy.attention == "eager"
    assert recipe.experiment.tags == ["a", "b"]
    assert isinstance(recipe.weighting, TDWeightingSpec) and recipe.weighting.min_weight == 0.2
    assert recipe.model.critic.flavour == "tiny"


def test_a_table_of_another_kind_replaces_the_inherited_one(write):
    td = '\n[model.critic]\nflavour = "tiny"\n[weighting]\nkind = "td"\ngamma = 0.9\n'
    write("base.toml", MINIMAL.replace('"baseline"', '"verifiable"') + td)
    child = write(
        "child.toml",
        'extends = "base.toml"\n[experiment]\npipeline = "baseline"\n'
        '[weighting]\nkind = "uniform"\n',
    )
    assert isinstance(load_recipe(child).recipe.weighting, UniformWeightingSpec)
    same_kind = write("same.toml", 'extends = "base.toml"\n[weighting]\nlam = 0.5\n')
    w = load_recipe(same_kind).recipe.weighting
    assert (w.kind, w.gamma, w.lam) == ("td", 0.9, 0.5)


def test_max_steps_and_epochs_replace_each_other_across_extends(write):
    write("base.toml", MINIMAL)
    child = write("child.toml", 'extends = "base.toml"\n[training]\nepochs = 2.0\n')
    t = load_recipe(child).recipe.training
    assert (t.max_steps, t.epochs) == (None, 2.0)
    both = write("both.toml", MINIMAL.replace("max_steps = 10", "max_steps = 10\nepochs = 1.0"))
    with pytest.raises(RecipeProblems, match="max_steps or epochs, not both"):
        load_recipe(both)


def test_run_directory_stands_for_its_recipe(write, tmp_path):
    run = tmp_path / "runs" / "t" / "20260101-000000-abcdef12"
    run.mkdir(parents=True)
    (run / "recipe.toml").write_text(MINIMAL)
    assert load_recipe(run).recipe.experiment.name == "t"


def test_provenance_names_file_line_column_cli_and_default(write):
    write("base.toml", MINIMAL)
    child = write(
        "child.toml",
        """\
        extends = "base.toml"

        [training]
        schedule = { kind = "linear", warmup_steps = 3 }
        """,
    )
    prov = load_recipe(child, ["training.lr=1e-3"]).provenance
    assert str(prov["experiment.name"]) == "base.toml:2:1"
    assert str(prov["training.max_steps"]) == "base.toml:14:1"
    assert str(prov["training.schedule.warmup_steps"]) == "child.toml:4:31"
    assert str(prov["training.lr"]) == "--set training.lr=1e-3"
    assert prov["training.lr"].kind == "cli"
    assert str(prov["training.schedule.min_lr_ratio"]) == "default"
    assert str(prov["evaluation.k"]) == "default"
    # every value of the resolved recipe has a source
    assert all(source.kind in ("file", "cli", "default") for source in prov.values())
    assert "model.policy.flavour" in prov and "extends" not in prov


def test_replaced_table_forgets_the_sources_of_what_it_replaced(write):
    write("base.toml", MINIMAL + '\n[weighting]\nkind = "td"\ngamma = 0.9\n')
    child = write("child.toml", 'extends = "base.toml"\n[weighting]\nkind = "rho1"\n')
    loaded = load_recipe(child, ["model.reference.flavour=tiny", "experiment.pipeline=rho1"])
    assert str(loaded.provenance["weighting.kind"]) == "child.toml:3:1"
    assert "weighting.gamma" not in loaded.provenance
    assert str(loaded.provenance["weighting.k_percent"]) == "default"
