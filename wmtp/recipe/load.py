"""Loading recipes: TOML files, ``extends`` chains, ``--set`` overrides, provenance, validation.

Precedence, in this one place: ``--set`` > the recipe file > the recipes it extends (the later
of a list first, each after its own bases) > schema defaults. Tables merge key by key; any other
value (arrays included) replaces the inherited one. Two exceptions keep inheritance useful:

- a table whose ``kind`` differs from the inherited table's replaces it whole (``weighting =
  {kind = "uniform"}`` over a TD base drops ``gamma`` and friends instead of rejecting them);
- keys that exclude each other (``training.max_steps`` / ``training.epochs``): setting one drops
  the other inherited one.
"""

from __future__ import annotations

import copy
import dataclasses
import functools
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path as FsPath
from typing import TYPE_CHECKING, Any, Literal

from wmtp.recipe import _toml
from wmtp.recipe.errors import Problem, RecipeProblems
from wmtp.recipe.positions import Path, defined_twice, key_positions, parse_dotted_key

if TYPE_CHECKING:
    from wmtp.recipe.schema import Recipe

EXCLUSIVE_KEYS: dict[Path, tuple[tuple[str, str], ...]] = {
    ("training",): (("max_steps", "epochs"),),
}
"""Table -> pairs of keys of which a file sets at most one; setting one drops the other."""


@dataclass(frozen=True)
class Source:
    """Where a value came from: a file position, the command line, or the schema default."""

    kind: Literal["file", "cli", "default"]
    file: str | None = None
    line: int | None = None
    column: int | None = None
    text: str | None = None
    """The ``--set`` argument, for command-line values."""

    def __str__(self) -> str:
        if self.kind == "file":
            return f"{self.file}:{self.line}:{self.column}"
        if self.kind == "cli":
            return f"--set {self.text}"
        return "default"


@dataclass(frozen=True)
class LoadedRecipe:
    """A validated recipe with where each value came from."""

    recipe: Recipe
    provenance: dict[str, Source]
    """Dotted key of every value of the resolved recipe -> its source."""
    path: str
    """The recipe file as given."""
    files: tuple[str, ...]
    """Every file read, the recipe first, then its bases."""


@dataclass
class Tree:
    """A recipe being assembled: the merged data and the source of each of its paths."""

    data: dict
    sources: dict[Path, Source]


def display_path(path: os.PathLike | str) -> str:
    """``path`` relative to the working directory when it is below it, else absolute."""
    path = FsPath(path).resolve()
    try:
        return str(path.relative_to(FsPath.cwd()))
    except ValueError:
        return str(path)


def dotted(path: Path) -> str:
    """``("model", "policy", "dim")`` -> ``"model.policy.dim"`` (indices as ``[i]``)."""
    text = ""
    for part in path:
        if isinstance(part, int):
            text += f"[{part}]"
        else:
            text += ("." if text else "") + part
    return text


# --- reading files ---------------------------------------------------------------------------


def _folder_not_recipe(folder: FsPath) -> str:
    """What a folder given as a recipe is, with the recipes in it to name instead."""
    names = sorted(p.name for p in folder.glob("*.toml"))
    runs = sorted(p.parent.name for p in folder.glob("*/recipe.toml"))  # an experiment's runs
    if names:
        return f"a folder, not a recipe: name one of the recipes in it ({_some(names)})"
    if runs:
        return f"a folder of runs, not a run: name one of them ({_some(runs)})"
    return "a folder, not a recipe"


def _some(names: list[str]) -> str:
    return ", ".join(names[:4]) + (", ..." if len(names) > 4 else "")


def read_toml(path: FsPath) -> tuple[dict, dict[Path, Source]]:
    """One TOML file and the source of each of its paths; a located error if it is malformed."""
    shown = display_path(path)
    try:
        text = path.read_text(encoding="utf-8-sig")  # a byte-order mark (Windows editors) dropped
    except FileNotFoundError:
        raise single_problem(shown, None, "", "file not found") from None
    except IsADirectoryError:
        raise single_problem(shown, None, "", _folder_not_recipe(path)) from None
    except UnicodeDecodeError as exc:
        before = exc.object[: exc.start]
        line, column = before.count(b"\n") + 1, exc.start - (before.rfind(b"\n") + 1) + 1
        what = f"byte 0x{exc.object[exc.start]:02x} is not UTF-8 (save the recipe as UTF-8)"
        raise single_problem(shown, line, "", what, column) from None
    except OSError as exc:
        raise single_problem(shown, None, "", f"cannot read: {exc}") from None
    return parse_toml(shown, text)


