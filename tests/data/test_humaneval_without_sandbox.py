"""`wmtp run` of a recipe over the built-in HumanEval, not built yet, where the sandbox that labels
its candidates cannot run (no bubblewrap, for real: a PATH without it): the start stops with the
problem located at `data.cache_dir`, where `wmtp validate --env` says it, with what failed and
the ways out; exit 2, no traceback, no run directory and nothing in the cache folder. The start
says it before it builds the models (minutes at 7B), as the dataset's builder would after them.
Each through the real CLI in a subprocess (seconds)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from tests.sandbox.isolations import REPO, child_env, path_without_bwrap
from wmtp.data import humaneval

TINY = REPO / "recipes" / "tiny.toml"


def _wmtp_run(tmp_path: Path, recipe: Path, *args: str) -> tuple[int, str]:
    """``wmtp run RECIPE ARGS`` where ``bwrap`` is not found: its exit code and its output with
    line breaks undone (a located message reads whatever the width)."""
    done = subprocess.run(
        [sys.executable, "-m", "wmtp.cli", "run", str(recipe), *args],
        env=child_env(path_without_bwrap(tmp_path), OMP_NUM_THREADS="1"),
        cwd=tmp_path, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    return done.returncode, " ".join((done.stdout + done.stderr).split())


def _ways_out(built: Path) -> list[str]:
    return [
        "apt-get install bubblewrap",
        "--sandbox rlimits",
        "does not block network access",  # what opting in to rlimits gives up
        f"`{humaneval.build_command(built, 0.1)}`",
    ]


def _nothing_left(runs: Path, cache: Path) -> None:
    # stopped before the run directory (and the models) were made: no experiment folder either
    assert not runs.exists() or sorted(runs.iterdir()) == []
    assert not cache.exists() or sorted(cache.iterdir()) == []  # no lock, no half build


def test_the_recipe_file_s_cache_dir_is_named_with_sandbox_bwrap(tmp_path):
    cache, runs = tmp_path / "he", tmp_path / "runs"
    cache.mkdir()  # the user's, empty
    recipe = tmp_path / "recipe.toml"
    recipe.write_text(
        f'extends = "{TINY}"\n[experiment]\nruns_dir = "{runs}"\n[data]\ncache_dir = "{cache}"\n'
    )
    code, output = _wmtp_run(tmp_path, recipe, "--sandbox", "bwrap")
    built = humaneval.built_dir(cache, 0.1)
    assert code == 2, output[-3000:]
    assert f"error: {recipe}: 1 problem" in output, output[-3000:]
    assert (  # the key's line, said from the working directory
        f"recipe.toml:5:1: data.cache_dir: HumanEval is not built in {built} yet, and its build "
        "runs code in the sandbox: --sandbox bwrap but bubblewrap unusable (bwrap is not "
        "installed: not found on PATH); nothing was built" in output
    ), output[-3000:]
    assert all(way in output for way in _ways_out(built)), output[-3000:]
    assert "Traceback" not in output and "keeps its log" not in output, output[-3000:]
    _nothing_left(runs, cache)


def test_a_set_cache_dir_is_named_without_bubblewrap_by_default(tmp_path):
    cache, runs = tmp_path / "he", tmp_path / "runs"
    sets = [f"data.cache_dir={cache}", f"experiment.runs_dir={runs}"]
    code, output = _wmtp_run(tmp_path, TINY, *(a for s in sets for a in ("--set", s)))
    built = humaneval.built_dir(cache, 0.1)
    assert code == 2, output[-3000:]
    assert (
        f"--set data.cache_dir={cache}: data.cache_dir: HumanEval is not built in {built} yet, "
        "and its build runs code in the sandbox: bubblewrap unusable (bwrap is not installed: "
        "not found on PATH)" in output
    ), output[-3000:]
    assert all(way in output for way in _ways_out(built)), output[-3000:]
    assert "Traceback" not in output, output[-3000:]
    _nothing_left(runs, cache)
