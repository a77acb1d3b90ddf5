"""The data components are found through the registry and built from their recipe sections."""

from __future__ import annotations

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