@functools.lru_cache(maxsize=64)
def parse_toml(shown: str, text: str) -> tuple[dict, dict[Path, Source]]:
    """The data of TOML ``text`` (file ``shown``) and the source of each of its paths.

    Cached by content: ``wmtp validate recipes/*.toml`` reads ``base.toml`` once per recipe.
    Callers must not mutate what it returns (``load_tree`` and ``merge`` only read it).
    """
    try:
        data = _toml.loads(text)
    except _toml.TOMLDecodeError as exc:
        line, column = _toml_error_position(exc)
        twice = defined_twice(text, line) if line else None
        if twice:
            path, first, second = twice
            message = f"given twice (first at line {first.line}): keep one"
            raise single_problem(shown, line, dotted(path), message, second.column) from None
        message = str(exc).split(" (at ")[0]
        raise single_problem(shown, line, "", f"TOML syntax error: {message}", column) from None
    positions = key_positions(text)
    sources = {p: Source("file", shown, pos.line, pos.column) for p, pos in positions.items()}
    return data, sources


def _toml_error_position(exc: Exception) -> tuple[int | None, int | None]:
    line, column = getattr(exc, "lineno", None), getattr(exc, "colno", None)
    if line is None:  # Python < 3.14 only has the position in the message
        import re

        found = re.search(r"at line (\d+), column (\d+)", str(exc))
        if found:
            line, column = int(found[1]), int(found[2])
    return line, column


def single_problem(
    file: str, line: int | None, key: str, message: str, column: int | None = None
) -> RecipeProblems:
    """A report of one problem that stops loading (syntax, a missing file, a cycle)."""
    return RecipeProblems(
        file, [Problem(file, line, column or (1 if line else None), key, message)]
    )


def resolve_file(path: os.PathLike | str) -> FsPath:
    """A recipe path, or a run directory holding the ``recipe.toml`` it was run with."""
    path = FsPath(path)
    if path.is_dir() and (path / "recipe.toml").exists():  # a folder there: said when read
        return path / "recipe.toml"
    return path


# --- extends -----------------------------------------------------------------------------------


def load_tree(path: os.PathLike | str, _chain: tuple[FsPath, ...] = ()) -> tuple[Tree, list[str]]:
    """The merged data of ``path`` and everything it extends, and the files read."""
    given = FsPath(path)
    if given.is_symlink() and not given.exists():  # runs/x/latest of a deleted run, say
        target = os.readlink(given)
        raise single_problem(str(given), None, "", f"a symlink to {target}, which does not exist")
    path = given.resolve()
    if not path.exists():  # a pipe (`wmtp validate <(wmtp show ...)`): its /dev/fd name is read
        path = given.absolute()
    data, sources = read_toml(path)
    tree, files = Tree({}, {}), [display_path(path)]
    for base, extends_at in _bases(data, sources, path):
        _check_base(base, (*_chain, path), extends_at)
        try:
            base_tree, base_files = load_tree(base, (*_chain, path))
        except RecipeProblems as exc:  # said as a problem of the recipe given
            problems = [_read_because(p, base, extends_at) for p in exc.problems]
            raise RecipeProblems(display_path(path), problems) from None
        merge(tree, base_tree.data, base_tree.sources)
        files += [f for f in base_files if f not in files]
    merge(tree, {k: v for k, v in data.items() if k != "extends"}, sources)
    return tree, files


def _check_base(base: FsPath, chain: tuple[FsPath, ...], extends_at: Source | None) -> None:
    """A base that is no recipe file, or one already being read: said at the ``extends`` that
    names it (``chain``: the recipe given, then each base down to the one extending ``base``)."""
    if base in chain:
        what = "extends cycle: " + " -> ".join(display_path(p) for p in (*chain, base))
    elif base.is_dir():
        what = f"extended recipe is a folder, not a recipe: {display_path(base)}"
    elif not base.is_file():
        what = f"extended recipe not found: {display_path(base)}"
    else:
        return
    raise RecipeProblems(display_path(chain[-1]), [problem_at(extends_at, "extends", what)])


