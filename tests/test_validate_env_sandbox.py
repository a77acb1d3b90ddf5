"""`wmtp validate --env` of a training recipe whose built-in HumanEval is not built yet: `wmtp
run` labels its candidates in the sandbox once the model is built, so where bubblewrap cannot
run, validate says so first, at `data.cache_dir`, and exits 2 (as the run would stop)."""

from __future__ import annotations

import subprocess
import sys

from tests.sandbox.isolations import REPO, child_env, path_without_bwrap
from wmtp.data import humaneval


def validate_env(tmp_path, cache, **env: str) -> subprocess.CompletedProcess:
    recipe = REPO / "recipes" / "tiny.toml"
    args = ["validate", "--env", str(recipe), "--set", f"data.cache_dir={cache}"]
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
    assert "WMTP_SANDBOX=rlimits" in flat and "Traceback" not in done.stderr
    assert not cache.exists()  # validate builds nothing


def test_a_humaneval_build_that_runs_no_code_or_runs_it_under_rlimits_can(tmp_path):
    cache = tmp_path / "he"
    opted_in = validate_env(tmp_path, cache, WMTP_SANDBOX="rlimits")
    assert opted_in.returncode == 0, opted_in.stdout + opted_in.stderr
    assert "tiny.toml: ok" in opted_in.stdout
    cache.mkdir()
    (cache / f"labelled-v{humaneval.VERSION}.jsonl").write_text(
        ""
    )  # labels kept beside: the build reads them
    labelled = validate_env(tmp_path, cache)
    assert labelled.returncode == 0, labelled.stdout + labelled.stderr
    assert "tiny.toml: ok" in labelled.stdout
