"""Every kind of user mistake becomes one located report: file:line:column, key, expected, hints."""

from __future__ import annotations

import pytest

from wmtp.errors import RecipeError
from wmtp.recipe import load_recipe
from wmtp.recipe.errors import RecipeProblems

from .conftest import MINIMAL


def problems_of(path, overrides=()):
    with pytest.raises(RecipeProblems) as info:
        load_recipe(path, overrides)
    assert isinstance(info.value, RecipeError)
    return info.value.problems


def one_problem(path, overrides=()):
    problems = problems_of(path, overrides)
    assert len(problems) == 1, [p.render() for p in problems]
    return problems[0]


def test_toml_syntax_error_is_located(write):
    p = one_problem(write("r.toml", '[experiment]\nname = "unterminated\n'))
    assert (p.file, p.line) == ("r.toml", 2)
    assert p.column is not None and "TOML syntax error" in p.message


def test_unknown_key_has_position_and_did_you_mean(write):
    text = MINIMAL.replace("max_steps = 10", "max_steps = 10\ngrad_acum_steps = 2")
    p = one_problem(write("r.toml", text))
    assert (p.where, p.key, p.message) == ("r.toml:15:1", "training.grad_acum_steps", "unknown key")
    assert p.suggestions == ("grad_accum_steps",)
    assert "did you mean 'grad_accum_steps'?" in p.render()


def test_unknown_key_inside_a_tagged_union_uses_the_recipe_key(write):
    text = MINIMAL + '[model.critic]\nflavour = "tiny"\n[weighting]\nkind = "td"\ngama = 0.9\n'
    p = one_problem(write("r.toml", text))
    assert (p.key, p.line, p.suggestions) == ("weighting.gama", 23, ("gamma",))


def test_unknown_kind_lists_kinds_and_suggests(write):
    p = one_problem(write("r.toml", MINIMAL + '[weighting]\nkind = "rho"\n'))
    assert (p.key, p.line, p.column) == ("weighting.kind", 20, 1)
    assert p.message == 'unknown kind "rho"'
    assert "uniform" in p.expected and "random_matched" in p.expected
    assert p.suggestions[0] == "rho1"


def test_missing_kind_of_a_tagged_union(write):
    p = one_problem(write("r.toml", MINIMAL + "[weighting]\nk_percent = 0.5\n"))
    # the kind whose keys the table holds
    assert (p.key, p.message) == ("weighting.kind", 'missing required key (add kind = "rho1")')
    assert p.expected.startswith('one of "uniform", "td", "rho1"')


def test_unknown_choice_suggests(write):
    text = MINIMAL.replace('dtype = "float32"', 'dtype = "float32"\nattention = "spda"')
    p = one_problem(write("r.toml", text))
    assert (p.key, p.line) == ("model.policy.attention", 11)
    assert p.suggestions == ("sdpa",) and "flash_attn" in p.expected


def test_unknown_flavour_suggests(write):
    p = one_problem(write("r.toml", MINIMAL.replace('"tiny"', '"tiny2"')))
    assert p.key == "model.policy.flavour" and p.suggestions[0] == "tiny"


def test_wrong_type_and_out_of_range(write):
    text = MINIMAL.replace("max_steps = 10", 'max_steps = "ten"\nlr = -1.0')
    first, second = problems_of(write("r.toml", text))
    assert (first.key, first.line) == ("training.max_steps", 14)
    assert first.message.startswith('expected an integer greater than 0, got the string "ten"')
    assert (second.key, second.line) == ("training.lr", 15)
    assert second.message == (
        "expected a number greater than 0, got the number -1.0 (e.g. lr = 1e-05)"
    )


def test_missing_required_key_points_at_its_table(write):
    p = one_problem(write("r.toml", MINIMAL.replace('name = "t"\n', "")))
    assert (p.key, p.line) == ("experiment.name", 1)
    assert p.message == 'missing required key (add name = "...")'


