"""``--help`` of every command and group, as the console script prints it: a flag shows no type,
an option that takes a value shows its metavar (``--set KEY=VALUE``, ``--nproc-per-node N``,
``--out DIR``, ``--sandbox [bwrap|rlimits]``), an argument its upper-case name; never Typer's
type names (``<bool>``, ``<list[str]>``, ``<int range>``, ``<path>``).

One subprocess per rendering (rich panels; plain text with ``TYPER_USE_RICH=0``) prints the help
of every command it finds in the app, so a new command is covered without a line here."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from wmtp.cli import COMMANDS

REPO = Path(__file__).resolve().parents[2]

PRINT_EVERY_HELP = r"""
import contextlib, io, json, sys
import typer.main
from wmtp import cli

def paths(command, path=()):
    yield path
    for name, sub in sorted(getattr(command, "commands", {}).items()):  # a group's commands
        yield from paths(sub, (*path, name))

shown = {}
for path in paths(typer.main.get_command(cli.app)):
    sys.argv = ["wmtp", *path, "--help"]
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        try:
            cli.main()  # the console script's entry point
            code = 0
        except SystemExit as exit:
            code = exit.code
    shown[" ".join(["wmtp", *path])] = {"exit": code, "help": out.getvalue()}
print(json.dumps(shown))
"""

RENDERINGS = {"rich": {}, "plain": {"TYPER_USE_RICH": "0"}}
"""The environment of each rendering (a Typer older than 0.24 reads no ``TYPER_USE_RICH``: both
are rich there)."""

FORCED_COLOUR = ("FORCE_COLOR", "PY_COLORS", "GITHUB_ACTIONS", "TYPER_USE_RICH")

TYPE_NAME = re.compile(
    r"<(?:bool|int|float|str|path|text|list\[|tuple|datetime|uuid|file)[^>]*>"  # <int range>
    r"|<[\w.-]+(?:\|[\w.-]+)+>"  # choices written <a|b> (ours read [a|b])
    r"|\bBOOLEAN\b",
    re.IGNORECASE,
)

METAVARS = {
    "wmtp run": {
        "--set": "KEY=VALUE",
        "--resume": "RUN_DIR",
        "--nproc-per-node": "N",
        "--sandbox": "[bwrap|rlimits]",
    },
    "wmtp validate": {"--world-size": "N", "--format": "[text|json]"},
    "wmtp schema": {"--output": "FILE"},
    "wmtp eval": {"--recipe": "FILE", "--out": "DIR"},
    "wmtp report": {"--out": "DIR", "--step": "N"},
    "wmtp export": {"--to": "[hf|meta|wmtp]", "--out": "DIR", "--max-shard-size": "SIZE"},
    "wmtp data humaneval": {"--heldout-fraction": "FRACTION", "--workers": "N"},
    "wmtp bench step": {"--out": "DIR", "--profile": "N"},
    "wmtp bench decode": {"--top-p": "P", "--out": "FILE"},
}
"""Options and the metavar each shows: a sample of every kind (repeatable, path, number, choice)."""

ARGUMENTS = {
    "wmtp run": "RECIPE",
    "wmtp report": "RUNS",
    "wmtp data humaneval": "OUT_DIR",
    "wmtp diff": "A",
}
"""Arguments and the upper-case name ``Usage:`` gives them (the docstrings' ``Train RECIPE``);
the list of arguments shows it with no type beside it (``test_no_help_shows_a_type_name``)."""


def variadic_arguments() -> dict[str, list[str]]:
    """Each command's arguments that take any number of values, by their upper-case name."""
    import typer.main

    from wmtp import cli

    found = {}
    for command, path in _commands(typer.main.get_command(cli.app)):
        params = [p for p in command.params if p.param_type_name == "argument" and p.nargs != 1]
        if params:
            found[" ".join(["wmtp", *path])] = [p.name.upper() for p in params]
    return found


def _commands(command, path=()):
    yield command, path
    for name, sub in sorted(getattr(command, "commands", {}).items()):  # a group's commands
        yield from _commands(sub, (*path, name))


@pytest.fixture(scope="module", params=list(RENDERINGS))
def helps(request) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in FORCED_COLOUR}
    env |= {"COLUMNS": "200", "NO_COLOR": "1", "TERM": "dumb", **RENDERINGS[request.param]}
    done = subprocess.run(
        [sys.executable, "-c", PRINT_EVERY_HELP],
        cwd=REPO, capture_output=True, text=True, env=env, timeout=120, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    shown = json.loads(done.stdout)
    for command, result in shown.items():
        assert result["exit"] == 0 and "Usage:" in result["help"], (command, result)
    return {command: result["help"] for command, result in shown.items()}


def test_every_command_is_shown(helps):
    top = {f"wmtp {name}" for names in COMMANDS.values() for name in names}
    assert top <= set(helps)
    assert {"wmtp", "wmtp bench step", "wmtp data index"} <= set(helps)


def test_no_help_shows_a_type_name(helps):
    found = {cmd: sorted(set(TYPE_NAME.findall(text))) for cmd, text in helps.items()}
    assert {cmd: names for cmd, names in found.items() if names} == {}


def test_help_flag_shows_no_type(helps):
    """``-h``/``--help``, Typer's own flag, straight before its description in every help."""
    flag = re.compile(r"(?:-h,?\s+)?--help(?:\s+-h)?\s+Show this message and exit\.")
    assert [cmd for cmd, text in helps.items() if not flag.search(text)] == []


def test_our_flags_show_no_type(helps):
    assert re.search(r"--dry-run\s+Build every component", helps["wmtp run"])
    assert re.search(r"--version\s+Print the version", helps["wmtp"])
    assert re.search(r"--progress\s+(?:/ )?--no-progress\s+Show progress", helps["wmtp eval"])


@pytest.mark.parametrize("command", list(METAVARS))
def test_options_show_their_metavar(helps, command):
    for option, metavar in METAVARS[command].items():
        shown = re.compile(rf"{re.escape(option)}(?:\s+-\w)?\s+{re.escape(metavar)}(?=\s)")
        assert shown.search(helps[command]), (command, option, metavar, helps[command])


def test_a_range_keeps_its_bounds(helps):
    """``N [x>=1]`` (rich), or the bounds after the description (plain)."""
    assert re.search(r"--nproc-per-node\s+N\s[^[]*\[(?:[^]]*; )?x>=1\]", helps["wmtp run"])


@pytest.mark.parametrize("command", list(ARGUMENTS))
def test_arguments_show_their_name(helps, command):
    name = ARGUMENTS[command]
    usage = helps[command].split("Usage:", 1)[1].split("\n", 1)[0]
    assert re.search(rf"\b{name}\b", usage), usage


def test_variadic_arguments_keep_their_ellipsis(helps):
    """``wmtp report {RUNS}...``, ``wmtp validate [RECIPES]...``: Typer 0.26 to 0.28 dropped the
    ``...`` of an argument given a metavar, as ``_PlainHelp`` gives each."""
    variadic = variadic_arguments()
    assert {"wmtp report", "wmtp validate"} <= set(variadic)
    for command, names in variadic.items():
        usage = helps[command].split("Usage:", 1)[1].split("\n", 1)[0]
        for name in names:
            assert re.search(rf"\b{name}[]}}]?\.\.\.", usage), (command, usage)
