"""The README's "Using a trained model elsewhere": its export commands on a trained tiny run, then
its transformers snippet as written, in a fresh Python process."""

from __future__ import annotations

import re
import shlex
import subprocess
import sys

from tests.export.export_helpers import export
from tests.train.train_helpers import REPO

SECTION = "## Using a trained model elsewhere"


def section() -> str:
    text = (REPO / "README.md").read_text()
    assert SECTION in text
    return text.split(SECTION, 1)[1].split("\n## ", 1)[0]


def blocks(language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", section(), flags=re.S)


def test_the_readme_commands_and_transformers_snippet_run(tiny_run, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    commands = [
        shlex.split(line.split("#")[0])
        for line in blocks("bash")[0].splitlines()
        if line.startswith("wmtp export runs/tiny/latest")
    ]
    assert [c[c.index("--to") + 1] for c in commands] == ["hf", "meta", "wmtp"]
    for command in commands:
        args = [str(tiny_run) if a == "runs/tiny/latest" else a for a in command[2:]]
        result = export(*args)
        assert result.exit_code == 0, result.output

    (snippet,) = blocks("python")
    done = subprocess.run(
        [sys.executable, "-c", snippet], cwd=tmp_path, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.startswith("def fibonacci(n):")
