"""`wmtp validate --format json`: every outcome is one JSON document on stdout, a usage error
(no recipes given and none in recipes/, an option's bad value, an unknown option) included, in
the shape of its other errors, exit 2; without it, usage errors keep Typer's message."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from wmtp.errors import WmtpError

NO_RECIPES = "Invalid value: no recipes given and none in recipes/"


def wmtp(cwd: Path, *args: str) -> subprocess.CompletedProcess:
    """``wmtp ARGS`` as the console script runs it (its Typer-free path first), in ``cwd``."""
    code = "import sys, runpy; sys.argv = ['wmtp', *sys.argv[1:]]; "
    code += "runpy.run_module('wmtp.cli', run_name='__main__')"
    return subprocess.run(
        [sys.executable, "-c", code, *args], cwd=cwd, capture_output=True, text=True, timeout=120
    )


@pytest.mark.parametrize("json_option", [["--format", "json"], ["--format=json"]])
@pytest.mark.parametrize(
    "args, message",
    [
        ([], NO_RECIPES),
        (
            ["r.toml", "--world-size", "0"],
            "Invalid value for '--world-size' / '-n': Input should be greater than or equal to 1",
        ),
        (["r.toml", "--bogus"], "No such option: --bogus"),
    ],
    ids=["no recipes", "bad value", "unknown option"],
)
def test_a_usage_error_is_json_on_stdout(tmp_path, json_option, args, message):
    done = wmtp(tmp_path, "validate", *json_option, *args)  # tmp_path holds no recipes/
    assert done.returncode == 2, done.stderr
    said = json.loads(done.stdout)
    assert said == {"error": "UsageError", "message": message}
    assert set(said) == set(WmtpError("").to_json())  # the shape of the command's other errors
    assert done.stderr == ""


def test_without_json_a_usage_error_is_typers_message(tmp_path):
    done = wmtp(tmp_path, "validate")
    assert done.returncode == 2 and done.stdout == ""
    assert NO_RECIPES in done.stderr and "Usage: wmtp validate" in done.stderr
