"""Tokenizer files the data tests train themselves (nothing is downloaded)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

CORPUS = [
    "def add(a, b):\n    return a + b\n",
    "Write a function that returns the sum of two numbers.",
    "for i in range(10):\n    print(i * i)\n",
    "Below is an instruction that describes a task. Write a response.",
    "### Instruction:\nSort a list.\n\n### Response:\n",
    "def is_even(n):\n    return n % 2 == 0\n",
    "class Stack:\n    def push(self, x):\n        self.items.append(x)\n",
    "Ünïcödé text, emoji 🙂 and tabs\tstay intact.",
] * 40


@pytest.fixture(scope="session")
def corpus_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("corpus") / "corpus.txt"
    path.write_text("\n".join(CORPUS), encoding="utf-8")
    return path


@pytest.fixture(scope="session")
def sentencepiece_model(tmp_path_factory, corpus_file) -> Path:
    """A small Llama-2-style SentencePiece model: unk=0, bos=1, eos=2, no pad piece."""
    import sentencepiece

    out = tmp_path_factory.mktemp("sp")
    sentencepiece.SentencePieceTrainer.train(
        input=str(corpus_file),
        model_prefix=str(out / "tokenizer"),
        vocab_size=400,
        model_type="bpe",
        byte_fallback=True,
        character_coverage=1.0,
        normalization_rule_name="identity",  # as Llama-2: whitespace and newlines kept
        remove_extra_whitespaces=False,
        split_digits=True,
        unk_id=0,
        bos_id=1,
        eos_id=2,
        pad_id=-1,
        minloglevel=2,
    )
    return out / "tokenizer.model"


@pytest.fixture(scope="session")
def hf_tokenizer_dir(tmp_path_factory, corpus_file) -> Path:
    """A byte-level BPE ``tokenizer.json`` with <s>, </s>, <pad> and a tokenizer_config.json."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=300,
        special_tokens=["<pad>", "<s>", "</s>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train([str(corpus_file)], trainer)
    out = tmp_path_factory.mktemp("hf")
    tok.save(str(out / "tokenizer.json"))
    config = {"bos_token": "<s>", "eos_token": "</s>", "pad_token": "<pad>"}
    (out / "tokenizer_config.json").write_text(json.dumps(config))
    return out
