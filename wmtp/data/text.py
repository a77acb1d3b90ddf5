"""A data file's line as text, said at its file and line when it is not: shared by the training
rows (:mod:`wmtp.data.jsonl`) and benchmark files (:mod:`wmtp.eval.benchmarks`), without numpy
(``wmtp validate`` reads benchmark files and imports no array library)."""

from __future__ import annotations

from wmtp.errors import DataError


def utf8_line(raw: bytes, where: str) -> str:
    """One line's bytes as text (a UTF-8 byte-order mark left out); a :class:`DataError` at
    ``where`` (file:line) naming the first byte that is not UTF-8, never a decoder's traceback."""
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise DataError(
            f"{where}: not UTF-8 text: byte 0x{raw[exc.start]:02x} at byte {exc.start + 1} of the "
            "line (save the file as UTF-8)"
        ) from None


def refuse_lone_surrogate(text: str, key: str, where: str) -> None:
    """JSON's ``\\ud800`` escapes may leave half of a UTF-16 pair, which no tokenizer (nor
    UTF-8) can encode: said at the line and character, not when a tokenizer meets it."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise DataError(
            f"{where}: field {key!r} holds {text[exc.start]!r} at character {exc.start}, half of "
            "a UTF-16 surrogate pair and no character: write the character itself (or both "
            "halves of its pair)"
        ) from None
