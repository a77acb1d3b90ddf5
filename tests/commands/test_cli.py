"""The command line's assembly: the command table, and the light path of ``wmtp validate``."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from wmtp.cli import COMMANDS, build_app, module_of

REPO = Path(__file__).resolve().parents[2]

HEAVY = (
    "torch",
    "numpy",
    "rich",
    "transformers",
    "safetensors",
    "tensorboard",
    "tokenizers",
    "sentencepiece",
    "matplotlib",
)
"""Modules ``wmtp validate`` must not import (nor any of their submodules)."""

CONSOLE_SCRIPT = """
import sys
from wmtp.cli import main
sys.argv = ["wmtp", *sys.argv[1:]]
try:
    main()
except SystemExit as exit:
    code = exit.code
roots = {name.split(".")[0] for name in sys.modules}
print("HEAVY", sorted(roots & {heavy}))
print("COMMANDS", sorted(m for m in sys.modules if m.startswith("wmtp.commands.")))
print("EXIT", code)
"""


def run_console_script(*args: str) -> dict[str, str]:
    probe = CONSOLE_SCRIPT.replace("{heavy}", repr(set(HEAVY)))
    result = subprocess.run(
        [sys.executable, "-c", probe, *args], cwd=REPO, capture_output=True, text=True, check=False
    )
    lines = [line.split(" ", 1) for line in result.stdout.splitlines()[-3:]]
    return {key: value for key, value in lines}


@pytest.mark.parametrize("module", list(COMMANDS))
def test_the_table_names_what_each_module_registers(module):
    app = build_app([module])
    names = [c.name for c in app.registered_commands] + [g.name for g in app.registered_groups]
    assert tuple(names) == COMMANDS[module]


def test_module_of_a_command_line():
    assert module_of(["validate", "recipes/tiny.toml"]) == "wmtp.commands.recipe"
    assert module_of(["bench", "attention"]) == "wmtp.commands.bench"
    assert module_of(["run", "--help"]) == "wmtp.commands.run"
    assert module_of(["--help"]) is None
    assert module_of(["validat"]) is None  # the full app suggests the right name
    assert module_of([]) is None


def test_validate_imports_no_heavy_module_and_no_other_area():
    recipes = sorted(str(p.relative_to(REPO)) for p in (REPO / "recipes").glob("*.toml"))
    found = run_console_script("validate", *recipes)
    assert found == {
        "HEAVY": "[]",
        # Typer-free (wmtp.commands._validate.fast_main): not even the recipe commands' module
        "COMMANDS": "['wmtp.commands._output', 'wmtp.commands._validate']",
        "EXIT": "0",
    }


def test_an_invalid_recipe_still_reports_through_rich(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text('[experiment]\nname = "x"\npipeline = "baseline"\nsed = 1\n')
    found = run_console_script("validate", str(bad))
    assert found["EXIT"] == "2"
    assert found["HEAVY"] == "['rich']"  # error messages are rich markup; only then


def test_single_command_modules_stay_subcommands():
    app = build_app(["wmtp.commands.run"])
    result = CliRunner().invoke(app, ["run", "--help"])
    assert result.exit_code == 0, result.output
    assert "run [OPTIONS]" in result.output


@pytest.mark.parametrize("args", [[], ["run"], ["validate"], ["bench", "step"], ["data", "index"]])
def test_h_is_help_for_every_command(args):
    """`-h` as `--help`, for the app, its commands and its groups' commands, the console script's
    way (validate first tries its Typer-free path)."""

    def shown(flag: str) -> subprocess.CompletedProcess:
        command = [sys.executable, "-m", "wmtp.cli", *args, flag]
        env = {**os.environ, "COLUMNS": "100"}
        return subprocess.run(command, cwd=REPO, capture_output=True, text=True, env=env)

    short, long = shown("-h"), shown("--help")
    assert short.returncode == 0 and short.stdout == long.stdout, short.stderr[-2000:]
    assert "Usage: " in short.stdout and "[OPTIONS]" in short.stdout


def wmtp_into(write: int, *args: str, stderr: Any = subprocess.PIPE) -> subprocess.Popen:
    """``wmtp ARGS`` started with stdout the pipe end ``write`` (closed here)."""
    started = subprocess.Popen(
        [sys.executable, "-m", "wmtp.cli", *args],
        cwd=REPO,
        stdout=write,
        stderr=stderr,
        text=True,
        env=dict(os.environ, WMTP_NO_CACHE="1"),
    )
    os.close(write)
    return started


@pytest.mark.parametrize("args", [["validate", "recipes/tiny.toml"], ["list"], ["--help"]])
def test_a_reader_gone_before_the_first_write_changes_nothing(args):
    """The pipe's reader leaves before wmtp writes, so every write fails with EPIPE, whichever
    writes it: the Typer-free validate (print), a Typer command (click's echo), help (rich).
    The output is dropped and the command ends as it would have: exit 0, nothing said."""
    read, write = os.pipe()
    os.close(read)
    started = wmtp_into(write, *args)
    _, stderr = started.communicate()
    assert (started.returncode, stderr) == (0, "")


def test_list_into_a_reader_that_closes_after_one_line_ends_as_it_would_have():
    """``wmtp list | head -1``: the reader takes the first line and closes the pipe while wmtp
    still writes (the pipe holds one page, ``wmtp list`` writes more), as ``head`` does."""
    import fcntl

    read, write = os.pipe()
    fcntl.fcntl(write, fcntl.F_SETPIPE_SZ, 4096)  # wmtp blocks on a full pipe, then the close
    started = wmtp_into(write, "list")
    first = b""
    while not first.endswith(b"\n"):  # one byte at a time: nothing past the line is read
        first += os.read(read, 1)
    os.close(read)
    _, stderr = started.communicate(timeout=120)
    assert first.strip() and (started.returncode, stderr) == (0, "")


def test_a_training_run_whose_reader_went_away_trains_to_the_end(tmp_path):
    """``wmtp run recipe.toml 2>&1 | head -2``: the reader of both streams leaves at once; the
    run still prepares its data, trains every step and saves its checkpoint, exit 0."""
    from tests.data.data_rows import problem_rows, write_dataset

    train = write_dataset(tmp_path / "train.jsonl", problem_rows(8, 2, 1))
    read, write = os.pipe()
    os.close(read)
    started = wmtp_into(
        write, "run", "recipes/tiny.toml", "--set", "training.max_steps=3",
        "--set", "training.schedule.warmup_steps=1",
        "--set", f"data={{kind='jsonl', path='{train}', max_length=1024}}",
        "--set", f"experiment.runs_dir='{tmp_path / 'runs'}'",
        stderr=subprocess.STDOUT,
    )  # fmt: skip
    assert started.wait(timeout=600) == 0
    assert (tmp_path / "runs" / "tiny" / "latest" / "checkpoints" / "step-3").is_dir()


@pytest.mark.parametrize("group", [[], ["bench"], ["data"]])
def test_command_lists_give_each_summary_as_one_sentence_flow(group):
    """A command list wraps each entry's first docstring paragraph to the terminal, never at
    the docstring's own line breaks (which cut ``report`` and ``bench decode`` mid-sentence)."""
    import inspect

    from typer.main import get_command

    app = build_app(list(COMMANDS))
    click_group = get_command(app)
    for name in group:
        click_group = click_group.commands[name]
    wide = CliRunner().invoke(app, [*group, "--help"], terminal_width=400, env={"COLUMNS": "400"})
    assert wide.exit_code == 0, wide.output
    for name, cmd in click_group.commands.items():
        summary = " ".join(inspect.cleandoc(cmd.help or "").split("\n\n")[0].split())
        summary = summary.replace("\\[", "[")  # rich markup's escape, printed as "["
        (row,) = [line for line in wide.output.splitlines() if line.startswith(f"│ {name} ")]
        assert summary in row, (name, row)


def test_a_commands_help_flows_each_paragraph_to_the_terminal():
    """`wmtp run --help` at 80 columns: the docstring's own line breaks are gone, so no line of
    the description stops after a word or two (it had: 'resolved recipe,' alone on a line)."""
    done = subprocess.run(
        [sys.executable, "-m", "wmtp.cli", "run", "--help"],
        cwd=REPO, capture_output=True, text=True, env={**os.environ, "COLUMNS": "80"},
    )  # fmt: skip
    description = done.stdout.split("╭")[0]
    assert "holds the resolved recipe, fingerprint" in " ".join(description.split())
    lines = [line.strip() for line in description.splitlines() if line.strip()]
    paragraph_ends = {i for i, line in enumerate(lines) if line.endswith(".")}
    assert all(len(line) > 60 for i, line in enumerate(lines[1:-1], 1) if i not in paragraph_ends)


@pytest.mark.parametrize("command", ["eval", "export", "run"])
def test_help_read_through_a_pipe_cuts_no_description_short(command):
    """`wmtp eval --help | less` or into a file: rich's 80 columns cut options' descriptions
    with "…" (eval's --out lost its defaults); off a terminal the help is as wide as it needs."""
    env = {k: v for k, v in os.environ.items() if k != "COLUMNS"}
    done = subprocess.run(
        [sys.executable, "-m", "wmtp.cli", command, "--help"],
        cwd=REPO, capture_output=True, text=True, env=env,
    )  # fmt: skip
    assert done.returncode == 0 and "…" not in done.stdout, done.stdout
    if command == "eval":
        assert "<runs_dir>/<experiment>/eval for a pretrained model" in done.stdout


def test_version_is_printed_by_the_console_script():
    import subprocess
    import sys

    import wmtp

    done = subprocess.run(
        [sys.executable, "-c", "import sys; from wmtp.cli import main; sys.argv[0] = 'wmtp'; main()",
         "--version"],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert done.returncode == 0 and done.stdout == f"wmtp {wmtp.__version__}\n", done.stderr


def test_a_warning_logged_after_a_command_in_the_same_process_reaches_stderr_as_it_is_now(
    capsys, monkeypatch
):
    # a notebook: a command, then library code in the same process. The command's console log
    # must not stay bound to the stderr its runner gave it (closed once the command returned).
    root = logging.getLogger()
    monkeypatch.setattr(root, "handlers", [])
    monkeypatch.setattr(root, "level", root.level)
    result = CliRunner().invoke(build_app(), ["validate", str(REPO / "recipes" / "tiny.toml")])
    assert result.exit_code == 0, result.output
    logging.getLogger("wmtp.notebook").warning("after the command")
    assert capsys.readouterr().err == "warning: after the command\n"
