"""Where each key of a TOML document is written: a key path -> (line, column) index.

``tomllib`` parses TOML but forgets positions, and recipe errors must say file:line:column. This
scanner walks text that ``tomllib`` has already accepted and records the position of every table
header, key (also inside inline tables) and array element. It trusts the grammar, so it stays
small; it never decides what a value is (``tomllib`` does that).

Paths are tuples: ``("model", "policy", "dim")``; array elements add their index.
"""

from __future__ import annotations

import bisect
import re
from dataclasses import dataclass

Path = tuple[str | int, ...]

_BARE_KEY = re.compile(r"[A-Za-z0-9_-]+")
_SCALAR_END = re.compile(r"[,\]}\n#]")


@dataclass(frozen=True)
class Pos:
    """A 1-based line and column."""

    line: int
    column: int


def key_positions(text: str) -> dict[Path, Pos]:
    """The position of every table, key and array element of valid TOML ``text``."""
    return _Scanner(text).scan()


def defined_twice(text: str, line: int) -> tuple[Path, Pos, Pos] | None:
    """A key or table ``text`` defines on ``line`` and before (where ``tomllib`` says it
    "cannot overwrite a value" or "declare ... twice"): its path, its first and its second
    position; ``None`` when none is (or the text is not TOML this scanner can walk)."""
    scanner = _Scanner(text)
    try:
        scanner.scan()
    except (AssertionError, IndexError):
        return None
    for path, pos in scanner.defined:
        first = scanner.found[path]  # a key's first position, as a table or inside a dotted key
        if pos.line == line and (first.line, first.column) < (pos.line, pos.column):
            return path, first, pos
    return None


def parse_dotted_key(text: str) -> Path:
    """``'model."odd.name".dim'`` -> ``("model", "odd.name", "dim")``; ``ValueError`` if not a key."""
    try:
        parts, end = _Scanner(text + "\n").key(0)
    except (AssertionError, IndexError):
        raise ValueError(f"not a dotted key: {text!r}") from None
    if end != len(text):
        raise ValueError(f"not a dotted key: {text!r}")
    return tuple(name for name, _ in parts)


class _Scanner:
    def __init__(self, text: str):
        self.s = text
        self.n = len(text)
        self.line_starts = [0] + [m.end() for m in re.finditer("\n", text)]
        self.found: dict[Path, Pos] = {}
        self.array_tables: dict[Path, int] = {}
        self.defined: list[tuple[Path, Pos]] = []
        """Every table header's and key's full path where it is written, in order."""

    def pos(self, i: int) -> Pos:
        line = bisect.bisect_right(self.line_starts, i)
        return Pos(line, i - self.line_starts[line - 1] + 1)

    def record(self, path: Path, i: int) -> None:
        self.found.setdefault(path, self.pos(i))

    def scan(self) -> dict[Path, Pos]:
        table: Path = ()
        i = self.skip_blank(0)
        while i < self.n:
            if self.s[i] == "[":
                table, i = self.header(i)
            else:
                i = self.key_value(i, table)
            i = self.skip_blank(i)
        return self.found

    # --- lexical helpers ------------------------------------------------------------------------

    def skip_spaces(self, i: int) -> int:
        while i < self.n and self.s[i] in " \t":
            i += 1
        return i

    def skip_blank(self, i: int) -> int:
        """Skip whitespace, newlines and comments."""
        while i < self.n:
            c = self.s[i]
            if c in " \t\r\n":
                i += 1
            elif c == "#":
                while i < self.n and self.s[i] != "\n":
                    i += 1
            else:
                break
        return i

    def string_end(self, i: int) -> int:
        """Index just after the string starting at ``i`` (any of TOML's four kinds)."""
        s = self.s
        for quote in ('"""', "'''"):
            if s.startswith(quote, i):
                j = s.find(quote, i + 3)
                while quote == '"""' and _escaped(s, j):
                    j = s.find(quote, j + 1)
                end = j + 3
                while end < self.n and s[end] == quote[0]:  # up to two quotes close the content
                    end += 1
                return end
        quote = s[i]
        j = i + 1
        while s[j] != quote:
            j += 2 if quote == '"' and s[j] == "\\" else 1
        return j + 1

    def key(self, i: int) -> tuple[list[tuple[str, int]], int]:
        """A dotted key at ``i``: its parts with their start indices, and the index after it."""
        parts: list[tuple[str, int]] = []
        while True:
            i = self.skip_spaces(i)
            start = i
            if self.s[i] in "\"'":
                i = self.string_end(i)
                raw = self.s[start + 1 : i - 1]
                parts.append((_unescape(raw) if self.s[start] == '"' else raw, start))
            else:
                match = _BARE_KEY.match(self.s, i)
                assert match, f"no key at line {self.pos(i).line}"
                parts.append((match.group(), start))
                i = match.end()
            i = self.skip_spaces(i)
            if i < self.n and self.s[i] == ".":
                i += 1
                continue
            return parts, i

    # --- grammar -----------------------------------------------------------------------------

    def header(self, i: int) -> tuple[Path, int]:
        array = self.s.startswith("[[", i)
        parts, j = self.key(i + (2 if array else 1))
        path: Path = tuple(name for name, _ in parts)
        for k, (_, start) in enumerate(parts):
            self.record(path[: k + 1], start)
        if not array:
            self.defined.append((path, self.pos(parts[0][1])))
        if array:
            index = self.array_tables.get(path, -1) + 1
            self.array_tables[path] = index
            path = (*path, index)
            self.record(path, i)
        end = self.s.find("\n", j)
        return path, self.n if end < 0 else end

    def key_value(self, i: int, table: Path) -> int:
        parts, j = self.key(i)
        path = table
        for name, start in parts:
            path = (*path, name)
            self.record(path, start)
        self.defined.append((path, self.pos(parts[0][1])))
        assert self.s[j] == "=", f"no '=' at line {self.pos(j).line}"
        return self.value(self.skip_spaces(j + 1), path)

    def value(self, i: int, path: Path) -> int:
        c = self.s[i]
        if c == "{":
            return self.inline_table(i + 1, path)
        if c == "[":
            return self.array(i + 1, path)
        if c in "\"'":
            return self.string_end(i)
        match = _SCALAR_END.search(self.s, i)
        return match.start() if match else self.n

    def inline_table(self, i: int, path: Path) -> int:
        while True:
            i = self.skip_blank(i)
            if self.s[i] == "}":
                return i + 1
            if self.s[i] == ",":
                i += 1
                continue
            i = self.key_value(i, path)

    def array(self, i: int, path: Path) -> int:
        index = 0
        while True:
            i = self.skip_blank(i)
            if self.s[i] == "]":
                return i + 1
            if self.s[i] == ",":
                i += 1
                continue
            self.record((*path, index), i)
            i = self.value(i, (*path, index))
            index += 1


def _escaped(s: str, j: int) -> bool:
    """Whether the character at ``j`` is preceded by an odd number of backslashes."""
    count = 0
    while j - 1 - count >= 0 and s[j - 1 - count] == "\\":
        count += 1
    return count % 2 == 1


def _unescape(raw: str) -> str:
    from wmtp.recipe._toml import loads

    return loads(f'k = "{raw}"')["k"]