def test_every_problem_in_one_report_in_file_order(write):
    text = (
        MINIMAL.replace('name = "t"', 'name = "t"\ncolour = "red"')
        .replace("max_steps = 10", "max_steps = 0")
        .replace('kind = "humaneval"', 'kind = "humaneval"\nmax_lenght = 3')
    )
    problems = problems_of(write("r.toml", text))
    assert [p.key for p in problems] == [
        "experiment.colour",
        "training.max_steps",
        "data.max_lenght",
    ]
    assert [p.line for p in problems] == sorted(p.line for p in problems)
    report = RecipeProblems("r.toml", problems).render()
    assert report.startswith("r.toml: 3 problems")


def test_missing_extends_is_located(write):
    p = one_problem(write("r.toml", 'extends = "nope.toml"\n' + MINIMAL))
    assert (p.where, p.key) == ("r.toml:1:1", "extends")
    assert "nope.toml" in p.message


def test_extends_cycle_is_named(write):
    write("a.toml", 'extends = "b.toml"\n')
    write("b.toml", 'extends = "a.toml"\n')
    p = one_problem("a.toml")
    assert p.message == "extends cycle: a.toml -> b.toml -> a.toml"


def test_extends_of_a_folder_and_a_dangling_latest_link_say_so(write, tmp_path):
    (tmp_path / "recipes").mkdir()
    p = one_problem(write("r.toml", 'extends = "recipes"\n'))
    assert p.message == "extended recipe is a folder, not a recipe: recipes"
    (tmp_path / "latest").symlink_to("20991231-000000-gone")  # its run was deleted
    p = one_problem(tmp_path / "latest")
    assert p.message == "a symlink to 20991231-000000-gone, which does not exist"


def test_problem_from_set_names_the_override(write):
    p = one_problem(write("r.toml", MINIMAL), ["training.lr=fast"])
    assert p.file is None and p.origin == "--set training.lr=fast"
    assert "training.lr" in p.render() and "--set training.lr=fast" in p.render()
    bad = one_problem("r.toml", ["training.lr"])
    assert "expected KEY=VALUE" in bad.message


@pytest.mark.parametrize(
    ("override", "meant"),
    [
        ("evaluation.benchmarks=[humaneval, mbpp=m.jsonl]", '["humaneval", "mbpp=m.jsonl"]'),
        ("weighting={kind=td, lam=0.9}", '{kind = "td", lam = 0.9}'),
        ("evaluation.k=[1, [2]", "[...]"),
    ],
)
def test_an_array_whose_quotes_the_shell_dropped_says_how_to_quote_it(write, override, meant):
    """``--set evaluation.benchmarks=["foo"]`` unquoted reaches wmtp as ``[foo]``: not a bare
    word (a string), but an array that lost its quotes."""
    p = one_problem(write("r.toml", MINIMAL), [override])
    key = override.split("=")[0]
    assert p.file is None and p.origin == f"--set {override}" and p.key == key
    assert p.message.endswith(f"unless the whole argument is quoted: --set '{key}={meant}'")
    if "..." not in meant:  # the suggestion is TOML
        from wmtp.recipe import _toml

        assert _toml.loads(f"v = {meant}")["v"]


@pytest.mark.parametrize("override", ["foo.bar=1", "training.foo.bar=1"])
def test_an_unknown_table_made_by_set_names_the_override(write, override):
    """``--set foo.bar=1`` makes the table ``foo`` without writing it: the problem with ``foo``
    is the override's, not the file's."""
    p = one_problem(write("r.toml", MINIMAL), [override])
    assert p.file is None and p.origin == f"--set {override}", p.render()
    assert p.message == "unknown key"


def test_a_recipe_saved_with_a_byte_order_mark_loads(write, tmp_path):
    """Editors on Windows may start a UTF-8 file with a BOM, which TOML does not allow."""
    path = write("r.toml", MINIMAL)
    path.write_bytes(b"\xef\xbb\xbf" + path.read_bytes())
    assert load_recipe(path).recipe == load_recipe(write("plain.toml", MINIMAL)).recipe


