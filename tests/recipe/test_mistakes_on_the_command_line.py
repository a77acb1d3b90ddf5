"""A user's mistakes in a recipe, what it extends and its ``--set`` arguments, through the CLI in
a subprocess run from another folder than the recipe's: each said at file:line:column (or the
``--set`` argument) with its dotted key, under the name of the recipe given, exit 2, no
traceback."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
PRODUCTION = ["base", "baseline", "critic", "verifiable", "ref_tuning", "rho1", "evaluation"]


def wmtp(cwd: Path, *args: str) -> str:
    """``wmtp ARGS`` run in ``cwd``: what it printed, on one line; it must exit 2, untraced."""
    env = {**os.environ, "WMTP_NO_CACHE": "1", "COLUMNS": "200", "PYTHONPATH": str(REPO)}
    done = subprocess.run(
        [sys.executable, "-m", "wmtp.cli", *args],
        cwd=cwd, capture_output=True, text=True, timeout=120, env=env,
    )  # fmt: skip
    shown = " ".join((done.stdout + done.stderr).split())
    assert done.returncode == 2 and "Traceback" not in shown, shown
    return shown


def write(folder: Path, name: str, text: str) -> Path:
    path = folder / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text), encoding="utf-8")
    return path


@pytest.fixture
def recipes(tmp_path) -> Path:
    """``some/dir/``, below the folder the commands run in (``tmp_path``)."""
    return tmp_path / "some" / "dir"


# --- extends ------------------------------------------------------------------------------------


@pytest.mark.parametrize("command", ["validate", "show"])
def test_a_missing_base_is_said_resolved_at_the_extends_line(tmp_path, recipes, command):
    write(recipes, "child.toml", '# mine\n\nextends = "missing.toml"\n')
    shown = wmtp(tmp_path, command, "some/dir/child.toml")
    assert (
        "some/dir/child.toml:3:1: extends: extended recipe not found: some/dir/missing.toml"
        in shown
    )


def test_a_missing_base_of_a_list_is_said_at_its_entry(tmp_path, recipes):
    base = REPO / "recipes" / "base.toml"
    write(recipes, "child.toml", f'extends = [\n  "{base}",\n  "gone.toml",\n]\n')
    shown = wmtp(tmp_path, "validate", "some/dir/child.toml")
    assert (
        "some/dir/child.toml:3:3: extends: extended recipe not found: some/dir/gone.toml" in shown
    )


def test_a_cycle_is_said_at_the_extends_that_closes_it(tmp_path, recipes):
    write(recipes, "a.toml", 'extends = "b.toml"\n')
    write(recipes, "b.toml", '# b\nextends = "a.toml"\n')
    shown = wmtp(tmp_path, "validate", "some/dir/a.toml")
    assert shown.startswith("invalid: some/dir/a.toml: 1 problem"), shown
    cycle = "some/dir/a.toml -> some/dir/b.toml -> some/dir/a.toml"
    assert f"some/dir/b.toml:2:1: extends: extends cycle: {cycle}" in shown


def test_extending_a_folder_is_said_at_the_extends_line(tmp_path, recipes):
    (recipes / "sub").mkdir(parents=True)
    write(recipes, "child.toml", 'extends = "sub"\n')
    shown = wmtp(tmp_path, "validate", "some/dir/child.toml")
    assert "some/dir/child.toml:1:1: extends: extended recipe is a folder" in shown


@pytest.mark.parametrize(
    ("base", "content", "said"),
    [
        ("notes.txt", b"hello world\n", "notes.txt:1:7: TOML syntax error: Expected '='"),
        ("bad.toml", b"[experiment]\nname = \n", "bad.toml:2:8: TOML syntax error: Invalid value"),
        (
            "latin1.toml",
            b'[experiment]\nname = "\xe9"\n',
            "latin1.toml:2:9: byte 0xe9 is not UTF-8",
        ),
    ],
    ids=["not TOML", "invalid TOML", "not UTF-8"],
)
def test_a_base_that_does_not_read_is_said_in_it_with_the_extends_that_read_it(
    tmp_path, recipes, base, content, said
):
    recipes.mkdir(parents=True)
    (recipes / base).write_bytes(content)
    write(recipes, "child.toml", f'# mine\nextends = "{base}"\n')
    shown = wmtp(tmp_path, "validate", "some/dir/child.toml")
    assert shown.startswith("invalid: some/dir/child.toml: 1 problem"), shown  # the recipe given
    assert f"some/dir/{said}" in shown
    assert "(extended at some/dir/child.toml:2:1)" in shown


# --- the recipe file ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "said"),
    [
        (
            '[experiment]\nname = "x"\nname = "y"\n',
            "r.toml:4:1: experiment.name: given twice (first at line 3)",
        ),
        (
            "[training]\nlr = 1.0\n\n[training]\n",
            "r.toml:5:2: training: given twice (first at line 2)",
        ),
        (
            "[model.policy]\nlora = { rank = 4 }\n[model.policy.lora]\n",
            "r.toml:4:2: model.policy.lora: given twice (first at line 3)",
        ),
    ],
    ids=["key", "table", "inline table then table"],
)
def test_a_key_given_twice_is_named_with_its_first_line(tmp_path, text, said):
    write(tmp_path, "r.toml", f'extends = "{REPO / "recipes" / "base.toml"}"\n{text}')
    assert said in wmtp(tmp_path, "validate", "r.toml")


def test_syntax_errors_wrong_tables_bom_empty_files_and_folders_are_located(tmp_path):
    base = REPO / "recipes" / "base.toml"
    write(tmp_path, "syntax.toml", f'extends = "{base}"\n[experiment]\nname = "x\n')
    write(tmp_path, "wrong.toml", f'extends = "{base}"\n[experiment]\nlr = 1e-4\n')
    (tmp_path / "bom.toml").write_bytes(
        b"\xef\xbb\xbf" + f'extends = "{base}"\n[training]\nlr = "x"\n'.encode()
    )
    write(tmp_path, "empty.toml", "")
    (tmp_path / "runs" / "x" / "20250101-000000").mkdir(parents=True)
    args = ["syntax.toml", "wrong.toml", "bom.toml", "empty.toml", "runs/x/20250101-000000"]
    shown = wmtp(tmp_path, "validate", *args)
    assert "syntax.toml:3:10: TOML syntax error" in shown
    assert "wrong.toml:3:1: experiment.lr: unknown key; did you mean 'training.lr'?" in shown
    assert "bom.toml:3:1: training.lr: expected a number greater than 0" in shown
    assert "empty.toml: experiment: missing required table" in shown
    assert "runs/x/20250101-000000: a folder, not a recipe" in shown


def test_a_folder_of_runs_names_its_runs(tmp_path):
    """``runs/critic`` for ``runs/critic/latest``: the folder ``wmtp run`` makes per experiment."""
    run = tmp_path / "runs" / "critic" / "20250101-000000"
    write(run, "recipe.toml", "")
    (run.parent / "latest").symlink_to(run.name)
    shown = wmtp(tmp_path, "validate", "runs/critic")
    assert (
        "runs/critic: a folder of runs, not a run: name one of them (20250101-000000, latest)"
        in shown
    )


# --- --set --------------------------------------------------------------------------------------


def test_set_mistakes_on_every_production_recipe_are_said_at_the_argument():
    sets = [
        "training.grad_acum_steps=2",
        "training.lr=fast",
        "training.micro_batch_size=-1",
        "model.policy.dtype=bf16",
    ]
    recipes = [f"recipes/{name}.toml" for name in PRODUCTION]
    shown = wmtp(REPO, "validate", *recipes, *(a for s in sets for a in ("--set", s)))
    assert shown.count(": 4 problems") == len(PRODUCTION), shown
    for said in [
        "--set training.grad_acum_steps=2: training.grad_acum_steps: unknown key; "
        "did you mean 'grad_accum_steps'?",
        '--set training.lr=fast: training.lr: expected a number greater than 0, got the string "fast"',
        "--set training.micro_batch_size=-1: training.micro_batch_size: expected an integer "
        "greater than 0, got the integer -1",
        '--set model.policy.dtype=bf16: model.policy.dtype: "bf16" is not allowed',
    ]:
        assert shown.count(said) == len(PRODUCTION), said


@pytest.mark.parametrize(
    ("argument", "said"),
    [
        ("training..lr=1", "--set training..lr=1: training..lr: not a dotted key"),
        (
            "experiment.name.x=1",
            "--set experiment.name.x=1: experiment.name.x: 'experiment.name' is",
        ),
        ("training.lr", "--set training.lr: training.lr: expected KEY=VALUE"),
    ],
)
@pytest.mark.parametrize("command", ["validate", "show"])
def test_a_set_argument_that_cannot_apply_is_said_with_the_argument(command, argument, said):
    shown = wmtp(REPO, command, "recipes/critic.toml", "--set", argument)
    assert "recipes/critic.toml: 1 problem" in shown and said in shown, shown
