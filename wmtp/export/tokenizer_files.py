"""The model's tokenizer in the files ``transformers.AutoTokenizer`` reads, beside every export.

- ``sentencepiece``: the ``tokenizer.model`` itself and a ``tokenizer_config.json`` naming
  ``LlamaTokenizer`` and the special pieces (transformers converts it on load);
- ``hf``: the ``tokenizer.json`` itself, with the ``tokenizer_config.json`` found beside it, or
  one naming the special tokens wmtp found;
- ``byte``: wmtp's byte tokenizer has no file, so one is made: a ``tokenizer.json`` (``tokenizers``
  library, byte-level BPE with no merges) whose ids are wmtp's exactly: the UTF-8 bytes are ids
  0..255, ``<s>`` 256 (BOS), ``</s>`` 257 (EOS), ``<pad>`` 258.

wmtp frames a prompt as BOS + text and never adds EOS to a prompt; each ``tokenizer_config.json``
makes ``tokenizer(text)`` do the same. wmtp's byte and SentencePiece tokenizers read the name of
a special token in text (``"<s>"``) as text, so their configs say ``split_special_tokens``
(transformers would otherwise turn it into the special id); a ``tokenizer.json`` is read by wmtp
as by transformers, special names included.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path

from wmtp.data.tokenizers import ByteTokenizer, Tokenizer

TOKENIZER_CONFIG = "tokenizer_config.json"
TEXT_ONLY = {"split_special_tokens": True}
"""``tokenizer_config.json`` setting: a special token's name in text is encoded as text."""
BYTE_SPECIALS = ("<s>", "</s>", "<pad>")
"""Names of ids 256, 257, 258 in the byte tokenizer's ``tokenizer.json``."""


@dataclass(frozen=True)
class TokenizerFiles:
    """What was written, and what a model card says about it."""

    files: list[str]
    kind: str
    note: str
    """Markdown for the model card: what the files are and how a transformers user uses them."""
    tokenizer_file: str | None
    """The file a wmtp recipe names as ``tokenizer.path`` (``None`` for the byte tokenizer)."""
    decoding: str = ""
    """What the card adds for a model that generates (not a value model): how generated ids
    become text."""


def write_tokenizer(spec, tokenizer: Tokenizer, directory: Path, max_len: int) -> TokenizerFiles:
    """The tokenizer of ``spec`` (a recipe's ``[tokenizer]``) as files in ``directory``."""
    writers = {"byte": _byte, "sentencepiece": _sentencepiece, "hf": _hf}
    return writers[spec.kind](tokenizer, directory, max_len)


def _sentencepiece(tokenizer, directory: Path, max_len: int) -> TokenizerFiles:
    shutil.copyfile(tokenizer.path, directory / "tokenizer.model")
    config = {
        "tokenizer_class": "LlamaTokenizer",
        **tokenizer.special_tokens(),
        "add_bos_token": True,
        "add_eos_token": False,
        **TEXT_ONLY,
        "model_max_length": max_len,
    }
    _write_json(directory / TOKENIZER_CONFIG, config)
    note = (
        "`tokenizer.model` is the model's SentencePiece tokenizer, unchanged; "
        "`tokenizer_config.json` tells `AutoTokenizer` to read it as a `LlamaTokenizer` that "
        "prepends BOS, as wmtp frames prompts, and reads `<s>` in text as text, as SentencePiece "
        "does. transformers gives the same ids as SentencePiece except for text that starts "
        "with a space (its Llama tokenizer drops SentencePiece's extra prefix space there, as "
        "for Llama-2 itself)."
    )
    files = ["tokenizer.model", TOKENIZER_CONFIG]
    return TokenizerFiles(files, "sentencepiece", note, "tokenizer.model")


def _hf(tokenizer, directory: Path, max_len: int) -> TokenizerFiles:
    shutil.copyfile(tokenizer.path, directory / "tokenizer.json")
    beside = tokenizer.path.with_name(TOKENIZER_CONFIG)
    if beside.is_file():
        shutil.copyfile(beside, directory / TOKENIZER_CONFIG)
    else:
        config = {
            "tokenizer_class": "PreTrainedTokenizerFast",
            **tokenizer.special_tokens(),
            "model_max_length": max_len,
        }
        _write_json(directory / TOKENIZER_CONFIG, config)
    note = (
        "`tokenizer.json` is the model's Hugging Face tokenizer, unchanged, with its "
        "`tokenizer_config.json`. wmtp frames a prompt as BOS + text: check that "
        "`tokenizer(text)` adds the BOS token, or add it yourself."
    )
    return TokenizerFiles(["tokenizer.json", TOKENIZER_CONFIG], "hf", note, "tokenizer.json")


def _byte(tokenizer, directory: Path, max_len: int) -> TokenizerFiles:
    byte_level_tokenizer().save(str(directory / "tokenizer.json"))
    bos, eos, pad = BYTE_SPECIALS
    config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": bos,
        "eos_token": eos,
        "pad_token": pad,
        **TEXT_ONLY,
        "model_max_length": max_len,
    }
    _write_json(directory / TOKENIZER_CONFIG, config)
    note = (
        "This model was trained with wmtp's **byte tokenizer**, which has no file of its own: "
        "ids 0-255 are the UTF-8 bytes of the text, 256 is `<s>` (BOS), 257 `</s>` (EOS), "
        "258 `<pad>`. The export writes a `tokenizer.json` (byte-level BPE, no merges) that "
        "gives exactly these ids, so `AutoTokenizer.from_pretrained` on this folder encodes "
        "text as wmtp did: `tokenizer(text)` is `[256] + list(text.encode('utf-8'))` (BOS "
        "first, as wmtp frames prompts; `<s>` in text is its three bytes)."
    )
    decoding = (
        " `tokenizer.decode(ids, skip_special_tokens=True)` turns generated bytes back into "
        "text. Generation stops at `</s>` (id 257)."
    )
    files = ["tokenizer.json", TOKENIZER_CONFIG]
    return TokenizerFiles(files, "byte", note, None, decoding)


def byte_level_tokenizer():
    """A ``tokenizers.Tokenizer`` with wmtp's byte ids (see the module docstring)."""
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, processors

    assert ByteTokenizer.bos_id == 256 and ByteTokenizer.pad_id == 258, "byte ids changed"
    to_char = _bytes_to_unicode()
    vocab = {to_char[b]: b for b in range(256)}
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens([AddedToken(name, special=True) for name in BYTE_SPECIALS])
    bos = BYTE_SPECIALS[0]
    tok.post_processor = processors.TemplateProcessing(
        single=f"{bos} $A", pair=f"{bos} $A {bos} $B", special_tokens=[(bos, 256)]
    )
    return tok


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2's printable stand-in for every byte, the alphabet of byte-level BPE."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1)]
    printable += range(ord("®"), ord("ÿ") + 1)
    chars, extra = {}, 0
    for b in range(256):
        if b in printable:
            chars[b] = chr(b)
        else:
            chars[b] = chr(256 + extra)
            extra += 1
    return chars


def _write_json(file: Path, data: dict) -> None:
    file.write_text(json.dumps(data, indent=2) + "\n")


__all__ = ["TokenizerFiles", "byte_level_tokenizer", "write_tokenizer"]
