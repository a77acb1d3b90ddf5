"""Tokenizers: UTF-8 bytes (tiny recipes), SentencePiece ``tokenizer.model`` (Llama-2, Meta's MTP
checkpoints) and Hugging Face ``tokenizer.json``, behind one small interface.

Every tokenizer has ``bos_id``, ``eos_id``, ``pad_id`` and ``vocab_size``. ``encode`` never adds
special tokens on its own: callers say ``bos=True`` / ``eos=True``, so prompts and responses are
framed the same way whatever the tokenizer. Where a tokenizer has no padding token (Llama-2), the
EOS id pads: padded positions are masked out of every loss, so their id is never scored.
"""

from __future__ import annotations

import hashlib
import json
from abc import ABC, abstractmethod
from functools import cached_property
from pathlib import Path

from wmtp.errors import DataError


class Tokenizer(ABC):
    """Text <-> token ids, with the special ids every collator needs."""

    bos_id: int
    eos_id: int
    pad_id: int

    @property
    @abstractmethod
    def vocab_size(self) -> int:
        """Number of ids (the model's embedding rows must be at least this many)."""

    @abstractmethod
    def _encode(self, text: str) -> list[int]: ...

    @abstractmethod
    def decode(self, ids: list[int]) -> str:
        """Text of ``ids``, special tokens dropped."""

    @property
    @abstractmethod
    def identity(self) -> str:
        """A short string that changes when the vocabulary does (recorded in dataset metadata)."""

    def encode(self, text: str, *, bos: bool = False, eos: bool = False) -> list[int]:
        """Token ids of ``text``, optionally framed by BOS / EOS."""
        ids = self._encode(text)
        return [self.bos_id] * bos + ids + [self.eos_id] * eos


class ByteTokenizer(Tokenizer):
    """UTF-8 bytes 0..255, then BOS = 256, EOS = 257, PAD = 258: no file, any text round-trips."""

    bos_id, eos_id, pad_id = 256, 257, 258

    @property
    def vocab_size(self) -> int:
        return 259

    def _encode(self, text: str) -> list[int]:
        return list(text.encode("utf-8"))

    def decode(self, ids: list[int]) -> str:
        return bytes(i for i in ids if 0 <= i < 256).decode("utf-8", errors="replace")

    @property
    def identity(self) -> str:
        return "byte"


def _find_file(path: str | Path, name: str) -> Path:
    """``path`` itself, or ``path/name`` when ``path`` is a directory."""
    p = Path(path).expanduser()
    if p.is_dir():
        p = p / name
    if not p.is_file():
        raise DataError(f"tokenizer file not found: {p}")
    return p


def _file_digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()[:16]


class SentencePieceTokenizer(Tokenizer):
    """A SentencePiece model (Llama-2's ``tokenizer.model``)."""

    def __init__(self, path: str | Path):
        import sentencepiece

        self.path = _find_file(path, "tokenizer.model")
        try:
            self._sp = sentencepiece.SentencePieceProcessor(model_file=str(self.path))
        except (OSError, RuntimeError) as exc:
            raise DataError(f"{self.path}: not a SentencePiece model ({exc})") from None
        self.bos_id, self.eos_id = self._sp.bos_id(), self._sp.eos_id()
        if self.bos_id < 0 or self.eos_id < 0:
            raise DataError(
                f"{self.path}: the SentencePiece model lacks a BOS or EOS piece "
                f"(bos_id={self.bos_id}, eos_id={self.eos_id})"
            )
        pad = self._sp.pad_id()
        self.pad_id = pad if pad >= 0 else self.eos_id  # Llama-2 has no pad piece

    @property
    def vocab_size(self) -> int:
        return self._sp.get_piece_size()

    def special_tokens(self) -> dict[str, str]:
        """The special pieces by Hugging Face's names (``bos_token``, ...), for exports."""
        ids = {"bos_token": self.bos_id, "eos_token": self.eos_id, "unk_token": self._sp.unk_id()}
        ids["pad_token"] = self._sp.pad_id()
        return {name: self._sp.id_to_piece(i) for name, i in ids.items() if i >= 0}

    def _encode(self, text: str) -> list[int]:
        return self._sp.encode(text)

    def decode(self, ids: list[int]) -> str:
        """Text of ``ids``; BOS, EOS and ids past the last piece (rows of a padded embedding,
        which a model may sample) have none, as Hugging Face's decoder drops unknown ids."""
        pieces = self.vocab_size
        return self._sp.decode(
            [i for i in ids if 0 <= i < pieces and i not in (self.bos_id, self.eos_id)]
        )

    @cached_property
    def identity(self) -> str:
        return f"sentencepiece:{_file_digest(self.path)}"


# Names of the special tokens when ``tokenizer_config.json`` does not say, most common first.
_BOS_NAMES = ("<s>", "<|begin_of_text|>", "<|bos|>", "<bos>", "<|endoftext|>")
_EOS_NAMES = ("</s>", "<|end_of_text|>", "<|eos|>", "<eos>", "<|endoftext|>")
_PAD_NAMES = ("<pad>", "<|pad|>", "[PAD]", "<|finetune_right_pad_id|>")


