"""`wmtp validate --env` where bubblewrap cannot run: a training recipe whose built-in HumanEval
is not built yet (`wmtp run` labels its candidates in the sandbox once the model is built) is
said first, at `data.cache_dir`, in the words `wmtp run` stops with; an evaluation recipe at `evaluation.benchmarks`, whose generated
programs run there. Both exit 2, as the command would stop."""

from __future__ import annotations

import subprocess
import sys

from tests.sandbox.isolations import REPO, child_env, path_without_bwrap
from wmtp.data import humaneval


def validate_env(
    tmp_path, cache, recipe: str = "tiny.toml", **env: str
) -> subprocess.CompletedProcess:
    args = ["validate", "--env", str(REPO / "recipes" / recipe)]
    args += ["--set", f"data.cache_dir={cache}"] if cache is not None else []
    return subprocess.run(
        [sys.executable, "-m", "wmtp.cli", *args],
        env=child_env(path_without_bwrap(tmp_path), WMTP_NO_CACHE="1", **env),
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_a_humaneval_build_without_a_sandbox_cannot_run_here(tmp_path):
    cache = tmp_path / "he"
    done = validate_env(tmp_path, cache)
    flat = " ".join(done.stderr.split())
    assert done.returncode == 2, done.stdout + done.stderr
    assert "valid, but cannot run here" in done.stdout
    assert (
        f"--set data.cache_dir={cache}: data.cache_dir: HumanEval is not built in "
        f"{humaneval.built_dir(cache, 0.1)} yet, and its build runs code in the sandbox: bubblewrap "
        "unusable (bwrap is not installed: not found on PATH)" in flat
    )
    built = humaneval.built_dir(cache, 0.1)  # the ways out `wmtp run` gives, word for word
    assert "--sandbox rlimits (or WMTP_SANDBOX=rlimits)" in flat
    assert f"`{humaneval.build_command(built, 0.1)}`, and bring that folder here" in flat
    assert "Traceback" not in done.stderr
    assert not cache.exists()  # validate builds nothing


def test_a_humaneval_build_that_runs_no_code_or_runs_it_under_rlimits_can(tmp_path):
    cache = tmp_path / "he"
    opted_in = validate_env(tmp_path, cache, WMTP_SANDBOX="rlimits")
    assert opted_in.returncode == 0, opted_in.stdout + opted_in.stderr
    assert "tiny.toml: ok" in opted_in.stdout
    cache.mkdir()
    humaneval.saved_labels(cache).write_text("")  # labels kept beside: the build reads them
    labelled = validate_env(tmp_path, cache)
    assert labelled.returncode == 0, labelled.stdout + labelled.stderr
    assert "tiny.toml: ok" in labelled.stdout


def test_an_evaluation_without_a_sandbox_is_located_at_its_benchmarks(tmp_path):
    done = validate_env(tmp_path, None, "evaluation.toml")
    flat = " ".join(done.stderr.split())
    assert done.returncode == 2, done.stdout + done.stderr
    assert (
        "evaluation.toml:13:1: evaluation.benchmarks: the benchmarks' generated programs run in "
        "the sandbox: bubblewrap unusable (bwrap is not installed: not found on PATH)" in flat
    )
    assert "Traceback" not in done.stderr
