"""The key -> line:column index agrees with tomllib on every key of tricky TOML."""

from __future__ import annotations

from wmtp.recipe._toml import loads as toml_loads
from wmtp.recipe.positions import Pos, key_positions

TRICKY = '''\
# comment with = and [brackets]
top = "a # not a comment"
"quoted.key" = 'literal [x]'
[model.policy]   # trailing comment
lora = { rank = 8, targets = ["wq",
  "wk"] }
doc = """multi
[not.a.table]
x = 1 \\""" still inside
"""
after = 1979-05-27 07:32:00
nested.dotted.key = [[1, 2], [3]]
[[runs]]
a = 1
[[runs]]
a.b = { c = true }
'''


def _leaf_paths(data, prefix=()):
    for key, value in data.items():
        path = (*prefix, key)
        yield path
        if isinstance(value, dict):
            yield from _leaf_paths(value, path)
        elif isinstance(value, list) and value and isinstance(value[0], dict):
            for i, item in enumerate(value):
                yield (*path, i)
                yield from _leaf_paths(item, (*path, i))


def test_every_key_tomllib_sees_has_a_position():
    positions = key_positions(TRICKY)
    missing = [p for p in _leaf_paths(toml_loads(TRICKY)) if p not in positions]
    assert missing == []


def test_positions_point_at_the_key():
    positions = key_positions(TRICKY)
    lines = TRICKY.splitlines()
    for path, pos in positions.items():
        if isinstance(path[-1], int):
            continue
        line = lines[pos.line - 1]
        assert path[-1] in line[pos.column - 1 :], (path, pos, line)
    assert positions[("top",)] == Pos(2, 1)
    assert positions[("quoted.key",)] == Pos(3, 1)
    assert positions[("model", "policy", "lora", "rank")] == Pos(5, 10)
    assert positions[("model", "policy", "lora", "targets", 1)] == Pos(6, 3)
    assert positions[("model", "policy", "after")] == Pos(11, 1)
    assert positions[("model", "policy", "nested", "dotted", "key")] == Pos(12, 15)
    assert positions[("runs", 1, "a", "b", "c")] == Pos(16, 9)


def test_no_keys_are_invented_inside_strings():
    positions = key_positions(TRICKY)
    assert not any("not" in path for path in positions)
    assert ("model", "policy", "x") not in positions
