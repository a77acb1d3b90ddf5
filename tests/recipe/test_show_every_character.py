"""`wmtp show` of a recipe whose strings hold a character beyond U+FFFF (an emoji) or DEL: the
TOML it prints (the writer a run's recipe.toml comes from) loads back to the identical recipe,
through the real commands."""

from __future__ import annotations

import subprocess
import sys

from tests.train.train_helpers import REPO, cli

from .conftest import MINIMAL

STRINGS = (
    'pipeline = "baseline"\n'
    'description = "emoji 🚀, math 𝔼[x], DEL \\u007f, é, quote \\", backslash \\\\"\n'
    'tags = ["🚀", "\\u007f"]\n'
)


def test_show_prints_toml_that_loads_back_whatever_the_characters(tmp_path):
    recipe = tmp_path / "r.toml"
    recipe.write_text(MINIMAL.replace('pipeline = "baseline"\n', STRINGS), encoding="utf-8")
    shown = subprocess.run(
        [sys.executable, "-m", "wmtp.cli", "show", recipe],
        cwd=REPO, capture_output=True, text=True, encoding="utf-8", timeout=120,
    )  # fmt: skip
    assert shown.returncode == 0, shown.stderr
    again = tmp_path / "shown.toml"
    again.write_text(shown.stdout, encoding="utf-8")
    code, said = cli("diff", recipe, again)
    assert code == 0 and "are the same recipe" in said, said
