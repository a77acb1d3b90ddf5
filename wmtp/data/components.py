"""Register the data components: tokenizers, datasets and samplers, each built from its section."""

from __future__ import annotations

from wmtp.data.tokenizers import Tokenizer, load_tokenizer
from wmtp.recipe.specs.experiment import (
    ByteTokenizerSpec,
    HFTokenizerSpec,
    SentencePieceTokenizerSpec,
)
from wmtp.registry import register


@register("tokenizer", "byte", spec=ByteTokenizerSpec)
def build_byte_tokenizer(spec: ByteTokenizerSpec) -> Tokenizer:
    """UTF-8 bytes plus BOS/EOS/PAD: no file needed; for tiny recipes and tests."""
    return load_tokenizer("byte")


@register("tokenizer", "sentencepiece", spec=SentencePieceTokenizerSpec)
def build_sentencepiece_tokenizer(spec: SentencePieceTokenizerSpec) -> Tokenizer:
    """A SentencePiece ``tokenizer.model`` (Llama-2, Meta's MTP checkpoints)."""
    return load_tokenizer("sentencepiece", spec.path)


@register("tokenizer", "hf", spec=HFTokenizerSpec)
def build_hf_tokenizer(spec: HFTokenizerSpec) -> Tokenizer:
    """A Hugging Face ``tokenizer.json``."""
    return load_tokenizer("hf", spec.path)
