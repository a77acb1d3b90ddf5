"""A recipe value has the TOML type its key says: no string read as a number, no bool as an
integer; an integer is a number, an array fills a tuple. A wrong one says what to write."""

from __future__ import annotations

import pytest

from wmtp.recipe import dump_recipe, load_recipe
from wmtp.recipe.errors import RecipeProblems

from .conftest import MINIMAL


def message_of(write, old: str, new: str, overrides=()) -> str:
    """The one problem of MINIMAL with ``old`` replaced by ``new``, rendered."""
    with pytest.raises(RecipeProblems) as info:
        load_recipe(write("r.toml", MINIMAL.replace(old, new)), overrides)
    (problem,) = info.value.problems
    return problem.render()


@pytest.mark.parametrize(
    ("old", "new", "expected"),
    [
        (
            "max_steps = 10",
            'max_steps = "100"',
            "r.toml:14:1: training.max_steps: expected an integer greater than 0, "
            'got the string "100" (write max_steps = 100)',
        ),
        (
            "max_steps = 10",
            "max_steps = 10.0",
            "training.max_steps: expected an integer greater than 0, got the number 10.0 "
            "(write max_steps = 10)",
        ),
        (
            "max_steps = 10",
            "max_steps = true",
            "training.max_steps: expected an integer greater than 0, got the boolean true "
            "(e.g. max_steps = 1)",
        ),
        (
            "max_steps = 10",
            'max_steps = 10\nlr = "1e-5"',
            'training.lr: expected a number greater than 0, got the string "1e-5" '
            "(write lr = 1e-05)",
        ),
        (
            'name = "t"',
            "name = 123",
            "experiment.name: expected a string of at most 100 characters and matching "
            '^[A-Za-z0-9][A-Za-z0-9._-]*$, got the integer 123 (write name = "123")',
        ),
        (
            "[training]",
            '[parallel]\nactivation_checkpointing = "yes"\n[training]',
            "parallel.activation_checkpointing: expected a boolean or an integer at least 1, "
            'got the string "yes" (write activation_checkpointing = true)',
        ),
        (
            "[training]",
            "[parallel]\ncompile = 1\n[training]",
            'parallel.compile: expected a boolean or one of "auto", got the integer 1 '
            "(write compile = true)",
        ),
        (
            "[training]",
            '[parallel]\ncompile = "sometimes"\n[training]',
            'parallel.compile: expected a boolean or one of "auto", got the string "sometimes" '
            "(e.g. compile = false)",
        ),
        (
            "max_steps = 10",
            'max_steps = 10\nbetas = ["0.9", 0.95]',
            "training.betas[0]: expected a number at least 0 and less than 1, "
            'got the string "0.9" (write betas = [0.9, 0.95])',
        ),
        (
            "max_steps = 10",
            "max_steps = 10\nbetas = [0.9, 0.95, 0.99]",
            "training.betas: expected an array of 2 numbers at least 0 and less than 1, "
            "got the array [0.9, 0.95, 0.99] (e.g. betas = [0.9, 0.95])",
        ),
        (
            "max_steps = 10",
            "max_steps = 10\nlr = inf",
            "training.lr: expected a number greater than 0, got the number inf (e.g. lr = 1e-05)",
        ),
        (
            "max_steps = 10",
            "max_steps = 10\ngrad_clip = nan",
            "training.grad_clip: expected a number at least 0, got the number nan "
            "(e.g. grad_clip = 1.0)",
        ),
    ],
    ids=[
        "string",
        "float",
        "bool",
        "float-string",
        "int-for-string",
        "yes",
        "int-for-bool",
        "string-for-bool-or-auto",
        "array-item",
        "array-length",
        "inf",
        "nan",
    ],
)
def test_a_value_of_another_type_says_what_to_write(write, old, new, expected):
    assert message_of(write, old, new).endswith(expected)


def test_an_integer_is_a_number(write):
    text = MINIMAL.replace("max_steps = 10", "max_steps = 10\nlr = 1")
    text = text.replace("n_future_tokens = 2", "n_future_tokens = 2\nrope_theta = 10000")
    recipe = load_recipe(write("r.toml", text)).recipe
    assert recipe.training.lr == 1.0 and isinstance(recipe.training.lr, float)
    assert recipe.model.policy.rope_theta == 10000.0
    again = load_recipe(write("again.toml", dump_recipe(recipe))).recipe
    assert again == recipe


def test_arrays_fill_tuples_and_their_items_stay_strict(write):
    sampling = (
        'kind = "humaneval"\nsampling = { kind = "difficulty", bins = { easy = [1, 8], '
        "hard = [9, 20] }, weights = { easy = 1, hard = 0.5 } }"
    )
    text = MINIMAL.replace("max_steps = 10", "max_steps = 10\nbetas = [0, 0.5]")
    recipe = load_recipe(write("r.toml", text.replace('kind = "humaneval"', sampling))).recipe
    assert recipe.training.betas == (0.0, 0.5)
    assert recipe.data.sampling.bins == {"easy": (1, 8), "hard": (9, 20)}
    bad = text.replace('kind = "humaneval"', sampling.replace("[1, 8]", '[1, "8"]'))
    with pytest.raises(RecipeProblems) as info:
        load_recipe(write("bad.toml", bad))
    (problem,) = info.value.problems
    assert problem.key == "data.sampling.bins.easy[1]"
    assert problem.message.endswith('got the string "8" (write easy = [1, 8])')


def test_set_overrides_are_typed_like_the_file(write):
    path = write("r.toml", MINIMAL)
    overrides = [
        "training.lr=2e-5",
        "model.policy.attention=sdpa",
        "training.max_steps=100",
        "parallel.activation_checkpointing=2",
        "training.betas=[0.8, 0.9]",
    ]
    recipe = load_recipe(path, overrides).recipe
    assert recipe.training.lr == 2e-5 and recipe.model.policy.attention == "sdpa"
    assert recipe.training.max_steps == 100 and recipe.training.betas == (0.8, 0.9)
    assert recipe.parallel.activation_checkpointing == 2
    text = message_of(write, "", "", ["data.packing=yes"])
    assert text == (
        "--set data.packing=yes: data.packing: expected a boolean, "
        'got the string "yes" (write packing = true)'
    )
