"""An export moved, copied or downloaded to another folder keeps working as the README says:
`wmtp eval` and `wmtp bench decode` take it, and a recipe naming it as a trained checkpoint
(beside the tokenizer file it was trained with, at another path) is accepted. Its recipe.toml
names its tokenizer by the absolute path the export wrote; the export's own copy is read."""

from __future__ import annotations

import json
import shutil

import pytest
import tomllib
from typer.testing import CliRunner

from tests.export.export_helpers import export
from tests.export.test_against_references import sentencepiece_file
from tests.export.test_tokenizers import CODE, model_dir
from wmtp.cli import app

EVAL_SETS = ["--set", "evaluation.max_problems=1", "--set", "evaluation.max_new_tokens=4"]


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    """``source``: a wmtp model with a SentencePiece ``tokenizer.model`` beside it; ``moved``: its
    ``--to wmtp`` export, written to ``first`` and then renamed; at ``first`` again, another
    folder whose ``tokenizer.model`` is another SentencePiece model (the old path now another's)."""
    root = tmp_path_factory.mktemp("moved")
    source = model_dir(root / "source", 300)
    shutil.copyfile(sentencepiece_file(root), source / "tokenizer.model")
    first, moved = root / "first", root / "moved"
    assert export(source, "--to", "wmtp", "--out", first).exit_code == 0
    first.rename(moved)
    (first / "other").mkdir(parents=True)
    shutil.copyfile(_other_sentencepiece(first / "other"), first / "tokenizer.model")
    return {"root": root, "source": source, "moved": moved, "first": first}


def _other_sentencepiece(folder):
    import sentencepiece

    corpus = folder / "corpus.txt"
    corpus.write_text("\n".join(line[::-1] for line in CODE * 20), encoding="utf-8")
    sentencepiece.SentencePieceTrainer.train(
        input=str(corpus), model_prefix=str(folder / "sp"), vocab_size=300, model_type="bpe",
        byte_fallback=True, minloglevel=2,
    )  # fmt: skip
    return folder / "sp.model"


def _cli(*args) -> object:
    result = CliRunner().invoke(app, [str(a) for a in args])
    assert result.exit_code == 0, result.output
    return result


def test_the_moved_exports_recipe_reads_the_tokenizer_it_holds(folders):
    from wmtp.eval.target import load_target_recipe, resolve_target

    moved, first = folders["moved"], folders["first"]
    written = tomllib.loads((moved / "recipe.toml").read_text())
    assert written["tokenizer"]["path"] == str(first / "tokenizer.model")  # the stale path
    recipe = load_target_recipe(resolve_target(moved)).recipe
    assert recipe.tokenizer.path == str(moved / "tokenizer.model")
    # a --set of the user's still wins over the export's own file
    mine = str(folders["source"] / "tokenizer.model")
    override = load_target_recipe(resolve_target(moved), [f"tokenizer.path='{mine}'"]).recipe
    assert override.tokenizer.path == mine


def test_eval_and_bench_decode_take_a_moved_export(folders, tmp_path):
    moved = folders["moved"]
    out = tmp_path / "eval"
    _cli("eval", moved, "--no-progress", "--sandbox", "rlimits", "--out", out, *EVAL_SETS)
    assert json.loads((out / "humaneval" / "summary.json").read_text())["model"] == str(moved)
    figures = tmp_path / "decode.json"
    _cli("bench", "decode", "--checkpoint", moved, "--prompts", "1", "--new-tokens", "4",
         "--out", figures)  # fmt: skip
    assert json.loads(figures.read_text())["as_loaded"]["identical_outputs"] == "1/1"


