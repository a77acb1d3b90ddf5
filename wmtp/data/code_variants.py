"""Variants of a Python solution: behaviour-preserving rewrites and small mutations.

Both are *candidates*: the HumanEval builder labels every variant by running it against the
problem's tests in the sandbox, never by how it was made. Mutations edit the source text only at
the mutated node (the rest keeps its formatting), so formatting says nothing about the label;
rewrites that reformat are mutated too, for the same reason.

Only the body of the function named ``entry_point`` is touched (never its signature or docstring),
so a HumanEval prompt stays a prefix of every variant.
"""

from __future__ import annotations

import ast
import copy
import random
from collections.abc import Iterator
from dataclasses import dataclass

# --------------------------------------------------------------------------- text splicing


@dataclass(frozen=True)
class Edit:
    """Replace the source span of ``node`` (start and end positions) with ``text``."""

    start: tuple[int, int]  # (lineno 1-based, col_offset in UTF-8 bytes)
    end: tuple[int, int]
    text: str


def span(node: ast.AST) -> tuple[tuple[int, int], tuple[int, int]]:
    return (node.lineno, node.col_offset), (node.end_lineno, node.end_col_offset)


def apply_edits(source: str, edits: list[Edit]) -> str:
    """``source`` with non-overlapping ``edits`` applied (positions as the ``ast`` gives them)."""
    lines = source.encode("utf-8").splitlines(keepends=True)
    starts = [0]
    for line in lines:
        starts.append(starts[-1] + len(line))
    data = source.encode("utf-8")

    def offset(pos: tuple[int, int]) -> int:
        return starts[pos[0] - 1] + pos[1]

    for edit in sorted(edits, key=lambda e: offset(e.start), reverse=True):
        data = data[: offset(edit.start)] + edit.text.encode("utf-8") + data[offset(edit.end) :]
    return data.decode("utf-8")


def entry_function(tree: ast.Module, entry_point: str) -> ast.FunctionDef | None:
    for node in tree.body:
        if isinstance(node, ast.FunctionDef) and node.name == entry_point:
            return node
    return None


def _body_nodes(func: ast.FunctionDef) -> Iterator[ast.AST]:
    """Every node of the function's body, its docstring excluded."""
    for stmt in _statements(func):
        yield from ast.walk(stmt)


# --------------------------------------------------------------------------- rewrites

FRESH_NAMES = ("acc", "cur", "item", "val", "res", "tmp", "elem", "part", "node", "count")


def rename_locals(source: str, entry_point: str, seed: int = 0) -> str | None:
    """Rename the entry function's local variables (not parameters, globals or names a nested
    scope binds); ``None`` when it has none."""
    tree = ast.parse(source)
    func = entry_function(tree, entry_point)
    if func is None:
        return None
    nested_bound = _names_bound_in_nested_scopes(func)
    params = {a.arg for a in ast.walk(func.args) if isinstance(a, ast.arg)}
    declared = {
        n
        for node in ast.walk(func)
        if isinstance(node, ast.Global | ast.Nonlocal)
        for n in node.names
    }
    stored = {
        n.id for n in _body_nodes(func) if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Store)
    }
    local = sorted(stored - params - declared - nested_bound)
    if not local:
        return None
    taken = {n.id for n in ast.walk(tree) if isinstance(n, ast.Name)} | {
        a.arg for a in ast.walk(tree) if isinstance(a, ast.arg)
    }
    rng = random.Random(seed)
    pool = [n for n in FRESH_NAMES if n not in taken]
    rng.shuffle(pool)
    mapping = {}
    for i, name in enumerate(local):
        mapping[name] = pool[i] if i < len(pool) else f"{name}_{i}"
    edits = [
        Edit(*span(n), mapping[n.id])
        for n in _body_nodes(func)
        if isinstance(n, ast.Name) and n.id in mapping
    ]
    return apply_edits(source, edits)


def _names_bound_in_nested_scopes(func: ast.FunctionDef) -> set[str]:
    bound = set()
    for node in _body_nodes(func):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda | ast.ClassDef):
            for inner in ast.walk(node):
                if isinstance(inner, ast.arg):
                    bound.add(inner.arg)
                elif isinstance(inner, ast.Name) and isinstance(inner.ctx, ast.Store):
                    bound.add(inner.id)
            if not isinstance(node, ast.Lambda):
                bound.add(node.name)
    return bound


