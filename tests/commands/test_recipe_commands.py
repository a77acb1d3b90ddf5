"""The recipe commands end to end through Typer's CliRunner, on real recipe files."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from typer.testing import CliRunner

from wmtp.cli import app
from wmtp.models.args import FLAVOURS, param_count
from wmtp.recipe import load_recipe

REPO = Path(__file__).resolve().parents[2]
TINY = REPO / "recipes" / "tiny.toml"


@pytest.fixture
def cli(monkeypatch):
    monkeypatch.chdir(REPO)
    runner = CliRunner()

    def invoke(*args: str):
        return runner.invoke(app, [str(a) for a in args])

    return invoke


@pytest.fixture
def bad_recipe(tmp_path) -> Path:
    path = tmp_path / "bad.toml"
    path.write_text(
        textwrap.dedent(
            f"""\
            extends = "{TINY}"
            [training]
            lr = -1.0
            grad_acum_steps = 2
            [weighting]
            kind = "tdd"
            """
        )
    )
    return path


# --- validate ------------------------------------------------------------------------------------


def test_validate_every_recipe_by_default(cli):
    result = cli("validate")
    assert result.exit_code == 0, result.stderr
    for path in sorted((REPO / "recipes").glob("*.toml")):
        assert f"recipes/{path.name}: ok" in result.stdout
    assert "memory/GPU" in result.stdout and "tokens/step" in result.stdout


def test_validate_prints_derived_quantities(cli):
    result = cli("validate", "recipes/verifiable.toml", "--world-size", "8")
    assert result.exit_code == 0
    assert "batch 256 sequences/step (1 x 32 accum x 8 GPUs), 524,288 tokens/step" in result.stdout
    assert "model.policy: 6,898,323,456 parameters, 159,907,840 trained" in result.stdout
    assert "full_shard, world size 8" in result.stdout


def test_validate_reports_every_problem_and_exits_2(cli, bad_recipe):
    result = cli("validate", bad_recipe, "recipes/tiny.toml")
    assert result.exit_code == 2
    err = result.stderr
    assert "3 problems" in err
    assert "bad.toml:3:1: training.lr" in err
    assert (
        "bad.toml:4:1: training.grad_acum_steps: unknown key; did you mean 'grad_accum_steps'?"
        in err
    )
    assert 'bad.toml:6:1: weighting.kind: unknown kind "tdd"' in err and "'td'" in err
    assert "recipes/tiny.toml: ok" in result.stdout  # the valid one is still checked
    assert "Traceback" not in err + result.stdout


def test_validate_json(cli, bad_recipe):
    result = cli("validate", "recipes/tiny.toml", bad_recipe, "--format", "json")
    assert result.exit_code == 2
    report = json.loads(result.stdout)
    good, bad = report["recipes"]
    training = load_recipe(TINY).recipe.training
    expected_batch = training.micro_batch_size * training.grad_accum_steps
    assert good["valid"] and good["estimate"]["effective_batch"] == expected_batch
    assert not bad["valid"] and len(bad["problems"]) == 3
    assert {p["key"] for p in bad["problems"]} == {
        "training.lr",
        "training.grad_acum_steps",
        "weighting.kind",
    }


def test_validate_with_set(cli):
    result = cli("validate", "recipes/tiny.toml", "--set", "training.micro_batch_size=16")
    assert "batch 16 sequences/step" in result.stdout
    result = cli("validate", "recipes/tiny.toml", "--set", "training.micro_batch_size=0")
    assert result.exit_code == 2 and "--set training.micro_batch_size=0" in result.stderr


def test_syntax_error_missing_extends_and_cycle_exit_2_without_traceback(cli, tmp_path):
    (tmp_path / "syntax.toml").write_text("[experiment\n")
    (tmp_path / "missing.toml").write_text('extends = "gone.toml"\n')
    (tmp_path / "a.toml").write_text('extends = "b.toml"\n')
    (tmp_path / "b.toml").write_text('extends = "a.toml"\n')
    for name, expected in [
        ("syntax.toml", "TOML syntax error"),
        ("missing.toml", "extended recipe not found"),
        ("a.toml", "extends cycle"),
    ]:
        for command in ("validate", "show"):
            result = cli(command, tmp_path / name)
            assert result.exit_code == 2, (command, name)
            assert expected in result.stderr and "Traceback" not in result.stderr


def test_validate_env_checks_the_machine(cli):
    result = cli("validate", "recipes/tiny.toml", "--env", "--format", "json")
    assert result.exit_code == 0, result.stdout
    machine = json.loads(result.stdout)["environment"]
    assert machine["torch"] and machine["cuda"] in (True, False)
    assert machine["sandbox"].split(":")[0] in ("bwrap", "rlimits")  # which isolation runs code
    result = cli("validate", "recipes/tiny.toml", "--env", "--set", "parallel.device=cuda")
    if not machine["cuda"]:
        assert result.exit_code == 2 and "no CUDA device" in result.stderr
        assert "--set parallel.device=cuda: parallel.device:" in result.stderr  # located


def test_validate_env_says_per_recipe_what_cannot_run_here(cli):
    """On a CPU machine: an attention backend that needs CUDA (what `wmtp run` would refuse),
    and flex for a trained model (no CPU backward), each on its recipe, exit 2."""
    import torch

    if torch.cuda.is_available():
        pytest.skip("checks the CPU machine's refusals")
    varlen = cli(
        "validate", "recipes/tiny.toml", "--env",
        "--set", "model.policy.attention=varlen", "--set", "model.policy.dtype=bfloat16",
    )  # fmt: skip
    assert varlen.exit_code == 2
    assert "recipes/tiny.toml: valid, but cannot run here" in varlen.stdout
    assert "this machine: torch=" in varlen.stdout and "Traceback" not in varlen.stderr
    assert "model.policy.attention: 'varlen' cannot run here: varlen runs on CUDA" in varlen.stderr
    flex = cli(
        "validate", "recipes/tiny_critic.toml", "--env", "--set", "model.critic.attention=flex"
    )
    assert flex.exit_code == 2
    assert "recipes/tiny_critic.toml: valid, but cannot run here" in flex.stdout
    assert "model.critic.attention: 'flex' cannot run here: flex has no backward" in flex.stderr
    float8 = cli(
        "validate", "recipes/tiny.toml", "--env",
        "--set", "parallel.device=auto", "--set", "parallel.float8=true",
    )  # fmt: skip
    assert float8.exit_code == 2 and "Traceback" not in float8.stderr
    assert "parallel.float8: needs a CUDA GPU of compute capability 8.9" in float8.stderr


def test_validate_env_weighs_the_memory_estimate_against_this_machine(cli):
    """A micro-batch whose estimate is past this machine's memory (on the CPU the kernel would
    kill the run without a word): a problem at the key, with what to change; the same recipe
    on a machine of that much memory (--world-size spreads nothing on one CPU) fits."""
    from wmtp.estimate import GIB, estimate, host_memory
    from wmtp.recipe import load_recipe

    fits = cli("validate", "recipes/tiny.toml", "--env")
    assert fits.exit_code == 0 and "memory estimate" not in fits.stderr
    per_row = estimate(load_recipe(REPO / "recipes" / "tiny.toml").recipe).memory.total / 4
    rows = int(2 * host_memory() / per_row)  # past this machine, whatever its size
    big = cli(
        "validate", "recipes/tiny.toml", "--env", "--set", f"training.micro_batch_size={rows}"
    )
    flat = " ".join(big.stderr.split())
    assert big.exit_code == 2 and "Traceback" not in big.stderr
    assert f"--set training.micro_batch_size={rows}: training.micro_batch_size: the memory " in flat
    assert f"is more than this machine's memory ({round(host_memory() / GIB, 1):.1f} GiB)" in flat
    assert "raise grad_accum_steps to keep the batch" in flat


def test_missing_inputs_are_notes_for_validate_and_problems_for_validate_env(cli, tmp_path):
    """The production recipes name files a clone does not have: plain validate says so and
    passes; --env (and `wmtp run`) fail, each input located with the path it resolved to."""
    plain = cli("validate", "recipes/verifiable.toml")
    assert plain.exit_code == 0, plain.stderr
    assert "note: input not found: recipes/verifiable.toml:14:1: model.critic.checkpoint" in (
        plain.stdout
    )
    env = cli("validate", "recipes/verifiable.toml", "--env")
    assert env.exit_code == 2
    base_lines = (REPO / "recipes/base.toml").read_text().splitlines()
    data_line = base_lines.index('path = "storage/datasets/codecontests/processed"') + 1
    for located in (
        "recipes/base.toml:13:1: tokenizer.path",
        "recipes/base.toml:18:1: model.policy.path",
        "recipes/verifiable.toml:12:1: model.critic.path",
        "recipes/verifiable.toml:14:1: model.critic.checkpoint",
        f"recipes/base.toml:{data_line}:1: data.path",
    ):
        assert located in env.stderr, located
    assert f"resolved to {REPO / 'storage/datasets/codecontests/processed'}" in env.stderr
    # device = "auto" on this machine: a CPU's processes where it has no GPU, GPUs where it has
    import torch

    unit = "GPU" if torch.cuda.is_available() else "process"
    assert f"x 1 {unit}), " in env.stdout and f"memory/{unit} ~" in env.stdout, env.stdout
    assert "x 1 GPU), " in plain.stdout  # without --env: the recipe's own target


# --- diff ----------------------------------------------------------------------------------------


def test_diff_equal_exits_0(cli):
    result = cli("diff", "recipes/tiny.toml", "recipes/tiny.toml")
    assert result.exit_code == 0 and "same recipe" in result.stdout


def test_diff_classes_changes_and_exits_1(cli):
    result = cli("diff", "recipes/baseline.toml", "recipes/verifiable.toml")
    assert result.exit_code == 1
    out = result.stdout
    assert "numerics (" in out and "cosmetic (1):" in out
    assert "weighting.kind" in out and '"uniform" -> "td"' in out


def test_diff_json_and_run_directory(cli, tmp_path):
    run = tmp_path / "runs" / "tiny" / "20260101-000000-0123abcd"
    run.mkdir(parents=True)
    shown = cli("show", "recipes/tiny.toml", "--set", "training.lr=1.234e-3").stdout
    (run / "recipe.toml").write_text(shown)
    result = cli("diff", "recipes/tiny.toml", run, "--format", "json")
    assert result.exit_code == 1
    old_lr = load_recipe(TINY).recipe.training.lr
    assert json.loads(result.stdout)["changes"] == [
        {"key": "training.lr", "old": old_lr, "new": 0.001234, "category": "numerics"}
    ]


@pytest.mark.parametrize(
    ("key", "value"),
    [("max_seq_len", "2048"), ("rope_theta", "500000.0"), ("norm_eps", "1e-06")],
)
def test_diff_classes_an_optional_models_numerics_as_numerics(cli, tmp_path, key, value):
    """A model's context, RoPE base and norm epsilon are numerics (a checkpoint loads with
    another context; the other two are checked against it): optional fields, whose category
    pydantic keeps inside the union, were all said to be "checkpoint" shapes."""
    shown = cli("show", "recipes/tiny.toml", "--set", f"model.policy.{key}={value}").stdout
    (tmp_path / "r.toml").write_text(shown)
    result = cli("diff", "recipes/tiny.toml", tmp_path / "r.toml", "--format", "json")
    (change,) = json.loads(result.stdout)["changes"]
    assert change["key"] == f"model.policy.{key}" and change["category"] == "numerics"


# --- show ----------------------------------------------------------------------------------------


def test_show_round_trips(cli, tmp_path):
    result = cli("show", "recipes/rho1.toml")
    assert result.exit_code == 0
    out = tmp_path / "resolved.toml"
    out.write_text(result.stdout)
    assert load_recipe(out).recipe == load_recipe(REPO / "recipes" / "rho1.toml").recipe


def test_show_explain_names_sources(cli):
    result = cli("show", "recipes/verifiable.toml", "--explain", "--set", "training.lr=2e-5")
    assert result.exit_code == 0
    out = result.stdout
    assert 'name = "verifiable"  # recipes/verifiable.toml:6:1' in out
    assert "seed = 42  # recipes/base.toml:" in out
    assert "lr = 2e-05  # --set training.lr=2e-5" in out
    assert "eps = 1e-08  # default · AdamW epsilon." in out


# --- schema --------------------------------------------------------------------------------------


def test_schema_check_passes_in_the_repository(cli):
    result = cli("schema", "--check")
    assert result.exit_code == 0, result.stderr


def test_schema_writes_and_detects_staleness(cli, tmp_path):
    target = tmp_path / "s" / "recipe.schema.json"
    assert cli("schema", "--output", target).exit_code == 0
    assert target.read_text() == (REPO / "schemas" / "recipe.schema.json").read_text()
    target.write_text("{}")
    result = cli("schema", "--check", "--output", target)
    assert result.exit_code == 1 and "stale" in result.stderr
    assert f"run `wmtp schema -o {target}`" in " ".join(result.stderr.split())  # the same file
    result = cli("schema", "--check", "--output", tmp_path / "none.json")
    assert result.exit_code == 1 and "none.json does not exist" in result.stderr


# --- list ----------------------------------------------------------------------------------------


def test_list_shows_components_with_parameters(cli):
    result = cli("list", "weighting")
    assert result.exit_code == 0, result.stderr
    out = result.stdout
    assert out.startswith("weighting:")
    assert "  td  " in out and "gamma = 1.0  Discount of the TD errors." in out
    assert "  rho1  " in out and "k_percent = 0.6" in out


def test_a_folder_given_as_a_recipe_names_the_recipes_in_it(cli):
    result = cli("validate", "recipes")
    said = " ".join(result.output.split())
    assert result.exit_code == 2, result.output
    assert "recipes: a folder, not a recipe: name one of the recipes in it (base.toml, " in said


def test_list_shows_defaults_as_a_recipe_writes_them(cli):
    """Each ``name = default`` line pastes into a recipe: TOML (was Python's repr:
    ``{'kind': 'ema', ...}``, ``'auto'``, ``False``), ``(unset)`` for a field off until set."""
    import tomllib

    every = cli("list").stdout
    lines = [line.strip().split("  ")[0] for line in every.splitlines() if " = " in line]
    pasted = [line for line in lines if not line.endswith(("(required)", "(unset)"))]
    assert len(pasted) > 30 and all(tomllib.loads(line) for line in pasted), pasted
    normalize = tomllib.loads(next(line for line in lines if line.startswith("normalize =")))
    assert normalize["normalize"] == {"kind": "ema", "momentum": 0.1, "warmup_steps": 10}
    assert any(line.endswith("= (unset)") for line in lines)


def test_list_json_and_unknown_kind(cli):
    entries = json.loads(cli("list", "--format", "json").stdout)
    kinds = {e["kind"] for e in entries}
    assert {"weighting", "model"} <= kinds
    result = cli("list", "weightin")
    assert result.exit_code == 2 and "did you mean 'weighting'" in result.stderr


def test_list_flavour_shows_the_sizes_and_parameters_of_each_flavour(cli):
    result = cli("list", "flavour")
    assert result.exit_code == 0, result.stderr
    head, *rows = result.stdout.splitlines()[1:]
    assert head.split()[:4] == ["name", "dim", "layers", "heads"] and "parameters" in head
    by_name = {row.split()[0]: row.split() for row in rows}
    assert list(by_name) == list(FLAVOURS)
    assert by_name["llama2-7b-mtp"][1:] == ["4096", "32", "32", "32", "32000", "4096", "4", "6.7B"]
    tiny = by_name["tiny"]
    assert tiny[5] == "tokenizer" and " ".join(tiny[-5:]) == "197.2K + 128 x vocab"


def test_list_flavour_as_json_and_among_every_kind(cli):
    entries = json.loads(cli("list", "flavour", "--format", "json").stdout)
    assert [e["name"] for e in entries] == list(FLAVOURS)
    for entry in entries:
        args = FLAVOURS[entry["name"]]
        assert entry["kind"] == "flavour"
        assert entry["sizes"]["n_future_tokens"] == args.n_future_tokens
        assert entry["sizes"]["n_kv_heads"] == args.kv_heads
        assert entry["params"] == (param_count(args) if args.vocab_size > 0 else None)
    every = cli("list").stdout
    assert "\nflavour:\n  name " in every and "\nweighting:\n" in every
    kinds = [line for line in every.splitlines() if not line.startswith(" ")]
    assert kinds == sorted(kinds)
    assert "flavour" in cli("list", "flavor").stderr  # did you mean


def test_list_flavour_never_imports_torch():
    probe = (
        "import sys; from wmtp.cli import app\n"
        "try: app(['list', 'flavour'])\nexcept SystemExit: pass\n"
        "print('torch' in sys.modules)"
    )
    done = subprocess.run([sys.executable, "-c", probe], cwd=REPO, capture_output=True, text=True)
    assert done.stdout.strip().splitlines()[-1] == "False", done.stderr[-2000:]


def test_help_of_every_recipe_command(cli):
    for command in ("validate", "diff", "show", "schema", "list"):
        result = cli(command, "--help")
        assert result.exit_code == 0 and "Usage" in result.stdout
    assert shutil.which("wmtp") is not None


def test_a_seed_every_generator_takes_and_an_evaluation_with_rows_to_evaluate(cli):
    """Two recipe mistakes that used to surface at run time (a traceback from a generator; an
    eval_every that evaluates nothing, silently): located problems of the recipe."""
    seed = cli("validate", "recipes/tiny.toml", "--set", "experiment.seed=4294967296")
    assert seed.exit_code == 2 and "Traceback" not in seed.stderr
    assert "experiment.seed: expected an integer at least 0 and at most 2147483647" in " ".join(
        seed.stderr.split()
    )
    nothing = cli("validate", "recipes/tiny.toml", "--set", "data.split.heldout_fraction=0")
    flat = " ".join(nothing.stderr.split())
    assert nothing.exit_code == 2 and "recipes/tiny.toml:36:1: training.eval_every:" in flat
    assert "but data.split.heldout_fraction = 0 and no data.split.heldout_path" in flat
    fixed = ("--set", "data.split.heldout_fraction=0", "--set", "training.eval_every=0")
    assert cli("validate", "recipes/tiny.toml", *fixed).exit_code == 0


def test_recipes_from_a_pipe_a_folder_or_another_encoding_are_said_as_such(tmp_path):
    """`wmtp validate <(wmtp show R)` reads the pipe (twice, the cache stays out of it); a
    folder where a recipe is (a run's recipe.toml) and a byte that is not UTF-8 are named, the
    latter at its line and column."""
    cmd = f"{sys.executable} -m wmtp.cli"
    line = f"{cmd} validate <({cmd} show recipes/tiny.toml) && {cmd} diff recipes/tiny.toml <(cat recipes/tiny.toml)"
    env = dict(os.environ, WMTP_CACHE_DIR=str(tmp_path / "cache"))
    for _ in range(2):
        done = subprocess.run(
            ["bash", "-c", line], cwd=REPO, env=env, capture_output=True, text=True, timeout=120
        )
        assert done.returncode == 0, done.stdout + done.stderr
        assert (
            ": ok (tiny, pipeline baseline)" in done.stdout and "are the same recipe" in done.stdout
        )
    run = tmp_path / "run"
    (run / "recipe.toml").mkdir(parents=True)
    latin = tmp_path / "latin.toml"
    latin.write_bytes('[experiment]\nname = "café"\n'.encode("latin-1"))
    runner = CliRunner()
    for args, said in (
        (["diff", str(TINY), str(run)], f"{run / 'recipe.toml'}: a folder, not a recipe"),
        (
            ["validate", str(latin)],
            f"{latin}:2:12: byte 0xe9 is not UTF-8 (save the recipe as UTF-8)",
        ),
    ):
        result = runner.invoke(app, args)
        assert result.exit_code == 2 and said in " ".join(result.output.split()), result.output
