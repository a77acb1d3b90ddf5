"""Rewrites and mutations: what they change, checked on the code itself."""

from __future__ import annotations

import ast

from wmtp.data import code_variants as cv

SOURCE = '''from typing import List


def count_big(numbers: List[int], limit: int) -> int:
    """How many numbers exceed limit."""
    total = 0  # running count

    for value in numbers:
        if value > limit:
            total += 1
        else:
            continue
    return total
'''


def run(source: str, *args):
    namespace: dict = {}
    exec(compile(source, "<variant>", "exec"), namespace)
    return namespace["count_big"](*args)


def test_rewrites_keep_behaviour_and_differ_in_text():
    out = cv.rewrites(SOURCE, "count_big")
    assert {"renamed", "commented", "reformatted", "renamed_reformatted"} <= set(out)
    for name, code in out.items():
        assert code != SOURCE, name
        for args in (([1, 5, 9], 4), ([], 0), ([3, 3], 3)):
            assert run(code, *args) == run(SOURCE, *args), name
    renamed_names = {n.id for n in ast.walk(ast.parse(out["renamed"])) if isinstance(n, ast.Name)}
    assert not {"total", "value"} & renamed_names and {"numbers", "limit"} <= renamed_names
    assert "# go through" in out["commented"]
    assert "# running count" not in out["reformatted"]
    prompt = SOURCE[: SOURCE.index("    total = 0")]  # imports, signature and docstring
    assert all(code.startswith(prompt) for code in out.values())  # the prompt stays a prefix


def test_mutations_touch_one_site_of_the_body_and_parse():
    muts = cv.mutations(SOURCE, "count_big")
    kinds = {k for k, _ in muts}
    assert {"comparison", "arithmetic", "off_by_one", "return_value", "dropped_branch"} <= kinds
    assert len({code for _, code in muts}) == len(muts)
    for kind, code in muts:
        ast.parse(code)
        assert '"""How many numbers exceed limit."""' in code, kind  # docstring untouched
        assert code.splitlines()[:4] == SOURCE.splitlines()[:4], kind  # signature untouched
    assert ("comparison", SOURCE.replace("value > limit", "value >= limit")) in muts
    assert ("arithmetic", SOURCE.replace("total += 1", "total -= 1")) in muts


def test_pick_spread_takes_every_kind_before_repeating_one():
    muts = cv.mutations(SOURCE, "count_big")
    kinds = {k for k, _ in muts}
    picked = cv.pick_spread(muts, len(kinds), seed=0)
    assert {k for k, _ in picked} == kinds
    assert picked == cv.pick_spread(muts, len(kinds), seed=0)


def test_apply_edits_counts_columns_in_utf8_bytes():
    source = 'x = "é"; y = 1\n'
    node = ast.parse(source).body[1].value  # the constant 1
    assert cv.apply_edits(source, [cv.Edit(*cv.span(node), "2")]) == 'x = "é"; y = 2\n'