def reformat_body(source: str, entry_point: str) -> str | None:
    """The entry function's body (after its docstring) as ``ast.unparse`` writes it: comments
    and blank lines dropped, spacing and quotes normalised; everything before it unchanged."""
    tree = ast.parse(source)
    func = entry_function(tree, entry_point)
    if func is None:
        return None
    body = list(_statements(func))
    if not body:
        return None
    indent = " " * body[0].col_offset
    lines = source.splitlines(keepends=True)
    new_body = "".join(
        indent + line + "\n" for stmt in body for line in ast.unparse(stmt).splitlines()
    )
    return "".join(lines[: body[0].lineno - 1]) + new_body + "".join(lines[func.end_lineno :])


def _statements(func: ast.FunctionDef) -> list[ast.stmt]:
    """The body after the docstring (and whatever precedes it, e.g. an ``import`` above it)."""
    for i, stmt in enumerate(func.body):
        is_string = isinstance(stmt, ast.Expr) and isinstance(stmt.value, ast.Constant)
        if is_string and isinstance(stmt.value.value, str):
            return func.body[i + 1 :]
    return func.body


def add_comments(source: str, entry_point: str) -> str | None:
    """A comment line above the entry function's loops, branches and returns."""
    tree = ast.parse(source)
    func = entry_function(tree, entry_point)
    if func is None:
        return None
    notes = {ast.For: "# go through the items", ast.While: "# repeat until done",
             ast.If: "# check the condition", ast.Return: "# return the answer"}  # fmt: skip
    lines = source.splitlines(keepends=True)
    targets = {}
    for node in _body_nodes(func):
        for kind, note in notes.items():
            if isinstance(node, kind) and node.lineno not in targets:
                line = lines[node.lineno - 1]
                if line.lstrip().startswith(("if", "for", "while", "return")):
                    targets[node.lineno] = line[: len(line) - len(line.lstrip())] + note + "\n"
    if not targets:
        return None
    out = []
    for number, line in enumerate(lines, start=1):
        if number in targets:
            out.append(targets[number])
        out.append(line)
    return "".join(out)


def rewrites(source: str, entry_point: str) -> dict[str, str]:
    """Candidate behaviour-preserving rewrites by name (the source itself excluded). Each
    changes only the entry function's body, so the prompt (signature, docstring) stays a prefix."""
    renamed = rename_locals(source, entry_point)
    out = {
        "renamed": renamed,
        "commented": add_comments(source, entry_point),
        "reformatted": reformat_body(source, entry_point),
        "renamed_reformatted": reformat_body(renamed, entry_point) if renamed else None,
    }
    return {k: v for k, v in out.items() if v is not None and v != source}


# --------------------------------------------------------------------------- mutations

COMPARE_SWAPS = {
    ast.Lt: ast.LtE, ast.LtE: ast.Lt, ast.Gt: ast.GtE, ast.GtE: ast.Gt,
    ast.Eq: ast.NotEq, ast.NotEq: ast.Eq, ast.In: ast.NotIn, ast.NotIn: ast.In,
    ast.Is: ast.IsNot, ast.IsNot: ast.Is,
}  # fmt: skip
ARITH_SWAPS = {
    ast.Add: ast.Sub, ast.Sub: ast.Add, ast.Mult: ast.Add, ast.FloorDiv: ast.Mult,
    ast.Div: ast.Mult, ast.Mod: ast.FloorDiv, ast.Pow: ast.Mult,
}  # fmt: skip


def _expr_edit(node: ast.AST, replacement: ast.AST) -> Edit | None:
    if node.lineno != node.end_lineno:  # keep edits on one line: simple and faithful
        return None
    return Edit(*span(node), ast.unparse(replacement))


def _compare_mutations(node: ast.AST) -> Iterator[tuple[str, Edit | None]]:
    if isinstance(node, ast.Compare):
        for i, op in enumerate(node.ops):
            if type(op) in COMPARE_SWAPS:
                new = copy.deepcopy(node)
                new.ops[i] = COMPARE_SWAPS[type(op)]()
                yield "comparison", _expr_edit(node, new)