def _read_because(problem: Problem, base: FsPath, extends_at: Source | None) -> Problem:
    """A problem of reading ``base`` itself (its syntax, its encoding) with the ``extends`` that
    had it read: a file no one meant as a recipe (``extends = "notes.txt"``) says why it is read."""
    if problem.file != display_path(base) or problem.key or extends_at is None:
        return problem
    return dataclasses.replace(problem, message=f"{problem.message} (extended at {extends_at})")


def _bases(
    data: dict, sources: dict[Path, Source], path: FsPath
) -> list[tuple[FsPath, Source | None]]:
    """The recipes ``path`` extends, each with where its name is written."""
    extends = data.get("extends")
    if extends is None:
        return []
    names = [extends] if isinstance(extends, str) else extends
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
        where = sources.get(("extends",))
        raise RecipeProblems(
            display_path(path),
            [problem_at(where, "extends", "extends must be a file name or a list of them")],
        )
    where = sources.get(("extends",))
    return [
        ((path.parent / name).resolve(), sources.get(("extends", i), where))
        for i, name in enumerate(names)
    ]


def problem_at(source: Source | None, key: str, message: str, **extra: Any) -> Problem:
    """A problem located where ``source`` says (a file position, or the ``--set`` argument)."""
    if source is None or source.kind == "default":
        return Problem(None, None, None, key, message, **extra)
    if source.kind == "cli":
        return Problem(None, None, None, key, message, origin=str(source), **extra)
    return Problem(source.file, source.line, source.column, key, message, **extra)


# --- merging -----------------------------------------------------------------------------------


def merge(tree: Tree, data: dict, sources: dict[Path, Source], prefix: Path = ()) -> None:
    """Merge ``data`` (with its ``sources``) into ``tree`` at ``prefix``; ``data`` wins."""
    target = _table_at(tree.data, prefix)
    for a, b in EXCLUSIVE_KEYS.get(prefix, ()):
        for mine, other in ((a, b), (b, a)):
            if mine in data and other not in data and other in target:
                del target[other]
                _drop_sources(tree, (*prefix, other))
    for key, value in data.items():
        path = (*prefix, key)
        old = target.get(key)
        if isinstance(value, dict) and isinstance(old, dict) and not _kind_changed(old, value):
            if path in sources:
                tree.sources[path] = sources[path]
            merge(tree, value, sources, path)
            continue
        _drop_sources(tree, path)
        target[key] = copy.deepcopy(value)
        tree.sources.update({p: s for p, s in sources.items() if p[: len(path)] == path})


def _kind_changed(old: dict, new: dict) -> bool:
    return "kind" in new and "kind" in old and new["kind"] != old["kind"]


def _table_at(data: dict, prefix: Path) -> dict:
    for key in prefix:
        data = data.setdefault(key, {})
    return data


def _drop_sources(tree: Tree, path: Path) -> None:
    for p in [p for p in tree.sources if p[: len(path)] == path]:
        del tree.sources[p]


# --- --set overrides ----------------------------------------------------------------------------


def parse_override(text: str) -> tuple[Path, Any]:
    """``"training.lr=2e-5"`` -> ``(("training", "lr"), 2e-5)``; the value is read as TOML, and
    a bare word that is not TOML (``sdpa``) as a string."""
    key, sep, raw = text.partition("=")
    key, raw = key.strip(), raw.strip()
    if not sep or not key:
        raise override_problem(text, key, f"expected KEY=VALUE, got {text!r}")
    try:
        path = parse_dotted_key(key)
    except ValueError as exc:
        raise override_problem(text, key, str(exc)) from None
    if path[0] == "extends":  # resolved before any --set, and written into every run's recipe
        raise override_problem(
            text, key,
            "extends names the recipes a recipe file builds on; write it in the file (or give "
            "the other recipe as RECIPE), not with --set",
        )  # fmt: skip
    try:
        value = _toml.loads(f"v = {raw}")["v"]
    except _toml.TOMLDecodeError as exc:
        if raw[:1] in ("[", "{"):  # an array or table, not a bare word: its quotes were lost
            why = str(exc).split(" (at ")[0]
            raise override_problem(
                text, key,
                f"{raw} is not a TOML value ({why}); a shell drops the quotes inside it unless "
                f"the whole argument is quoted: --set '{key}={_quoted_words(raw)}'",
            ) from None  # fmt: skip
        value = raw
    return path, value


