"""Every problem speaks TOML: no pydantic class or jargon, and it says what to write instead."""

from __future__ import annotations

import pytest

from wmtp.recipe import load_recipe
from wmtp.recipe.errors import RecipeProblems

from .conftest import MINIMAL

BAD = {
    "table as string": '[training]\nschedule = "cosine"',
    "table as array": "[training]\nschedule = [1]",
    "table as number": "[training]\ncritic_loss = 1",
    "top table as string": 'model = "tiny"',
    "array of tables": "[[training]]\nlr = 1.0",
    "tagged union as string": 'weighting = "td"\n[model.critic]\nflavour = "tiny"',
    "tagged union as number": "tokenizer = 1",
    "tagged union as array": "[data]\nsampling = [1, 8]",
    "nested tagged union": '[model.critic]\nflavour = "tiny"\nhead = "mlp"',
    "optional table as bool": "[model.policy]\nlora = true",
    "optional table as number": "[model.policy]\nrope_scaling = 8.0",
    "table field as string": '[model.policy]\nlora = { rank = "2" }',
    "array as string": '[evaluation]\nbenchmarks = "humaneval"',
    "array as table": "[experiment]\ntags = { a = 1 }",
    "array item of wrong type": '[evaluation]\nk = [1, "10"]',
    "array item as table": "[experiment]\ntags = [{ a = 1 }]",
    "array too short": "[evaluation]\nk = []",
    "optional array too short": '[model.critic]\nflavour = "tiny"\nhead = { kind = "mlp", hidden = [] }',
    "literal array too short": "[model.policy.lora]\ntargets = []",
    "literal array item": '[model.policy.lora]\ntargets = ["wq", "q"]',
    "tuple as number": "[training]\nbetas = 0.9",
    "tuple too short": "[training]\nbetas = [0.9]",
    "tuple too long": "[training]\nbetas = [0.9, 0.95, 0.99]",
    "tuple item out of range": "[training]\nbetas = [0.9, 1.5]",
    "free table as array": "[data.sampling]\nkind = 'difficulty'\nbins = [1, 8]\nweights = {}",
    "free table value": "[data.sampling]\nkind = 'difficulty'\nbins = { a = [1, 8] }\nweights = { a = 'x' }",
    "free table tuple": "[data.sampling]\nkind = 'difficulty'\nbins = { a = [8] }\nweights = { a = 1 }",
    "negative float": "[training]\nlr = -1.0",
    "negative int": "[experiment]\nseed = -1",
    "above bound": "[evaluation]\ntop_p = 2.0",
    "at open bound": "[data.split]\nheldout_fraction = 1.0",
    "zero": "[training]\nmicro_batch_size = 0",
    "name pattern": '[experiment]\nname = "has space"',
    "name length": f'[experiment]\nname = "{"x" * 101}"',
    "literal of wrong type": "[model.policy]\ndtype = 16",
    "literal misspelt": '[model.policy]\ndtype = "bf16"',
    "flavour misspelt": '[model.policy]\nflavour = "tiny2"',
    "unknown key": "[training]\nlearning_rate = 1.0",
    "unknown kind": '[weighting]\nkind = "tdd"',
    "missing kind": "[weighting]\nk_percent = 0.5",
    "nested unknown kind": '[model.critic]\nflavour = "tiny"\n[weighting]\nkind = "td"\nnormalize = { kind = "emaa" }',
    "bool as int": "[training]\nmax_steps = true",
    "float as int": "[model.policy]\ndim = 64.5",
    "int as bool": "[data]\npacking = 0",
    "string as bool": '[parallel]\ncompile = "false"',
    "date": "[experiment]\nseed = 2024-01-01",
    "int or bool": "[parallel]\nactivation_checkpointing = 1.5",
    "int or bool below": "[parallel]\nactivation_checkpointing = 0",
    "string as float": '[evaluation]\ntemperature = "hot"',
    "number as string": "[experiment]\ndescription = 1.5",
    "missing path": '[tokenizer]\nkind = "hf"',
    "missing bins": "[data.sampling]\nkind = 'difficulty'",
}
"""Bad recipes, each extending a valid one: every kind of mistake pydantic reports."""

JARGON = ("Spec", "instance of", "pydantic", "Input should", "dictionary", "Field required")
SAYS_WHAT_TO_WRITE = ("(write ", "(e.g. ", "(add ")


def problems_of(write, snippet: str) -> list:
    write("base.toml", MINIMAL)
    with pytest.raises(RecipeProblems) as info:
        load_recipe(write("bad.toml", 'extends = "base.toml"\n' + snippet + "\n"))
    return info.value.problems


@pytest.mark.parametrize("snippet", BAD.values(), ids=BAD.keys())
def test_no_pydantic_words_and_always_what_to_write(write, snippet):
    for problem in problems_of(write, snippet):
        text = problem.render()
        assert not any(word in text for word in JARGON), text
        assert problem.key and problem.key in text
        hinted = problem.expected or problem.suggestions
        assert hinted or any(s in problem.message for s in SAYS_WHAT_TO_WRITE), text


def test_tables_get_an_example_of_their_own_kind(write):
    (problem,) = problems_of(write, 'weighting = "td"\n[model.critic]\nflavour = "tiny"')
    assert problem.message == (
        'expected a table, got the string "td" (e.g. weighting = { kind = "td", gamma = 1.0 })'
    )
    (problem,) = problems_of(write, '[training]\nschedule = "cosine"')
    assert problem.render() == (
        'bad.toml:3:1: training.schedule: expected a table, got the string "cosine" '
        '(e.g. schedule = { kind = "cosine", warmup_steps = 0 })'
    )


def test_array_items_are_shown_in_their_array(write):
    (problem,) = problems_of(write, '[model.policy.lora]\ntargets = ["wq", 1]')
    assert problem.key == "model.policy.lora.targets[1]"
    assert problem.render().endswith(
        '1 is not allowed (expected one of "wq", "wk", "wv", "wo", "w1", "w2", "w3")'
    )
    (problem,) = problems_of(write, "[training]\nbetas = [0.9, 1.5]")
    assert problem.message.endswith("(e.g. betas = [0.9, 0.95])")  # the default's item
    (problem,) = problems_of(write, "[experiment]\ntags = [{ a = 1 }]")
    assert problem.message == 'expected a string, got a table (e.g. tags = ["..."])'


WRONG = ('"100"', "1.5", "true", '[1, "a"]', "{ a = 1 }", "1979-05-27", '{ kind = "zz" }')
"""Values of every TOML type, each wrong for most keys."""


def test_every_key_of_the_schema_with_values_of_every_type(write):
    """No wrong value anywhere makes a traceback or a message in pydantic's words."""
    from wmtp.recipe.annotations import schema_keys
    from wmtp.recipe.schema import Recipe

    extra = '[model.critic]\nflavour = "tiny"\n[model.reference]\nflavour = "tiny"\n'
    path = write("r.toml", MINIMAL + extra)
    for key in schema_keys(Recipe):
        for value in WRONG:
            try:
                load_recipe(path, [f"{key}={value}"])
            except RecipeProblems as exc:
                text = exc.render()
                assert not any(word in text for word in JARGON), text