def test_a_tokenizer_is_the_same_where_its_files_bytes_are(folders, tmp_path):
    """A trained checkpoint's tokenizer (``model.*.checkpoint``, checked when a recipe loads it)
    matches this recipe's where the files hold the same bytes, wherever they are: the export's
    copy and the file it was made from; another SentencePiece model, or a file gone, does not."""
    from wmtp.assembly import same_tokenizer
    from wmtp.recipe.specs.experiment import ByteTokenizerSpec, SentencePieceTokenizerSpec

    def sp(path):
        return SentencePieceTokenizerSpec(path=str(path))

    moved, source, first = folders["moved"], folders["source"], folders["first"]
    assert same_tokenizer(sp(moved / "tokenizer.model"), sp(source / "tokenizer.model"))
    assert not same_tokenizer(sp(moved / "tokenizer.model"), sp(first / "tokenizer.model"))
    assert not same_tokenizer(sp(tmp_path / "gone.model"), sp(source / "tokenizer.model"))
    assert not same_tokenizer(ByteTokenizerSpec(), sp(source / "tokenizer.model"))
    assert same_tokenizer(ByteTokenizerSpec(), ByteTokenizerSpec())


def test_bench_decode_cuts_prompts_to_the_context_and_refuses_what_cannot_fit(folders, tmp_path):
    """The tiny model's context is shorter than HumanEval's first prompt in this 300-piece
    vocabulary: the prompt keeps its last tokens, so every timed row decodes all its tokens.
    New tokens that leave no room for a prompt are refused, exit 2, no traceback."""
    from wmtp.models.args import flavour

    context = flavour("tiny").max_seq_len
    moved, figures = folders["moved"], tmp_path / "decode.json"
    _cli("bench", "decode", "--checkpoint", moved, "--prompts", "1", "--new-tokens", "8",
         "--out", figures)  # fmt: skip
    decoded = json.loads(figures.read_text())
    assert decoded["prompts_cut_to_context"] == 1 and decoded["prompt_tokens_mean"] == context - 8
    assert decoded["as_loaded"]["plain"]["tokens_per_s"] > 0
    args = ["bench", "decode", "--checkpoint", str(moved), "--new-tokens", str(context)]
    result = CliRunner().invoke(app, [*args, "--out", str(tmp_path / "x.json")])
    assert result.exit_code == 2, result.output
    assert f"the model's context is {context} tokens" in result.output
    assert "Traceback" not in result.output and not (tmp_path / "x.json").exists()


def _eval_recipe(folder, checkpoint, tokenizer) -> str:
    path = folder / "evaluation.toml"
    path.write_text(
        "[experiment]\nname = 'moved'\npipeline = 'evaluation'\n"
        f"runs_dir = '{folder / 'runs'}'\n\n"
        f"[tokenizer]\nkind = 'sentencepiece'\npath = '{tokenizer}'\n\n"
        f"[model.policy]\nkind = 'llama_mtp'\ncheckpoint = '{checkpoint}'\n\n"
        "[parallel]\ndevice = 'cpu'\n"
    )
    return str(path)


def test_an_export_is_evaluated_only_with_the_tokenizer_it_was_trained_with(folders, tmp_path):
    """An evaluation recipe naming the (moved) export: with a copy of the tokenizer it was
    trained with, at another path, it runs; with another SentencePiece model (the one now at the
    export's old path) it is refused, exit 2, no traceback, nothing written."""
    moved, source, first = folders["moved"], folders["source"], folders["first"]
    same = _eval_recipe(tmp_path, moved, source / "tokenizer.model")
    _cli("eval", same, "--no-progress", "--sandbox", "rlimits", "--out", tmp_path / "a", *EVAL_SETS)
    (tmp_path / "b").mkdir()
    other = _eval_recipe(tmp_path / "b", moved, first / "tokenizer.model")
    result = CliRunner().invoke(app, ["eval", other, "--no-progress", "--out", str(tmp_path / "c")])
    assert result.exit_code == 2, result.output
    shown = " ".join(result.output.split())
    assert f"{moved} was trained with tokenizer" in shown and "Traceback" not in shown
    assert not (tmp_path / "c").exists()
