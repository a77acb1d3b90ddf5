"""`wmtp validate` of a recipe that only evaluates prints what its evaluation needs (the model's
parameters and the memory of decoding: weights plus the KV cache of the rows decoded together),
not a training batch; and a training recipe's benchmark files are read as an evaluation recipe's
are (its run's `wmtp eval` reads them), each problem located the same way."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from wmtp.cli import app

REPO = Path(__file__).resolve().parents[2]
TINY = REPO / "recipes" / "tiny.toml"
EVALUATION = REPO / "recipes" / "evaluation.toml"

TINY_EVAL = f"""\
extends = "{TINY}"

[experiment]
name = "tiny_eval"
pipeline = "evaluation"

[model.policy]
checkpoint = "runs/tiny/latest"

[evaluation]
k = [1, 2]
n_samples = 2
max_problems = 3
max_new_tokens = 16
"""
"""recipes/tiny.toml's model evaluated (temperature 0.8): 3 problems x 2 samples, 6 rows."""

BAD_MBPP = {"task_id": 1, "text": "x", "code": "def f(): pass", "test_list": "assert f() is None"}
"""An MBPP row whose ``test_list`` is a string, not a list."""


@pytest.fixture
def cli(monkeypatch):
    monkeypatch.chdir(REPO)

    def invoke(*args):
        result = CliRunner().invoke(app, ["validate", *map(str, args)])
        result.flat = " ".join(result.output.split())  # rich's line wrapping undone
        return result

    return invoke


# recipes/evaluation.toml: llama2-7b-mtp (32 layers, 4 heads: 28 trunk layers; 32 KV heads of
# 128), bfloat16, max_seq_len 4,096; n_samples 20, temperature 0.2, batch_size 32 (defaults).
# The KV cache of one layer, row and position: 2 (k, v) x 32 x 128 x 2 bytes = 16 KiB.
KV_LAYER_ROW_POSITION = 2 * 32 * 128 * 2
GIB = 1024**3


def kv_gib(layers: int, rows: int) -> float:
    return KV_LAYER_ROW_POSITION * layers * rows * 4096 / GIB


@pytest.mark.parametrize(
    "sets, layers, rows",
    [
        ([], 28 + 1, 32),  # head 1's layer cached; 20 samples of every problem share 32 slots
        (["evaluation.max_problems=1"], 28 + 1, 20),  # one problem's 20 samples
        (["evaluation.temperature=0", "evaluation.max_problems=5"], 28 + 1, 5),  # greedy: one each
        (["evaluation.speculative=true"], 32, 20),  # every head's layer; one problem at a time
        (["evaluation.speculative=true", "evaluation.temperature=0"], 32, 1),
    ],
)
def test_an_evaluation_recipe_shows_the_memory_of_decoding_not_a_training_batch(
    cli, sets, layers, rows
):
    result = cli(EVALUATION, *[a for s in sets for a in ("--set", s)])
    assert result.exit_code == 0, result.output
    weights = 2 * 6_898_323_456 / GIB  # bfloat16
    kv = kv_gib(layers, rows)
    assert "  model.policy: 6,898,323,456 parameters\n" in result.stdout  # none trained
    assert (
        f"memory/GPU ~{weights + kv:.2f} GiB (evaluation: KV cache of {rows} rows x 4,096 "
        f"positions): weights {weights:.2f}, kv_cache {kv:.2f}"
    ) in result.stdout
    assert "KV cache counted at model.policy.max_seq_len = 4,096 positions a row" in result.flat
    assert "sequences/step" not in result.stdout and "tokens/step" not in result.stdout


def test_an_evaluation_recipe_in_json_has_no_batch_and_the_memory_of_decoding(cli):
    result = cli(EVALUATION, "--format", "json")
    assert result.exit_code == 0, result.output
    (report,) = json.loads(result.stdout)["recipes"]
    cost = report["estimate"]
    assert cost["effective_batch"] is None and cost["tokens_per_step"] is None
    weights, kv = 2 * 6_898_323_456 / GIB, kv_gib(29, 32)
    assert cost["memory_gib_per_gpu"] == {
        "weights": round(weights, 3),
        "kv_cache": round(kv, 3),
        "total": round(weights + kv, 3),
    }
    assert cost["decoding"] == {"rows": 32, "positions": 4096}
    assert cost["parameters"] == {"policy": {"total": 6_898_323_456, "trainable": 0}}


def test_a_training_recipe_still_shows_its_batch_and_training_memory(cli):
    result = cli(TINY)
    assert result.exit_code == 0, result.output
    assert "batch 4 sequences/step (4 x 1 accum x 1 process), 4,096 tokens/step" in result.stdout
    assert "model.policy: 230,336 parameters, 230,336 trained" in result.stdout
    assert "memory/process ~0.07 GiB (no_shard, world size 1): states" in result.stdout
    assert "kv_cache" not in result.stdout


def test_a_tiny_evaluation_counts_the_rows_its_problems_decode(cli, tmp_path):
    """recipes/tiny.toml's model (4 layers, 2 heads: 2 trunk layers; 2 KV heads of 16),
    float32, context 1,024: 6 rows (3 problems x 2 samples) of 3 cached layers."""
    recipe = tmp_path / "tiny_eval.toml"
    recipe.write_text(TINY_EVAL)
    result = cli(recipe, "--format", "json")
    assert result.exit_code == 0, result.output
    (report,) = json.loads(result.stdout)["recipes"]
    kv = 2 * 2 * 16 * 4 * 3 * 6 * 1024
    assert report["estimate"]["decoding"] == {"rows": 6, "positions": 1024}
    assert report["estimate"]["memory_gib_per_gpu"]["kv_cache"] == round(kv / GIB, 3)
    text = cli(recipe)
    assert "model.policy: 230,336 parameters\n" in text.stdout
    assert "memory/process ~0.01 GiB (evaluation: KV cache of 6 rows x 1,024 positions)" in (
        text.stdout
    )