def test_json_form_carries_every_field(write):
    text = MINIMAL.replace("max_steps = 10", "max_steps = 10\ngrad_acum_steps = 2")
    with pytest.raises(RecipeProblems) as info:
        load_recipe(write("r.toml", text))
    data = info.value.to_json()
    assert data["error"] == "RecipeProblems" and data["recipe"] == "r.toml"
    (problem,) = data["problems"]
    assert problem["file"] == "r.toml" and problem["line"] == 15 and problem["column"] == 1
    assert problem["key"] == "training.grad_acum_steps"
    assert problem["suggestions"] == ["grad_accum_steps"]


# --- cross-field rules: each names both fields, each located ------------------------------------


def rule_problem(write, text, overrides=()):
    return one_problem(write("r.toml", text), overrides)


def test_flash_attn_needs_half_precision(write):
    p = rule_problem(write, MINIMAL, ["model.policy.attention=flash_attn"])
    assert p.key == "model.policy.attention" and "dtype" in p.message and "flash_attn" in p.message
    text = MINIMAL.replace('"float32"', '"bfloat16"\nattention = "flash_attn"')
    load_recipe(write("ok.toml", text))  # bf16 is fine


def test_future_tokens_fit_the_layers(write):
    p = rule_problem(write, MINIMAL.replace("n_future_tokens = 2", "n_future_tokens = 5"))
    assert p.key == "model.policy.n_future_tokens" and p.line == 11
    assert "n_layers = 4" in p.message and "n_future_tokens = 5" in p.message


def test_min_weight_below_max_weight(write):
    text = (
        MINIMAL
        + '[model.critic]\nflavour = "tiny"\n[weighting]\nkind = "td"\nmin_weight = 3.0\nmax_weight = 3.0\n'
    )
    p = rule_problem(write, text)
    assert p.key == "weighting.min_weight" and "max_weight" in p.message and p.line == 23


@pytest.mark.parametrize("k_percent", [0.0, 1.5, -0.1])
def test_k_percent_in_unit_interval(write, k_percent):
    text = (
        MINIMAL.replace('"baseline"', '"rho1"')
        + f'[model.reference]\nflavour = "tiny"\n[weighting]\nkind = "rho1"\nk_percent = {k_percent}\n'
    )
    p = rule_problem(write, text)
    assert p.key == "weighting.k_percent"
    load_recipe(write("ok.toml", text.replace(f"k_percent = {k_percent}", "k_percent = 1.0")))


def test_verifiable_needs_a_critic(write):
    text = MINIMAL.replace('"baseline"', '"verifiable"') + '[weighting]\nkind = "td"\n'
    (pipeline,) = problems_of(write("r.toml", text))
    assert (pipeline.key, pipeline.line) == ("experiment.pipeline", 3)
    assert "[model.critic]" in pipeline.message and "'verifiable'" in pipeline.message


@pytest.mark.parametrize(
    ("pipeline", "weighting", "accepted"),
    [
        ("baseline", "td", "'uniform'"),
        ("verifiable", "uniform", "'td' or 'random_matched' or 'shuffled'"),
        ("rho1", "td", "'rho1'"),
        ("ntp", "rho1", "'uniform'"),
    ],
)
def test_a_weighting_the_pipeline_does_not_use_is_a_located_error(
    write, pipeline, weighting, accepted
):
    text = MINIMAL.replace('"baseline"', f'"{pipeline}"') + (
        '[model.critic]\nflavour = "tiny"\n[model.reference]\nflavour = "tiny"\n'
        f'[weighting]\nkind = "{weighting}"\n'
    )
    (problem,) = problems_of(write("r.toml", text))
    assert problem.key == "weighting.kind" and problem.where.startswith("r.toml:")
    assert f"experiment.pipeline = '{pipeline}'" in problem.message
    assert f"takes weighting.kind = {accepted}" in problem.message


