"""The data components are found through the registry and built from their recipe sections."""

from __future__ import annotations

import pytest

from wmtp import registry
from wmtp.recipe.specs.experiment import ByteTokenizerSpec, SentencePieceTokenizerSpec


def test_tokenizers_build_from_their_sections(sentencepiece_model):
    byte = registry.get("tokenizer", "byte")(ByteTokenizerSpec())
    assert byte.vocab_size == 259
    sp = registry.get("tokenizer", "sentencepiece")(
        SentencePieceTokenizerSpec(path=str(sentencepiece_model))
    )
    assert (sp.bos_id, sp.eos_id, sp.vocab_size) == (1, 2, 400)
    assert {e.name for e in registry.entries("tokenizer")} == {"byte", "sentencepiece", "hf"}


def test_jsonl_dataset_and_sampler_build_from_their_sections(tmp_path):
    from tests.data.data_rows import problem_rows, write_dataset
    from wmtp.data.samplers import DifficultySampler
    from wmtp.data.tokenizers import ByteTokenizer
    from wmtp.recipe.specs.data import JsonlDataSpec

    write_dataset(tmp_path / "train.jsonl", problem_rows(10, 2, 1, difficulty=lambda p: p))
    spec = JsonlDataSpec(
        path=str(tmp_path),  # a directory: its train.jsonl
        max_length=256,
        split={"heldout_fraction": 0.2},
        sampling={"kind": "difficulty", "bins": {"low": (0, 4), "high": (5, 9)},
                  "weights": {"low": 1, "high": 1}},
        n_samples=12,
    )  # fmt: skip
    data = registry.get("dataset", "jsonl")(spec, tokenizer=ByteTokenizer(), seed=1, progress=False)
    assert isinstance(data.sampler, DifficultySampler)
    assert len(data.train_rows) == 12 and len(data.heldout_problems) == 2
    assert {e.name for e in registry.entries("sampler")} == {"uniform", "difficulty"}
    assert {e.name for e in registry.entries("dataset")} == {"jsonl", "humaneval"}


def test_a_dataset_directory_without_train_jsonl_is_a_located_error(tmp_path):
    from wmtp.data.components import jsonl_train_file
    from wmtp.errors import DataError

    (tmp_path / "other.jsonl").write_text("")
    with pytest.raises(DataError, match=r"needs train\.jsonl \(it has: \['other\.jsonl'\]\)"):
        jsonl_train_file(tmp_path)


def test_humaneval_refuses_a_heldout_path():
    from wmtp.data.tokenizers import ByteTokenizer
    from wmtp.errors import DataError
    from wmtp.recipe.specs.data import HumanEvalDataSpec

    spec = HumanEvalDataSpec(split={"heldout_fraction": 0, "heldout_path": "x.jsonl"})
    with pytest.raises(DataError, match="heldout_path does not apply"):
        registry.get("dataset", "humaneval")(spec, tokenizer=ByteTokenizer(), seed=0)