def test_validate_env_weighs_an_evaluations_memory_at_its_batch_size(cli, tmp_path):
    """Rows past this machine's memory even at max_new_tokens (16) positions each (on the CPU
    the kernel kills a process past it without a word): a problem at the key to change,
    evaluation.batch_size, not a training key."""
    from wmtp.estimate import host_memory

    recipe = tmp_path / "tiny_eval.toml"
    recipe.write_text(TINY_EVAL)
    least_per_row = 2 * 3 * 2 * 16 * 4 * 16  # tiny's KV cache, 3 cached layers, float32
    rows = int(2 * host_memory() / least_per_row)  # past this machine, whatever its size
    sets = [f"evaluation.batch_size={rows}", f"evaluation.max_problems={rows}"]
    result = cli(recipe, "--env", *[a for s in sets for a in ("--set", s)])
    assert result.exit_code == 2, result.output
    assert (
        f"--set evaluation.batch_size={rows}: evaluation.batch_size: the least an evaluation "
        "needs, its rows' KV caches at evaluation.max_new_tokens positions" in result.flat
    )
    assert "is more than this machine's memory" in result.flat
    assert "lower evaluation.batch_size (the rows decoded together" in result.flat
    assert "Traceback" not in result.output


def test_validate_env_does_not_refuse_an_evaluation_whose_bound_alone_is_past_memory(cli, tmp_path):
    """The estimate counts every row's cache at the whole context (1,024), a bound: rows whose
    bound is twice this machine's memory but whose caches at max_new_tokens (16) positions fit
    are printed at the bound and not refused."""
    from wmtp.estimate import host_memory

    recipe = tmp_path / "tiny_eval.toml"
    recipe.write_text(TINY_EVAL)
    bound_per_row = 2 * 3 * 2 * 16 * 4 * 1024
    rows = int(2 * host_memory() / bound_per_row)
    sets = [f"evaluation.batch_size={rows}", f"evaluation.max_problems={rows}"]
    result = cli(recipe, "--env", *[a for s in sets for a in ("--set", s)])
    assert "more than this machine's memory" not in result.flat, result.output
    assert f"(evaluation: KV cache of {rows:,} rows x 1,024 positions)" in result.flat


def test_an_evaluation_recipe_is_not_refused_for_the_training_rows_max_length(cli, tmp_path):
    """data.max_length is a training setting: an evaluation of a shorter context is valid."""
    recipe = tmp_path / "tiny_eval.toml"
    recipe.write_text(TINY_EVAL)
    result = cli(recipe, "--set", "model.policy.max_seq_len=200")
    assert result.exit_code == 0, result.output
    assert "KV cache of 6 rows x 200 positions" in result.stdout
    trains = cli(TINY, "--set", "model.policy.max_seq_len=200")  # training reads the rows
    assert trains.exit_code == 2
    assert "data.max_length = 1024 is longer than model.policy.max_seq_len = 200" in trains.flat


def _bad_benchmark(folder: Path) -> Path:
    path = folder / "bad.jsonl"
    path.write_text(json.dumps(BAD_MBPP) + "\n")
    return path


@pytest.mark.parametrize("recipe", ["training", "evaluation"])
def test_a_benchmark_file_that_does_not_load_is_refused_for_any_recipe_alike(cli, tmp_path, recipe):
    """A training recipe's [evaluation].benchmarks are what `wmtp eval` of its run reads: a file
    that does not load is a problem of the recipe, located at the --set, as for an evaluation
    recipe."""
    path = TINY if recipe == "training" else tmp_path / "tiny_eval.toml"
    if recipe == "evaluation":
        path.write_text(TINY_EVAL)
    bad = _bad_benchmark(tmp_path)
    given = f'evaluation.benchmarks=["mbpp={bad}"]'
    result = cli(path, "--set", given)
    assert result.exit_code == 2, result.output
    assert (
        f"--set {given}: evaluation.benchmarks[0]: 'mbpp={bad}': {bad}:1: field 'test_list' "
        "should be a list, got a string"
    ) in result.flat
    assert "Traceback" not in result.output


def test_a_training_recipes_benchmark_file_is_located_at_its_line(cli, tmp_path):
    bad = _bad_benchmark(tmp_path)
    recipe = tmp_path / "training.toml"
    recipe.write_text(
        f'extends = "{TINY}"\n\n[evaluation]\nbenchmarks = ["humaneval", "mbpp={bad}"]\n'
    )
    result = cli(recipe)
    assert result.exit_code == 2, result.output
    assert f"training.toml:4:1: evaluation.benchmarks[1]: 'mbpp={bad}': {bad}:1:" in result.flat


def test_a_training_recipes_missing_benchmark_file_is_a_note_and_a_problem_with_env(cli, tmp_path):
    """As any input the recipe names: a note for plain validate, a problem for --env."""
    gone = tmp_path / "gone.jsonl"
    given = f'evaluation.benchmarks=["mbpp={gone}"]'
    plain = cli(TINY, "--set", given)
    assert plain.exit_code == 0, plain.output
    note = f"note: input not found: --set {given}: evaluation.benchmarks[0]: '{gone}': no mbpp file"
    assert note in plain.flat
    env = cli(TINY, "--set", given, "--env")
    assert env.exit_code == 2, env.output
    assert f"cannot run here: --set {given}: evaluation.benchmarks[0]: '{gone}'" in env.flat
