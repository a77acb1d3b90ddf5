"""A tokenizer that does not give code back (a SentencePiece model trained with the library's
defaults joins lines and indentation) is said before anything trains on it: a located note of
``wmtp validate``, a located warning of ``wmtp run``; Llama-2's kind of model is said nothing."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def normalising_model(tmp_path_factory, corpus_file) -> Path:
    """SentencePiece's defaults: NFKC, extra whitespace removed."""
    import sentencepiece

    out = tmp_path_factory.mktemp("sp_default")
    sentencepiece.SentencePieceTrainer.train(
        input=str(corpus_file), model_prefix=str(out / "tokenizer"), vocab_size=300,
        model_type="bpe", character_coverage=1.0, minloglevel=2,
    )  # fmt: skip
    return out / "tokenizer.model"


def wmtp(tmp_path: Path, command: str, tokenizer: Path) -> str:
    sets = [f'tokenizer={{kind="sentencepiece", path="{tokenizer}"}}']
    sets += [f"experiment.runs_dir='{tmp_path / 'runs'}'"]
    extra = ["--dry-run"] if command == "run" else []
    done = subprocess.run(
        [sys.executable, "-m", "wmtp.cli", command, "recipes/tiny.toml", *extra,
         *(a for s in sets for a in ("--set", s))],
        cwd=REPO, capture_output=True, text=True, timeout=300,
        env={**os.environ, "WMTP_NO_CACHE": "1", "WMTP_SANDBOX": "rlimits"},
    )  # fmt: skip
    assert done.returncode == 0 and "Traceback" not in done.stderr, done.stderr[-3000:]
    return done.stdout + done.stderr


@pytest.mark.parametrize("command", ["validate", "run"])
def test_a_tokenizer_that_joins_code_is_said_at_its_path(tmp_path, normalising_model, command):
    said = wmtp(tmp_path, command, normalising_model)
    assert "tokenizer.path: " in said and "it does not give code back: " in said, said
    assert "decodes as 'def f(x): if x: return " in said, said  # lines and indentation joined
    assert ("note: " if command == "validate" else "warning: ") in said, said


def test_a_tokenizer_that_keeps_code_is_said_nothing(tmp_path, sentencepiece_model):
    assert "give code back" not in wmtp(tmp_path, "validate", sentencepiece_model)