class HFTokenizer(Tokenizer):
    """A Hugging Face ``tokenizer.json``; special tokens from ``tokenizer_config.json`` beside it
    when present, else by their usual names."""

    def __init__(self, path: str | Path):
        import tokenizers

        self.path = _find_file(path, "tokenizer.json")
        try:
            self._tok = tokenizers.Tokenizer.from_file(str(self.path))
        except Exception as exc:  # the Rust side raises plain Exception
            raise DataError(f"{self.path}: not a tokenizer.json ({exc})") from None
        named = self._configured_specials()
        self.bos_id = self._special("bos", named["bos_token"], _BOS_NAMES)
        self.eos_id = self._special("eos", named["eos_token"], _EOS_NAMES)
        pad = self._lookup(named["pad_token"], _PAD_NAMES)
        self.pad_id = pad if pad is not None else self.eos_id

    def _configured_specials(self) -> dict[str, str | None]:
        """The text of each special token ``tokenizer_config.json`` names (None where it names
        none, or there is no such file): a string, or ``{"content": "..."}``."""
        roles = ("bos_token", "eos_token", "pad_token")
        config_path = self.path.with_name("tokenizer_config.json")
        if not config_path.is_file():
            return dict.fromkeys(roles)
        try:
            config = json.loads(config_path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as exc:
            raise DataError(f"{config_path}:{exc.lineno}: invalid JSON: {exc.msg}") from None
        if not isinstance(config, dict):
            raise DataError(f"{config_path}: a JSON object of settings expected, not this")
        named = {}
        for key in roles:
            value = config.get(key)
            if isinstance(value, dict):
                value = value.get("content")
            if value is not None and not isinstance(value, str):
                raise DataError(
                    f"{config_path}: {key} = {json.dumps(config[key])}: a token's text expected "
                    '(a string, or {"content": "..."})'
                )
            named[key] = value
        return named

    def _lookup(self, configured: str | None, names: tuple[str, ...]) -> int | None:
        for name in (configured, *names) if configured else names:
            token_id = self._tok.token_to_id(name)
            if token_id is not None:
                return token_id
        return None

    def _special(self, role: str, configured, names: tuple[str, ...]) -> int:
        token_id = self._lookup(configured, names)
        if token_id is None:
            raise DataError(
                f"{self.path}: no {role.upper()} token found (tried {configured or ''} "
                f"{', '.join(names)}); add a tokenizer_config.json with '{role}_token'"
            )
        return token_id

    @property
    def vocab_size(self) -> int:
        return self._tok.get_vocab_size(with_added_tokens=True)

    def special_tokens(self) -> dict[str, str]:
        """The special tokens by Hugging Face's names (``bos_token``, ...), for exports."""
        ids = {"bos_token": self.bos_id, "eos_token": self.eos_id, "pad_token": self.pad_id}
        return {name: self._tok.id_to_token(i) for name, i in ids.items()}

    def _encode(self, text: str) -> list[int]:
        return self._tok.encode(text, add_special_tokens=False).ids

    def decode(self, ids: list[int]) -> str:
        return self._tok.decode(ids, skip_special_tokens=True)

    @cached_property
    def identity(self) -> str:
        return f"hf:{_file_digest(self.path)}"


CODE_WHITESPACE = "def f(x):\n\tif x:\n        return  [x,\n                1]\n"
"""Code's whitespace (a tab, runs of spaces, line breaks) that a tokenizer for code must keep."""


def whitespace_lost(tokenizer: Tokenizer) -> str | None:
    """How ``tokenizer`` changes the whitespace of code (:data:`CODE_WHITESPACE`) through encode
    and decode, in words; None where it keeps it. A SentencePiece model trained with the
    library's defaults (NFKC, extra whitespace removed) joins code's lines and indentation."""
    back = tokenizer.decode(tokenizer.encode(CODE_WHITESPACE))
    if back == CODE_WHITESPACE:
        return None
    return (
        f"it does not give code back: {CODE_WHITESPACE!r} decodes as {back!r}, so code trained "
        "or evaluated with it loses its indentation, line breaks or characters (a SentencePiece "
        "model trained with the library's defaults? train it with normalization_rule_name="
        "identity, remove_extra_whitespaces=false and byte_fallback, as Llama-2's was)"
    )


def load_tokenizer(kind: str, path: str | Path | None = None) -> Tokenizer:
    """The tokenizer of ``kind`` ("byte", "sentencepiece", "hf"), read from ``path``."""
    if kind == "byte":
        return ByteTokenizer()
    if path is None:
        raise DataError(f"tokenizer kind {kind!r} needs a path")
    if kind == "sentencepiece":
        return SentencePieceTokenizer(path)
    if kind == "hf":
        return HFTokenizer(path)
    raise DataError(f"unknown tokenizer kind {kind!r} (known: byte, sentencepiece, hf)")