def test_rho1_needs_a_reference(write):
    text = MINIMAL.replace('"baseline"', '"rho1"') + '[weighting]\nkind = "rho1"\n'
    problems = problems_of(write("r.toml", text))
    assert any(
        q.key == "experiment.pipeline" and "[model.reference]" in q.message for q in problems
    )


def test_k_values_fit_the_samples(write):
    p = rule_problem(write, MINIMAL + "[evaluation]\nk = [1, 10]\nn_samples = 5\n")
    assert p.key == "evaluation.k" and "n_samples" in p.message and p.line == 20


def test_head_weights_one_per_head(write):
    p = rule_problem(
        write, MINIMAL.replace("max_steps = 10", "max_steps = 10\nhead_weights = [1.0]")
    )
    assert p.key == "training.head_weights" and "n_future_tokens = 2" in p.message


def test_data_fits_the_context(write):
    p = rule_problem(write, MINIMAL.replace("max_length = 256", "max_length = 4096"))
    assert p.key == "data.max_length" and "max_seq_len = 512" in p.message


def test_a_broken_rule_is_located_at_the_key_it_names_and_says_what_the_recipe_left_unset(write):
    """data.max_length left to its default (a `--set` replaced the data table) against a context
    the recipe sets: the problem's key and line are model.policy.max_seq_len's, and it says that
    data.max_length is not the recipe's."""
    text = MINIMAL.replace("n_future_tokens = 2", "n_future_tokens = 2\nmax_seq_len = 1024")
    path = write("r.toml", text)
    line = text.splitlines().index("max_seq_len = 1024") + 1
    (p,) = problems_of(path, ['data={kind="jsonl", path="train.jsonl"}'])
    assert (p.key, p.line) == ("model.policy.max_seq_len", line), p.render()
    assert p.message == (
        "data.max_length = 2048 is longer than model.policy.max_seq_len = 1024 "
        """(data.max_length: not set: `--set data={kind="jsonl", path="train.jsonl"}` """
        "replaced [data] whole, its keys too)"
    )
    (p,) = problems_of(path, ["data.kind=jsonl", "data.path=train.jsonl"])
    assert p.message.endswith(
        "(data.max_length: not set: `--set data.kind=jsonl` replaced [data] whole, its keys too)"
    )
    text = text.replace("max_length = 256\n", "")  # the recipe's own table, without the key
    (p,) = problems_of(write("r2.toml", text), [])
    assert p.message.endswith("(data.max_length: not set in the recipe)"), p.message


def test_a_key_of_another_kind_names_that_kind(write):
    p = one_problem(write("r.toml", MINIMAL), ["data.path=train.jsonl"])
    assert (p.key, p.message) == (
        "data.path",
        'unknown key for kind = "humaneval"; it is a key of kind = "jsonl"',
    )


