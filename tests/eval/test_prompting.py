"""How an evaluation shows a problem to the model: as its training rows laid prompts out."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from wmtp.data.examples import Example, encode_example
from wmtp.data.tokenizers import ByteTokenizer
from wmtp.eval.benchmarks import load_humaneval
from wmtp.eval.prompting import prompt_format
from wmtp.recipe.specs.evaluation import EvaluationSpec

BUILT = Path("storage/datasets/humaneval/v2-heldout0.1/train.jsonl")


@pytest.mark.parametrize("template", ["alpaca", "plain"])
def test_a_trained_model_is_asked_exactly_as_its_training_rows_asked(template):
    """The tokens an evaluation feeds for a HumanEval problem are the prompt tokens of every
    training row of that problem in the built-in dataset (``encode_example``'s masked prefix),
    under either template."""
    rows = [json.loads(line) for line in BUILT.read_text().splitlines()[:40]]
    problems = {p.task_id: p for p in load_humaneval().problems}
    shown = prompt_format(EvaluationSpec(), trained_template=template)
    tokenizer = ByteTokenizer()
    for row in rows:
        fields = {k: row[k] for k in ("instruction", "input", "output", "problem_id", "is_correct")}
        encoded = encode_example(Example(**fields), tokenizer, template=template)
        asked = tokenizer.encode(shown.text(problems[row["problem_id"]].prompt), bos=True)
        assert asked == encoded.input_ids[: encoded.n_prompt], row["problem_id"]


def test_the_format_follows_the_setting_and_the_weights_origin():
    prompt = "def f(x):\n"
    auto = EvaluationSpec()
    assert prompt_format(auto, trained_template=None).text(prompt) == prompt  # not wmtp-trained
    alpaca = prompt_format(auto, trained_template="alpaca")
    assert alpaca.template == "alpaca" and alpaca.text(prompt).endswith(
        f"### Input:\n{prompt}\n\n### Response:\n"
    )
    assert "Complete this Python function." in alpaca.text(prompt)
    bare = prompt_format(EvaluationSpec(prompt_template="none"), trained_template="alpaca")
    assert bare.text(prompt) == prompt and "prompt_template = 'none'" in bare.describe()
    asked = EvaluationSpec(prompt_template="plain", instruction="Write it.")
    assert prompt_format(asked, trained_template=None).text(prompt) == f"Write it.\n{prompt}\n"
