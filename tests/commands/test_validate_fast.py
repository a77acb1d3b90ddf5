"""``wmtp validate`` runs without Typer first (``wmtp.commands._validate.fast_main``): it must
print and exit exactly as the Typer command does, and hand over what it does not handle."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from typer.testing import CliRunner

from wmtp.cli import app
from wmtp.commands._validate import fast_main

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def bad(tmp_path) -> str:
    path = tmp_path / "bad.toml"
    text = f'extends = "{REPO / "recipes" / "tiny.toml"}"\n[training]\nlr = -1.0\n'
    path.write_text(textwrap.dedent(text))
    return str(path)


CASES = [
    [],
    ["recipes/tiny.toml", "recipes/critic.toml", "--world-size", "4"],
    ["--format", "json", "recipes/verifiable.toml", "-n", "2"],
    ["recipes/tiny.toml", "--set", "training.micro_batch_size=3", "--set", "data.max_length=512"],
    ["recipes/tiny.toml", "--set", "training.lr=-1"],
    ["recipes/tiny.toml", "--set", "training.lr=-1", "--format", "json"],
    ["BAD"],
]


@pytest.mark.parametrize("argv", CASES, ids=lambda a: " ".join(a) or "default")
def test_the_fast_path_prints_and_exits_as_typer(argv, bad, monkeypatch, capsys, tmp_path):
    monkeypatch.chdir(REPO)
    monkeypatch.setenv("WMTP_CACHE_DIR", str(tmp_path / "cache"))
    argv = [bad if a == "BAD" else a for a in argv]
    typer_run = CliRunner().invoke(app, ["validate", *argv])
    for _ in ("computed", "cached (when valid)"):
        code = fast_main(argv)
        fast = capsys.readouterr()
        assert code == typer_run.exit_code
        assert fast.out == typer_run.stdout


@pytest.mark.parametrize(
    "argv", [["--help"], ["recipes/tiny.toml", "--world-size", "0"], ["--bogus"], ["nowhere/"]]
)
def test_what_it_does_not_handle_goes_to_typer(argv, monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path if argv == ["nowhere/"] else REPO)
    assert fast_main([] if argv == ["nowhere/"] else argv) is None


def test_the_console_script_never_imports_typer_or_torch_to_validate():
    code = "import sys, runpy; sys.argv = ['wmtp', 'validate']; runpy.run_module('wmtp.cli', run_name='__main__')"
    probe = f"{code}"
    done = subprocess.run(
        [sys.executable, "-X", "importtime", "-c", probe], cwd=REPO, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr[-2000:]
    imported = {line.split("|")[-1].strip() for line in done.stderr.splitlines() if "|" in line}
    assert "typer" not in imported and "torch" not in imported and "rich" not in imported


def _validate(cwd: Path, cache: Path, *paths: str) -> subprocess.CompletedProcess:
    """``wmtp validate PATHS`` in a fresh process, with the modules it imported (-X importtime)."""
    code = "import sys, runpy; sys.argv = ['wmtp', 'validate', *sys.argv[1:]]; "
    code += "runpy.run_module('wmtp.cli', run_name='__main__')"
    env = {**os.environ, "WMTP_CACHE_DIR": str(cache)}
    return subprocess.run(
        [sys.executable, "-X", "importtime", "-c", code, *paths],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
    )


def _imported(done: subprocess.CompletedProcess) -> set[str]:
    return {line.split("|")[-1].strip() for line in done.stderr.splitlines() if "|" in line}


def test_a_repeated_validation_is_read_back_until_a_file_it_read_changes(tmp_path):
    base = tmp_path / "base.toml"
    base.write_text((REPO / "recipes" / "tiny.toml").read_text().replace("#:schema", "# was"))
    child = tmp_path / "child.toml"
    child.write_text('extends = "base.toml"\n[training]\nmicro_batch_size = 3\n')
    cache = tmp_path / "cache"
    first, second = (_validate(tmp_path, cache, "child.toml") for _ in range(2))
    assert first.returncode == second.returncode == 0
    assert first.stdout == second.stdout and "3 x 1 accum" in first.stdout
    assert "pydantic" in _imported(first) and "pydantic" not in _imported(second)
    base.write_text(base.read_text().replace("max_steps = 120", "max_steps = 70"))  # the base
    third, fourth = (_validate(tmp_path, cache, "child.toml") for _ in range(2))
    assert "pydantic" in _imported(third) and "pydantic" not in _imported(fourth)
    child.write_text(child.read_text().replace("= 3", "= 5"))
    fifth = _validate(tmp_path, cache, "child.toml")
    assert "pydantic" in _imported(fifth) and "5 x 1 accum" in fifth.stdout


def test_an_invalid_report_is_never_kept(tmp_path, bad):
    cache = tmp_path / "cache"
    for _ in range(2):
        done = _validate(REPO, cache, bad)
        assert done.returncode == 2 and "pydantic" in _imported(done)


def test_a_tokenizer_file_edited_inside_the_folder_a_recipe_names_is_read_again(tmp_path):
    """``tokenizer.path`` naming a folder: the cache saw only the folder's listing, and kept
    saying ``ok`` for a tokenizer.json damaged since."""
    from tokenizers import Tokenizer, models

    folder = tmp_path / "tok"
    folder.mkdir()
    Tokenizer(models.WordLevel({"<s>": 0, "</s>": 1, "a": 2}, unk_token="a")).save(
        str(folder / "tokenizer.json")
    )
    recipe = tmp_path / "r.toml"
    tiny = REPO / "recipes" / "tiny.toml"
    recipe.write_text(f"extends = '{tiny}'\n[tokenizer]\nkind = 'hf'\npath = '{folder}'\n")
    cache = tmp_path / "cache"
    first, second = (_validate(REPO, cache, str(recipe)) for _ in range(2))
    assert first.returncode == second.returncode == 0, first.stdout + first.stderr[-2000:]
    assert "pydantic" not in _imported(second)  # read back
    (folder / "tokenizer.json").write_text("garbage")
    third = _validate(REPO, cache, str(recipe))
    assert third.returncode == 2 and "tokenizer.json: not a tokenizer.json" in third.stderr