def _arith_mutations(node: ast.AST) -> Iterator[tuple[str, Edit | None]]:
    if isinstance(node, ast.BinOp | ast.AugAssign) and type(node.op) in ARITH_SWAPS:
        new = copy.deepcopy(node)
        new.op = ARITH_SWAPS[type(node.op)]()
        yield "arithmetic", _expr_edit(node, new)
    if isinstance(node, ast.BoolOp):
        new = copy.deepcopy(node)
        new.op = ast.Or() if isinstance(node.op, ast.And) else ast.And()
        yield "boolean", _expr_edit(node, new)
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.Not):
        yield "negation", _expr_edit(node, node.operand)


def _off_by_one_mutations(node: ast.AST) -> Iterator[tuple[str, Edit | None]]:
    if isinstance(node, ast.Constant) and type(node.value) is int:
        for delta in (1, -1):
            yield "off_by_one", _expr_edit(node, ast.Constant(node.value + delta))
    if isinstance(node, ast.Constant) and isinstance(node.value, bool):
        yield "boolean", _expr_edit(node, ast.Constant(not node.value))
    is_range = isinstance(node, ast.Call) and getattr(node.func, "id", None) == "range"
    if is_range and node.args:
        last = node.args[-1] if len(node.args) > 1 else node.args[0]
        if not isinstance(last, ast.Constant):
            for op in (ast.Add(), ast.Sub()):
                yield "off_by_one", _expr_edit(last, ast.BinOp(last, op, ast.Constant(1)))


def _statement_mutations(node: ast.AST, lines: list[str]) -> Iterator[tuple[str, Edit | None]]:
    if isinstance(node, ast.Return) and node.value is not None:
        if not (isinstance(node.value, ast.Constant) and node.value.value is None):
            yield "return_value", _expr_edit(node.value, ast.Constant(None))
        if isinstance(node.value, ast.Name | ast.Call | ast.Subscript | ast.Compare):
            yield "return_value", _expr_edit(node.value, ast.UnaryOp(ast.Not(), node.value))
    if isinstance(node, ast.If):
        yield "dropped_branch", Edit(*span(node), "pass")  # the whole if (and its elifs/else)
        if node.orelse:  # keep the if, drop its else/elif part
            last = node.body[-1]
            yield "dropped_branch", Edit((last.end_lineno, last.end_col_offset), span(node)[1], "")
    if isinstance(node, ast.Continue | ast.Break):
        yield "dropped_branch", Edit(*span(node), "pass")


def mutations(source: str, entry_point: str) -> list[tuple[str, str]]:
    """Every single-site mutation of the entry function as (kind, source), distinct, parseable."""
    tree = ast.parse(source)
    func = entry_function(tree, entry_point)
    if func is None:
        return []
    lines = source.splitlines(keepends=True)
    seen, out = {source}, []
    for node in _body_nodes(func):
        for kind, edit in (
            *_compare_mutations(node),
            *_arith_mutations(node),
            *_off_by_one_mutations(node),
            *_statement_mutations(node, lines),
        ):
            if edit is None:
                continue
            mutated = apply_edits(source, [edit])
            if mutated in seen or not _parses(mutated):
                continue
            seen.add(mutated)
            out.append((kind, mutated))
    return out


def _parses(source: str) -> bool:
    try:
        ast.parse(source)
    except SyntaxError:
        return False
    return True


def pick_spread(candidates: list[tuple[str, str]], n: int, seed: int) -> list[tuple[str, str]]:
    """Up to ``n`` candidates, taken round-robin over kinds (in a seeded order) for variety."""
    rng = random.Random(seed)
    by_kind: dict[str, list[tuple[str, str]]] = {}
    for kind, text in candidates:
        by_kind.setdefault(kind, []).append((kind, text))
    queues = [rng.sample(v, len(v)) for _, v in sorted(by_kind.items())]
    rng.shuffle(queues)
    picked = []
    while len(picked) < n and any(queues):
        for queue in queues:
            if queue and len(picked) < n:
                picked.append(queue.pop())
    return picked
