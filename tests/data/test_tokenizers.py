"""Byte, SentencePiece and Hugging Face tokenizers: special ids, round trips, bad files."""

from __future__ import annotations

import json

import pytest

from wmtp.data.tokenizers import (
    ByteTokenizer,
    HFTokenizer,
    SentencePieceTokenizer,
    load_tokenizer,
)
from wmtp.errors import DataError

TEXTS = ["def f(x):\n    return x + 1\n", "Ünïcödé 🙂\ttab", ""]


def test_byte_tokenizer_is_utf8_bytes_plus_specials():
    tok = ByteTokenizer()
    assert tok.encode("aé", bos=True, eos=True) == [256, 97, 0xC3, 0xA9, 257]
    assert (tok.bos_id, tok.eos_id, tok.pad_id, tok.vocab_size) == (256, 257, 258, 259)
    for text in TEXTS:
        assert tok.decode(tok.encode(text, bos=True, eos=True)) == text


def test_sentencepiece_matches_the_library_and_round_trips(sentencepiece_model):
    import sentencepiece

    tok = SentencePieceTokenizer(sentencepiece_model.parent)  # a directory works too
    reference = sentencepiece.SentencePieceProcessor(model_file=str(sentencepiece_model))
    assert (tok.bos_id, tok.eos_id) == (1, 2)
    assert tok.pad_id == tok.eos_id  # Llama-2 style: no pad piece, EOS pads (always masked)
    assert tok.vocab_size == reference.get_piece_size() == 400
    for text in TEXTS:
        assert tok.encode(text, bos=True) == [1, *reference.encode(text)]
        assert tok.decode(tok.encode(text, bos=True, eos=True)) == text


def test_hf_tokenizer_matches_transformers_and_round_trips(hf_tokenizer_dir):
    from transformers import PreTrainedTokenizerFast

    tok = HFTokenizer(hf_tokenizer_dir / "tokenizer.json")
    reference = PreTrainedTokenizerFast(tokenizer_file=str(hf_tokenizer_dir / "tokenizer.json"))
    assert (tok.pad_id, tok.bos_id, tok.eos_id) == (0, 1, 2)
    assert tok.vocab_size == len(reference)
    for text in TEXTS:
        assert tok.encode(text, eos=True) == [*reference.encode(text), 2]
        assert tok.decode(tok.encode(text, bos=True, eos=True)) == text


def test_hf_tokenizer_without_config_finds_specials_by_name(hf_tokenizer_dir, tmp_path):
    (tmp_path / "tokenizer.json").write_bytes((hf_tokenizer_dir / "tokenizer.json").read_bytes())
    tok = load_tokenizer("hf", tmp_path)
    assert (tok.pad_id, tok.bos_id, tok.eos_id) == (0, 1, 2)


def test_identity_changes_with_the_vocabulary(sentencepiece_model, hf_tokenizer_dir):
    ids = {
        ByteTokenizer().identity,
        SentencePieceTokenizer(sentencepiece_model).identity,
        HFTokenizer(hf_tokenizer_dir).identity,
    }
    assert len(ids) == 3


def test_bad_tokenizer_files_are_located_errors(tmp_path):
    with pytest.raises(DataError, match=r"tokenizer file not found: .*missing\.model"):
        load_tokenizer("sentencepiece", tmp_path / "missing.model")
    junk = tmp_path / "tokenizer.model"
    junk.write_text("not a model")
    with pytest.raises(DataError, match="not a SentencePiece model"):
        load_tokenizer("sentencepiece", junk)
    (tmp_path / "tokenizer.json").write_text("{}")
    with pytest.raises(DataError, match=r"not a tokenizer\.json"):
        load_tokenizer("hf", tmp_path)
    with pytest.raises(DataError, match="unknown tokenizer kind 'bpe'"):
        load_tokenizer("bpe", tmp_path)


def test_validate_reads_the_vocabulary_of_a_tokenizer_file_that_is_there(sentencepiece_model):
    """A flavour whose vocabulary comes from the tokenizer (-1): `wmtp validate` sizes the
    embedding by the tokenizer file where it is there, and assumes a size only where it is not."""
    import json
    import subprocess
    import sys

    from tests.train.train_helpers import REPO

    def policy_parameters(tokenizer_path) -> tuple[int, list[str]]:
        sets = ["tokenizer={kind='sentencepiece', path='" + str(tokenizer_path) + "'}"]
        command = ["validate", "recipes/tiny.toml", "--format", "json", "--set", *sets]
        done = subprocess.run(
            [sys.executable, "-m", "wmtp.cli", *command],
            cwd=REPO, capture_output=True, text=True, timeout=120,
        )  # fmt: skip
        assert done.returncode == 0, done.stderr[-2000:]
        (report,) = json.loads(done.stdout)["recipes"]
        estimate = report["estimate"]
        return estimate["parameters"]["policy"]["total"], estimate["notes"]

    there, notes = policy_parameters(sentencepiece_model)
    assert not any("vocabulary assumed" in note for note in notes), notes
    absent, notes = policy_parameters(sentencepiece_model.parent / "absent.model")
    assert any("vocabulary assumed 32000" in note for note in notes), notes
    tiny_dim = 64  # recipes/tiny.toml's flavour: embedding and output rows of `dim` each
    assert absent - there == 2 * tiny_dim * (32000 - 400)


@pytest.mark.parametrize(
    ("config", "said"),
    [
        ({"eos_token": 5}, "eos_token = 5: a token's text expected"),
        ({"bos_token": {"content": ["<s>"]}}, 'bos_token = {"content": ["<s>"]}: a token\'s'),
        ([], "a JSON object of settings expected"),
    ],
)
def test_a_tokenizer_config_of_the_wrong_shape_is_named_by_validate(
    config, said, hf_tokenizer_dir, tmp_path
):
    from typer.testing import CliRunner

    from tests.train.train_helpers import TINY
    from wmtp.cli import app

    (tmp_path / "tokenizer.json").write_bytes((hf_tokenizer_dir / "tokenizer.json").read_bytes())
    (tmp_path / "tokenizer_config.json").write_text(json.dumps(config))
    override = f"tokenizer={{kind='hf', path='{tmp_path}'}}"
    result = CliRunner().invoke(app, ["validate", str(TINY), "--set", override])
    flat = " ".join(result.output.split())
    assert result.exit_code == 2 and "Traceback" not in flat, flat
    assert f"{tmp_path / 'tokenizer_config.json'}: {said}" in flat