def test_packing_a_pair_pipeline_is_a_located_error(write):
    """The critic trains on (correct, incorrect) pairs, one per row: data.packing used to be
    ignored there; now `wmtp validate` says where it is, exit 2."""
    import subprocess
    import sys
    from pathlib import Path

    repo = Path(__file__).resolve().parents[2]
    tiny_critic = repo / "recipes" / "tiny_critic.toml"
    path = write("r.toml", f'extends = "{tiny_critic}"\n\n[data]\npacking = true\n')
    p = one_problem(path)
    assert (p.key, p.where) == ("data.packing", "r.toml:4:1")
    assert "'critic' trains on (correct, incorrect) pairs" in p.message
    done = subprocess.run(
        [sys.executable, "-m", "wmtp.cli", "validate", str(path)],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    shown = " ".join((done.stdout + done.stderr).split())
    assert done.returncode == 2 and "Traceback" not in shown
    assert "r.toml:4:1" in shown and "data.packing" in shown


def test_several_broken_rules_of_one_section_are_all_reported(write):
    text = MINIMAL.replace("n_future_tokens = 2", 'n_future_tokens = 9\nattention = "flash_attn"')
    keys = {p.key for p in problems_of(write("r.toml", text))}
    assert {"model.policy.attention", "model.policy.n_future_tokens"} <= keys


def test_missing_tables_of_an_empty_file_belong_to_the_file(write):
    problems = problems_of(write("empty.toml", ""))
    assert [(p.where, p.key) for p in problems] == [
        ("empty.toml", "experiment"),
        ("empty.toml", "experiment.pipeline"),
        ("empty.toml", "tokenizer"),
        ("empty.toml", "training.max_steps"),
    ]
    typo = one_problem(write("typo.toml", MINIMAL + "[trainig]\nlr = 1.0\n"))
    assert (typo.where, typo.suggestions) == ("typo.toml:19:2", ("training",))


# --- every missing table at once, each with what to add ---------------------------------------


def test_every_missing_table_is_reported_with_what_to_add(write):
    problems = problems_of(write("r.toml", "[training]\nmax_steps = 100\n"))
    messages = {p.key: p.message for p in problems}
    assert messages["experiment"] == 'missing required table (add [experiment] name = "...")'
    assert messages["tokenizer"] == 'missing required table (add [tokenizer] kind = "byte")'
    # the rules across tables run too, as if the missing tables were there
    assert "[model.policy]" in messages["experiment.pipeline"]
    assert len(problems) == 3


def test_missing_keys_inside_tables_say_what_to_add(write):
    text = MINIMAL.replace('kind = "byte"', 'kind = "hf"').replace(
        'kind = "humaneval"', 'kind = "jsonl"'
    )
    problems = problems_of(write("r.toml", text))
    assert [(p.key, p.line, p.message) for p in problems] == [
        ("tokenizer.path", 5, 'missing required key (add path = "...")'),
        ("data.path", 16, 'missing required key (add path = "...")'),
    ]


def test_rules_wait_for_the_other_problems(write):
    """Filling in missing keys is only for recipes that miss nothing else: a wrong value may be
    what a rule would read."""
    problems = problems_of(write("r.toml", '[training]\nmax_steps = "100"\n'))
    assert [p.key for p in problems] == ["experiment", "tokenizer", "training.max_steps"]


# --- did-you-mean across tables -----------------------------------------------------------------


def test_a_key_of_another_table_is_suggested_by_its_dotted_key(write):
    text = MINIMAL.replace("max_steps = 10", "max_steps = 10\nn_future_tokens = 2")
    p = one_problem(write("r.toml", text))
    assert (p.key, p.line, p.message) == ("training.n_future_tokens", 15, "unknown key")
    assert p.suggestions == ("model.policy.n_future_tokens", "model.reference.n_future_tokens")
    assert "did you mean 'model.policy.n_future_tokens'" in p.render()
    assert p.expected is None  # the suggestion says it: no list of the table's keys


def test_a_misspelt_key_of_another_table_is_suggested(write):
    text = MINIMAL.replace("max_steps = 10", "max_steps = 10\nwarmup_step = 5\ngama = 0.9")
    warmup, gamma = problems_of(write("r.toml", text))
    assert warmup.suggestions[:2] == (
        "training.schedule.warmup_steps",
        "weighting.normalize.warmup_steps",
    )
    assert warmup.suggestions[2] == "max_steps"  # of its own table, spelt less alike
    assert gamma.suggestions == ("weighting.gamma",)


def test_a_key_written_above_its_table_is_suggested(write):
    p = one_problem(write("r.toml", "seed = 1\n" + MINIMAL))
    assert (p.key, p.suggestions) == ("seed", ("experiment.seed",))


def test_same_table_suggestions_come_first_and_unrelated_keys_get_the_list(write):
    text = MINIMAL.replace("max_steps = 10", "max_steps = 10\nmicro_batch = 2\nzzz = 1")
    close, unrelated = problems_of(write("r.toml", text))
    assert close.suggestions[0] == "micro_batch_size"
    assert unrelated.suggestions == () and "micro_batch_size" in unrelated.expected