def override_problem(text: str, key: str, message: str) -> RecipeProblems:
    """A ``--set`` argument (``text``) that cannot apply, said where ``--set`` values are."""
    problem = Problem(None, None, None, key, message, origin=f"--set {text}")
    return RecipeProblems("--set", [problem])


def _quoted_words(raw: str) -> str:
    """``[humaneval, mbpp]`` -> ``["humaneval", "mbpp"]``, ``{kind=td}`` -> ``{kind="td"}``:
    what a flat array or table whose quotes the shell removed most likely was (each item, or
    table value, that is not TOML by itself quoted); ``...`` inside anything else."""
    inner = raw[1:-1]
    closing = {"[": "]", "{": "}"}[raw[0]]
    if raw[-1:] != closing or any(c in inner for c in "[]{}"):
        return raw[0] + "..." + closing
    items = [item.strip() for item in inner.split(",")]
    if raw[0] == "[":
        return "[" + ", ".join(map(_toml_or_string, items)) + "]"
    pairs = [item.partition("=") for item in items]
    return "{" + ", ".join(f"{k.strip()} = {_toml_or_string(v.strip())}" for k, _, v in pairs) + "}"


def _toml_or_string(text: str) -> str:
    try:
        _toml.loads(f"v = {text}")
    except _toml.TOMLDecodeError:
        return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'
    return text


def apply_overrides(tree: Tree, overrides: Iterable[str]) -> None:
    """Apply ``--set`` overrides as one layer over the recipe: the overrides merge among
    themselves in order (a later one wins at its key), then the layer merges over the recipe as
    a recipe over what it extends. So ``--set training.schedule.warmup_steps=3 --set
    training.schedule.kind=linear`` keeps the 3 in either order: a changed ``kind`` replaces
    the recipe's table, not what the command line set in it."""
    layer = Tree({}, {})
    for text in overrides:
        path, value = parse_override(text)
        _check_parents(text, path, layer.data, tree.data)
        nested, nested_sources = _nest(path, value, Source("cli", text=text))
        merge(layer, nested, nested_sources)
    merge(tree, layer.data, layer.sources)


def _check_parents(text: str, path: Path, *tables: dict) -> None:
    """A RecipeProblems naming the ``--set`` whose dotted key runs through a value that is not a
    table, in the overrides before it or, where they set none, in the recipe."""
    for depth, part in enumerate(path[:-1]):
        found = [table[part] for table in tables if part in table][:1]
        if found and not isinstance(found[0], dict):
            message = f"{dotted(path[: depth + 1])!r} is not a table"
            raise override_problem(text, dotted(path), message)
        tables = tuple(table[part] for table in tables if isinstance(table.get(part), dict))


def _nest(path: Path, value: Any, source: Source) -> tuple[dict, dict[Path, Source]]:
    data: Any = value
    for part in reversed(path):
        data = {part: data}
    sources = {path: source}
    if isinstance(value, dict):
        sources.update({(*path, *sub): source for sub in _all_paths(value)})
    return data, sources


def _all_paths(data: dict, prefix: Path = ()) -> list[Path]:
    paths = []
    for key, value in data.items():
        paths.append((*prefix, key))
        if isinstance(value, dict):
            paths += _all_paths(value, (*prefix, key))
    return paths


# --- the entry point ---------------------------------------------------------------------------


def load_recipe(
    path: os.PathLike | str, overrides: Sequence[str] = (), *, evaluating: bool = False
) -> LoadedRecipe:
    """Read, merge, override and validate a recipe (or the recipe of a run directory).

    ``evaluating``: read to evaluate the weights it trained (``wmtp eval RUN``), so the rules
    of settings only training reads (``data.max_length``) are not checked.
    Raises ``RecipeProblems`` (a ``RecipeError``) listing every problem, each located.
    """
    from wmtp.recipe.validate import provenance_of, validate_tree

    file = resolve_file(path)
    tree, files = load_tree(file)
    try:
        apply_overrides(tree, overrides)
    except RecipeProblems as exc:
        raise exc.of_recipe(display_path(file)) from None
    recipe = validate_tree(tree, display_path(file), evaluating=evaluating)
    return LoadedRecipe(recipe, provenance_of(recipe, tree), str(path), tuple(files))
