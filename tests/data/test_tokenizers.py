"""Byte, SentencePiece and Hugging Face tokenizers: special ids, round trips, bad files."""

from __future__ import annotations

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
