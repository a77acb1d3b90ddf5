"""`wmtp eval` and `wmtp report` end to end on tiny checkpoints the tests write (random weights)."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from tests.sandbox.isolations import child_env, path_without_bwrap
from wmtp.cli import app

pytestmark = pytest.mark.minutes(1.5)

RECIPE = """
[experiment]
name = "tiny-eval"
pipeline = "baseline"
seed = 7

[tokenizer]
kind = "byte"

[model.policy]
kind = "llama_mtp"
flavour = "tiny"
dtype = "float32"
attention = "sdpa"
n_future_tokens = 2
max_seq_len = 1024                              # room for templated byte prompts and a completion

[parallel]
device = "cpu"
sharding = "no_shard"
activation_checkpointing = false

[training]
micro_batch_size = 2
max_steps = 3

[data]
kind = "humaneval"
max_length = 512
split = { heldout_fraction = 0.1 }               # the built split (storage/datasets/humaneval)

[evaluation]
benchmarks = ["humaneval"]
k = [1, 2]
n_samples = 2
temperature = 0.8
max_new_tokens = 12
max_problems = 2
workers = 2
"""


def tiny_model():
    from wmtp.models.args import flavour
    from wmtp.models.llama_mtp import LlamaMTP

    torch.manual_seed(0)
    args = dataclasses.replace(flavour("tiny").with_vocab(259), max_seq_len=1024)
    return LlamaMTP(args, attention="sdpa")


@pytest.fixture
def run_dir(tmp_path):
    """A run directory with a wmtp-format checkpoint at step 3 (and an older one at step 1)."""
    from wmtp.models.checkpoint import save_wmtp

    run = tmp_path / "runs" / "tiny-eval" / "20261122-060000-0123abcd"
    run.mkdir(parents=True)
    (run / "recipe.toml").write_text(RECIPE)
    model = tiny_model()
    save_wmtp(model, run / "checkpoints" / "step-1", recipe_toml=RECIPE)
    save_wmtp(model, run / "checkpoints" / "step-3", recipe_toml=RECIPE)
    (run / "checkpoints" / ".tmp-step-5").mkdir()  # a torn checkpoint: never picked
    return run


def heldout_problems() -> set[str]:
    """The built-in HumanEval split's held-out problems, as its build recorded them."""
    info = Path("storage/datasets/humaneval/v2-heldout0.1/build_info.json")
    return set(json.loads(info.read_text())["heldout_problems"])


def summary_of(folder: Path, benchmark: str = "humaneval") -> dict:
    return json.loads((folder / benchmark / "summary.json").read_text())


def invoke(*args):
    """Run ``wmtp ARGS``; the output with rich's line wrapping undone."""
    result = CliRunner().invoke(app, [*map(str, args)])
    result.flat = " ".join(result.output.split())
    return result


def test_eval_run_directory_writes_samples_summary_and_table(run_dir):
    result = invoke("eval", run_dir, "--no-progress")
    assert result.exit_code == 0, result.output
    assert "pass@1" in result.output and "pass@2" in result.output and "humaneval" in result.output
    assert "2 of 16 unseen" in result.flat and "148 seen in training" in result.flat
    assert "sandbox: " in result.flat
    folder = run_dir / "eval" / "step-3" / "humaneval"
    lines = [json.loads(x) for x in (folder / "samples.jsonl").read_text().splitlines()]
    tasks = list(dict.fromkeys(x["task_id"] for x in lines))
    assert len(tasks) == 2 and set(tasks) <= heldout_problems()  # max_problems = 2, unseen only
    assert [(x["task_id"], x["sample"]) for x in lines] == [(t, i) for t in tasks for i in (0, 1)]
    for line in lines:
        assert line["status"] in {"passed", "failed", "timeout", "memory"} and not line["seen"]
        assert 0 < line["n_tokens"] <= 12 or line["finish_reason"] in {"eos", "stop"}
        assert line["finish_reason"] in {"eos", "stop", "length"}
    summary = summary_of(run_dir / "eval" / "step-3")
    entry = summary["results"]["unseen"]
    assert entry["pass_at_k"] == {"1": 0.0, "2": 0.0}  # random weights
    assert entry["pass_at_k_stderr"] == {"1": 0.0, "2": 0.0}
    assert entry["problems"] == 2 and entry["samples_per_problem"] == 2
    assert sum(entry["statuses"].values()) == 4 and set(summary["results"]) == {"unseen"}
    assert summary["split"] == {
        "unseen": 16,
        "seen": 148,
        "scored": {"unseen": 2},
        "max_problems": 2,
        "sample_seed": 0,
    }
    assert summary["decoding"]["temperature"] == 0.8 and summary["decoding"]["seed"] == 7
    assert summary["settings"]["dtype"] == "float32" and summary["settings"]["device"] == "cpu"
    assert summary["generation"]["completions"] == 4 and summary["generation"]["tokens"] > 0
    steps = summary["generation"]["steps"]  # 2 problems x 2 samples through one decoder
    assert steps["rows_started"] == 4 and steps["slots"] == 4 and 0 < steps["slot_occupancy"] <= 1
    assert steps["steps"] <= 12 and "generation (humaneval): " in result.flat
    assert summary["sandbox"].startswith(("bwrap: ", "rlimits: "))
    wall = summary["wall_s"]
    assert wall["total"] == pytest.approx(wall["generate"] + wall["check"], abs=2e-3)
    assert wall["generate"] > 0 and wall["judging_summed"] > 0
    assert summary["check_workers"] == 2  # the recipe's evaluation.workers
    assert summary["model"].endswith("checkpoints/step-3") and summary["step"] == 3
    # asked as the run's rows were laid out (its recipe's data.template: the default, alpaca)
    assert (
        summary["prompts"]["template"] == "alpaca" and summary["training"]["template"] == "alpaca"
    )
    assert "prompts: alpaca template, instruction 'Complete this Python function.'" in result.flat


def test_the_decode_summariser_reads_an_evaluations_summary_where_the_gpu_script_leaves_it(
    run_dir, tmp_path
):
    """bench/h200_decode.sh leaves a timed evaluation's summary.json beside its samples' archive
    (the device returns nothing deeper); bench/summarise_decode.py reads its wall times there."""
    import shutil
    import subprocess
    import sys

    result = invoke("eval", run_dir, "--no-progress", "--out", tmp_path / "humaneval_n20")
    assert result.exit_code == 0, result.output
    shutil.move(tmp_path / "humaneval_n20" / "humaneval", tmp_path / "evaluated")
    shutil.copy(tmp_path / "evaluated" / "summary.json", tmp_path / "humaneval_n20")
    script = Path(__file__).resolve().parents[2] / "bench" / "summarise_decode.py"
    subprocess.run([sys.executable, script, "--results", str(tmp_path)], check=True)
    figures = json.loads((tmp_path / "h200_decode.json").read_text())
    wall = summary_of(tmp_path / "humaneval_n20", ".")["wall_s"]
    assert figures["humaneval_n20_generation_s"] == wall["generate"]
    assert figures["humaneval_n20_check_s"] == wall["check"]


def test_eval_is_reproducible_and_greedy_speculative_matches_greedy(run_dir, tmp_path):
    def completions(out):
        samples = out / "humaneval" / "samples.jsonl"
        return [json.loads(x)["completion"] for x in samples.read_text().splitlines()]

    for name in ("a", "b"):
        assert invoke("eval", run_dir, "--no-progress", "--out", tmp_path / name).exit_code == 0
    assert completions(tmp_path / "a") == completions(tmp_path / "b")  # seeded sampling

    greedy = ["--set", "evaluation.temperature=0"]
    assert invoke("eval", run_dir, "--no-progress", "--out", tmp_path / "g", *greedy).exit_code == 0
    spec = [*greedy, "--set", "evaluation.speculative=true"]
    result = invoke(
        "eval", run_dir / "checkpoints" / "step-3", "--no-progress", "--out", tmp_path / "s", *spec
    )
    assert result.exit_code == 0, result.output
    assert completions(tmp_path / "g") == completions(tmp_path / "s")
    stats = summary_of(tmp_path / "s")
    assert stats["generation"]["completions"] == 2  # greedy: one per problem, counted n times
    speculative = stats["generation"]["speculative"]
    assert 0 <= speculative["acceptance_rate"] <= 1 and speculative["forwards"] > 0
    assert set(speculative["acceptance_by_head"]) == {"2"}  # the tiny model's 2 heads
    assert "speculative decoding (humaneval): drafts accepted head 2" in result.flat


def test_speculative_tokens_per_forward_counts_the_verify_forwards_only(tmp_path):
    """Heads that always agree (every block the identity, unembedding = embedding: greedy repeats
    the prompt's last token, every draft accepted) commit 2 tokens per verify forward with 2
    heads, and the summary's counts give its figure: the prompt forward's first token apart."""
    from wmtp.models.checkpoint import save_wmtp

    model = tiny_model()
    with torch.no_grad():
        for block in model.blocks():
            block.attention.wo.weight.zero_()
            block.feed_forward.w2.weight.zero_()
        model.output.weight.copy_(model.tok_embeddings.weight)
    run = tmp_path / "runs" / "tiny-eval" / "20261122-060000-0123abcd"
    (run / "checkpoints").mkdir(parents=True)
    (run / "recipe.toml").write_text(RECIPE)
    save_wmtp(model, run / "checkpoints" / "step-3", recipe_toml=RECIPE)
    result = invoke("eval", run, "--no-progress", "--out", tmp_path / "e", "--set",
                    "evaluation.temperature=0", "--set", "evaluation.speculative=true", "--set",
                    "evaluation.max_problems=1", "--set", "evaluation.max_new_tokens=13")  # fmt: skip
    assert result.exit_code == 0, result.output
    speculative = summary_of(tmp_path / "e")["generation"]["speculative"]
    assert speculative["acceptance_rate"] == 1.0 and speculative["generated"] == 13
    assert speculative["prompt_forwards"] == 1 and speculative["forwards"] == 6  # 13 = 1 + 6 x 2
    assert speculative["tokens_per_forward"] == 2.0
    assert "2.00 tokens per verify forward" in result.flat


def test_speculative_sampling_at_the_recipes_temperature(run_dir, tmp_path):
    """At temperature > 0 the heads draft and head 1 accepts or resamples: n_samples distinct
    draws per problem, seeded (the same twice), with acceptance per head reported."""
    spec = ["--no-progress", "--set", "evaluation.speculative=true"]
    for name in ("a", "b"):
        result = invoke("eval", run_dir, *spec, "--out", tmp_path / name)
        assert result.exit_code == 0, result.output

    def drawn(out):
        lines = (out / "humaneval" / "samples.jsonl").read_text().splitlines()
        return [(x["task_id"], x["completion"]) for x in map(json.loads, lines)]

    samples = drawn(tmp_path / "a")
    assert samples == drawn(tmp_path / "b") and len(set(samples)) > 1
    stats = summary_of(tmp_path / "a")
    assert stats["settings"]["temperature"] > 0
    assert stats["generation"]["completions"] == len(samples)  # every sample its own row
    speculative = stats["generation"]["speculative"]
    assert speculative["forwards"] > 0 and set(speculative["acceptance_by_head"]) == {"2"}
    assert "speculative decoding (humaneval): drafts accepted head 2" in result.flat


def test_speculative_decoding_of_a_one_head_model_says_it_changed_nothing(run_dir, tmp_path):
    """No head past the first, nothing to draft: said so, not "0.0%" acceptance that reads
    like a measurement."""
    one_head = tmp_path / "one_head"
    exported = invoke("export", run_dir, "--to", "wmtp", "--heads", "1", "--out", one_head,
                      "--no-progress")  # fmt: skip
    assert exported.exit_code == 0, exported.output
    result = invoke("eval", one_head, "--no-progress", "--out", tmp_path / "e", "--set",
                    "evaluation.speculative=true", "--set", "evaluation.max_problems=1")  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "the model has no head past the first to draft with" in result.flat
    assert "0.0%" not in result.flat


def test_an_evaluation_of_an_export_records_the_step_it_was_exported_from(tmp_path):
    """An export's folder has no ``step-N`` name: its marker records the step it was made from,
    and an export of that export keeps it."""
    import json

    from tests.eval.tiny_runs import policy, train

    run = train(tmp_path, "tiny", "baseline", policy(), steps=2)
    exported, again = tmp_path / "hf", tmp_path / "hf_again"
    done = invoke("export", run, "--to", "hf", "--out", exported, "--no-progress")
    assert done.exit_code == 0, done.output
    marker = json.loads((exported / "wmtp_export.json").read_text())
    assert marker["made_from"]["step"] == 2 and marker["made_from"]["run"] == str(run.resolve())
    done = invoke("export", exported, "--to", "hf", "--out", again, "--no-progress")
    assert done.exit_code == 0, done.output
    for folder in (exported, again):
        result = invoke("eval", folder, "--no-progress", "--set", "evaluation.max_problems=1")
        assert result.exit_code == 0, result.output
        summary = summary_of(folder / "eval")
        assert summary["model"] == str(folder) and summary["step"] == 2, folder


@pytest.mark.parametrize("trained_heads", [2, 1])
def test_training_checkpoint_without_model_json_loads_through_the_recipe(tmp_path, trained_heads):
    """A trainer's step-N (bare model.safetensors), also with fewer heads than the recipe says
    (the ntp pipeline trains one)."""
    import dataclasses

    from safetensors.torch import save_file

    from wmtp.eval.target import load_policy, resolve_target
    from wmtp.models.llama_mtp import LlamaMTP
    from wmtp.recipe import load_recipe

    run = tmp_path / "run"
    step = run / "checkpoints" / "step-2"
    step.mkdir(parents=True)
    (run / "recipe.toml").write_text(RECIPE)
    args = tiny_model().args
    args = dataclasses.replace(args, n_future_tokens=trained_heads)  # as the trainer does
    trained = LlamaMTP(args, attention="sdpa").eval()
    sd = {k: v.contiguous() for k, v in trained.state_dict().items()}
    save_file(sd, str(step / "model.safetensors"))

    target = resolve_target(run)
    model, _ = load_policy(target, load_recipe(target.recipe_file).recipe, "cpu")
    tokens = torch.tensor([[256, 100, 101, 102]])
    with torch.no_grad():
        torch.testing.assert_close(model(tokens), trained(tokens))
    result = invoke("eval", run, "--no-progress", "--set", "evaluation.max_problems=1")
    assert result.exit_code == 0, result.output
    assert summary_of(run / "eval" / "step-2")["results"]["unseen"]["problems"] == 1


def test_lora_checkpoint_loads_over_the_recipes_base_model(tmp_path):
    from safetensors.torch import save_file

    from wmtp.eval.target import load_policy, resolve_target
    from wmtp.models.checkpoint import save_wmtp
    from wmtp.models.lora import apply_lora, lora_modules, lora_state_dict
    from wmtp.recipe import load_recipe

    base = tmp_path / "base"
    save_wmtp(tiny_model(), base)
    lora = 'lora = { rank = 4, alpha = 8.0, targets = ["wq", "wv", "w2"] }'
    recipe = RECIPE.replace('flavour = "tiny"', f'path = "{base}"\n{lora}')
    run = tmp_path / "run"
    (run / "checkpoints" / "step-1").mkdir(parents=True)
    (run / "recipe.toml").write_text(recipe)
    tuned = tiny_model()
    apply_lora(tuned, rank=4, alpha=8.0, dropout=0.0, targets=["wq", "wv", "w2"])
    with torch.no_grad():
        for name, param in tuned.named_parameters():
            if "lora" in name:
                param.normal_(0, 0.05)
    lora = {k: v.contiguous() for k, v in lora_state_dict(tuned).items()}
    assert lora
    save_file(lora, str(run / "checkpoints" / "step-1" / "lora.safetensors"))

    target = resolve_target(run)
    loaded = load_recipe(target.recipe_file).recipe
    model, _ = load_policy(target, loaded, "cpu")
    assert not lora_modules(model)  # folded into the base weights: one matmul per projection
    tokens = torch.tensor([[256, 100, 101, 102]])
    with torch.no_grad():
        torch.testing.assert_close(model.eval()(tokens), tuned.eval()(tokens))


def test_evaluation_recipe_names_the_run_to_evaluate(run_dir, tmp_path):
    recipe = tmp_path / "evaluation.toml"
    evaluation = RECIPE.replace('pipeline = "baseline"', 'pipeline = "evaluation"')
    evaluation = evaluation.replace(
        "n_future_tokens = 2", f'n_future_tokens = 2\ncheckpoint = "{run_dir}"'
    )
    recipe.write_text(evaluation.replace("max_problems = 2", "max_problems = 1"))
    result = invoke("eval", recipe, "--no-progress", "--set", "evaluation.n_samples=3")
    assert result.exit_code == 0, result.output
    entry = summary_of(run_dir / "eval" / "step-3")["results"]["unseen"]
    assert entry["problems"] == 1 and entry["samples_per_problem"] == 3


def test_a_downloaded_model_evaluated_with_a_recipe_keeps_its_folder_as_it_was(tmp_path):
    """``wmtp eval MODEL_DIR --recipe R`` over a folder wmtp did not write (Meta's layout, no
    recipe.toml): results go where the recipe's runs go, as through an evaluation recipe."""
    from wmtp.models.checkpoint import write_meta

    meta = write_meta(tiny_model(), tmp_path / "llama-download")
    before = sorted(p.name for p in meta.iterdir())
    recipe = tmp_path / "r.toml"
    recipe.write_text(RECIPE.replace("seed = 7", f'seed = 7\nruns_dir = "{tmp_path / "runs"}"'))
    result = invoke("eval", meta, "--recipe", recipe, "--no-progress", "--set",
                    "evaluation.max_problems=1")  # fmt: skip
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in meta.iterdir()) == before
    out = tmp_path / "runs" / "tiny-eval" / "eval"
    assert summary_of(out)["results"] and "results in" in result.flat


def test_an_evaluation_recipe_whose_inputs_are_missing_says_which_as_wmtp_run_does(tmp_path):
    """``wmtp eval recipes/evaluation.toml`` where nothing is there: every missing input of the
    recipe, located, before anything loads (not only the first)."""
    from tests.train.train_helpers import REPO

    result = invoke("eval", REPO / "recipes" / "evaluation.toml", "--set",
                    f"experiment.runs_dir='{tmp_path}'")  # fmt: skip
    assert result.exit_code == 2, result.output
    assert "paths it names that cannot be used" in result.flat
    for key in ("tokenizer.path", "model.policy.path", "model.policy.checkpoint"):
        assert key in result.flat, key
    assert "Traceback" not in result.output


def test_benchmarks_from_local_files_join_the_summary(run_dir, tmp_path):
    from tests.eval.test_benchmarks import GSM8K_ROWS, MBPP_ROWS, write_jsonl

    gsm8k = write_jsonl(tmp_path / "gsm8k.jsonl", GSM8K_ROWS)
    mbpp = write_jsonl(tmp_path / "mbpp.jsonl", MBPP_ROWS)
    benchmarks = f'evaluation.benchmarks=["gsm8k={gsm8k}", "mbpp={mbpp}"]'
    result = invoke("eval", run_dir, "--no-progress", "--set", benchmarks)
    assert result.exit_code == 0, result.output
    assert "gsm8k" in result.output and "mbpp" in result.output
    step = run_dir / "eval" / "step-3"
    assert sorted(p.name for p in step.iterdir()) == ["gsm8k", "mbpp"]
    assert summary_of(step, "mbpp")["settings"]["source"] == str(mbpp)
    assert summary_of(step, "mbpp")["split"]["seen"] == 0  # HumanEval trained: no MBPP id
    assert "(none of its 148 training problem ids is a mbpp task id)" in result.flat
    lines = (step / "gsm8k" / "samples.jsonl").read_text().splitlines()
    assert [json.loads(x)["task_id"] for x in lines] == ["gsm8k/1"] * 2 + ["gsm8k/2"] * 2


def test_every_benchmark_is_read_before_the_first_generates(run_dir, tmp_path):
    """A bad second benchmark file stops the evaluation before HumanEval generates (on a 7B
    model, hours), each bad entry named with the ``--set`` that gave it."""
    from tests.eval.test_benchmarks import MBPP_ROWS, write_jsonl

    mbpp = write_jsonl(tmp_path / "mbpp.jsonl", [MBPP_ROWS[0], dict(MBPP_ROWS[1], test_list="x")])
    given = f'evaluation.benchmarks=["humaneval", "mbpp={mbpp}", "gsm8k"]'
    result = invoke("eval", run_dir, "--no-progress", "--set", given)
    assert result.exit_code == 2, result.output
    assert (
        f"--set {given}: evaluation.benchmarks[1]: 'mbpp={mbpp}': {mbpp}:2: field " in result.flat
    )
    assert "'test_list' should be a list, got a string" in result.flat
    assert "evaluation.benchmarks[2]: 'gsm8k': benchmark 'gsm8k' reads a local JSONL" in result.flat
    assert not (run_dir / "eval").exists() and "Traceback" not in result.output


def test_validate_reads_an_evaluation_recipes_benchmarks(run_dir, tmp_path, monkeypatch):
    """``wmtp validate`` of an evaluation recipe reads its benchmarks as ``wmtp eval`` will: a
    problem at the recipe's line, exit 2; a file that is not there is a note, as for any input."""
    recipe = tmp_path / "evaluation.toml"
    evaluation = RECIPE.replace('pipeline = "baseline"', 'pipeline = "evaluation"')
    evaluation = evaluation.replace(
        "n_future_tokens = 2", f'n_future_tokens = 2\ncheckpoint = "{run_dir}"'
    )
    (tmp_path / "mbpp").mkdir()
    monkeypatch.chdir(tmp_path)  # benchmark paths are read from the working directory
    monkeypatch.setenv("WMTP_NO_CACHE", "1")
    bad = '["humaneval", "humaneval=", "mbpp=mbpp"]'
    recipe.write_text(evaluation.replace('benchmarks = ["humaneval"]', f"benchmarks = {bad}"))
    result = invoke("validate", recipe)
    assert result.exit_code == 2, result.output
    line = 1 + evaluation.splitlines().index('benchmarks = ["humaneval"]')
    assert (
        f"evaluation.toml:{line}:1: evaluation.benchmarks[1]: 'humaneval=': 'humaneval' twice"
        in result.flat
    )
    assert (
        "evaluation.benchmarks[2]: 'mbpp=mbpp': mbpp: a folder, not a benchmark's JSONL"
        in result.flat
    )
    recipe.write_text(evaluation.replace('["humaneval"]', '["humaneval", "mbpp=gone.jsonl"]'))
    result = invoke("validate", recipe)
    assert result.exit_code == 0, result.output
    assert "input not found: evaluation.toml:" in result.flat
    assert "evaluation.benchmarks[1]: 'gone.jsonl': no mbpp file" in result.flat
    # a training recipe: its names checked (its run's `wmtp eval` reads them), no file read
    training = tmp_path / "training.toml"
    training.write_text(RECIPE.replace('["humaneval"]', '["humaneval", "humaneva", "mbpp=gone"]'))
    result = invoke("validate", training)
    assert result.exit_code == 2 and "evaluation.benchmarks[1]: 'humaneva': unknown" in result.flat
    assert "did you mean 'humaneval'" in result.flat and "gone" not in result.flat


def test_an_evaluation_again_keeps_the_earlier_results(run_dir, tmp_path, caplog):
    """A quick check (n_samples = 1) after a real evaluation of the same checkpoint: the new
    results are the folder's, the earlier ones move to previous/<created>/ and are said to."""
    folder = tmp_path / "eval" / "humaneval"
    assert invoke("eval", run_dir, "--no-progress", "--out", tmp_path / "eval").exit_code == 0
    first = (folder / "samples.jsonl").read_text()
    quick = ["--set", "evaluation.n_samples=1", "--set", "evaluation.k=[1]"]
    with caplog.at_level("WARNING", logger="wmtp.eval.results"):
        result = invoke("eval", run_dir, "--no-progress", "--out", tmp_path / "eval", *quick)
    assert result.exit_code == 0, result.output
    (kept,) = (folder / "previous").iterdir()
    assert (kept / "samples.jsonl").read_text() == first
    assert json.loads((kept / "summary.json").read_text())["decoding"]["n_samples"] == 2
    assert summary_of(tmp_path / "eval")["decoding"]["n_samples"] == 1
    assert f"moved to {kept}" in caplog.text


def test_user_mistakes_are_located_errors(run_dir, tmp_path):
    result = invoke("eval", run_dir, "--set", "evaluation.k=[1, 5]")
    assert result.exit_code == 2 and "n_samples" in result.flat
    result = invoke("eval", tmp_path / "nowhere")
    assert result.exit_code == 2 and "no such run directory" in result.flat
    result = invoke("eval", run_dir, "--set", 'evaluation.benchmarks=["humaneva"]')
    assert result.exit_code == 2 and "did you mean 'humaneval'" in result.flat
    assert "evaluation.benchmarks[0]: 'humaneva'" in result.flat
    result = invoke("eval", run_dir, "--set", "model.policy.n_layers=7")  # not a list of keys
    assert (
        result.exit_code == 2
        and "--set model.policy.n_layers=7: model.policy.n_layers: " in result.flat
    )
    assert "was trained with n_layers = 4 (flavour 'tiny'): its weights fit only" in result.flat
    (tmp_path / "afile").write_text("mine")  # found before the model loads, not at the end
    result = invoke("eval", run_dir, "--out", tmp_path / "afile" / "results")
    assert result.exit_code == 2 and "afile is a file, not a folder" in result.flat
    assert "--out" in result.flat and "Traceback" not in result.output
    assert not (run_dir / "eval").exists() and (tmp_path / "afile").read_text() == "mine"


def test_report_of_a_run_whose_recipe_is_a_folder_says_so(run_dir, tmp_path):
    (run_dir / "recipe.toml").unlink()
    (run_dir / "recipe.toml").mkdir()
    result = invoke("report", run_dir, "--out", tmp_path / "report")
    assert result.exit_code == 2, result.output
    assert f"{run_dir / 'recipe.toml'}: a folder, not the recipe the run ran with" in result.flat
    assert not (tmp_path / "report").exists()


def test_eval_without_bubblewrap_stops_before_decoding(run_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", path_without_bwrap(tmp_path))
    monkeypatch.setenv("WMTP_SANDBOX", "")
    result = invoke("eval", run_dir, "--no-progress")
    assert result.exit_code == 2
    assert "error: sandbox: checking humaneval completions needs bubblewrap" in result.flat
    assert "--sandbox rlimits" in result.flat and "Traceback" not in result.output
    assert not (run_dir / "eval").exists()


def test_eval_with_sandbox_rlimits_runs_without_bubblewrap_and_warns(run_dir, tmp_path):
    args = ["eval", str(run_dir), "--no-progress", "--set", "evaluation.max_problems=1"]
    done = subprocess.run(
        [sys.executable, "-m", "wmtp.cli", *args, "--sandbox", "rlimits"],
        env=child_env(path_without_bwrap(tmp_path)),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    assert done.stderr.count("sandbox: untrusted code runs without bubblewrap") == 1, done.stderr
    said = "as chosen with --sandbox rlimits"  # the option the user typed
    assert said in done.stderr and "does not block network access" in done.stderr
    summary = summary_of(run_dir / "eval" / "step-3")
    assert sum(summary["results"]["unseen"]["statuses"].values()) == 2
    assert summary["sandbox"].startswith("rlimits: ")


def test_wmtp_run_of_an_evaluation_recipe_evaluates(run_dir, tmp_path):
    """`wmtp run` hands an `evaluation` pipeline to the evaluator, like `wmtp eval RECIPE`."""
    recipe = tmp_path / "evaluation.toml"
    evaluation = RECIPE.replace('pipeline = "baseline"', 'pipeline = "evaluation"')
    evaluation = evaluation.replace(
        "n_future_tokens = 2", f'n_future_tokens = 2\ncheckpoint = "{run_dir}"'
    )
    recipe.write_text(evaluation.replace("max_problems = 2", "max_problems = 1"))
    result = invoke("run", recipe)
    assert result.exit_code == 0, result.output
    assert "evaluated; results in" in result.flat
    summary = summary_of(run_dir / "eval" / "step-3")
    assert set(summary["results"]["unseen"]["pass_at_k"]) == {"1", "2"}


def test_a_dry_run_of_an_evaluation_recipe_builds_and_evaluates_nothing(run_dir, tmp_path):
    """`wmtp run EVAL_RECIPE --dry-run` stops once the model is built, as for training: no
    decoding, no code run, no results written or moved aside (it ran the whole evaluation)."""
    recipe = tmp_path / "evaluation.toml"
    evaluation = RECIPE.replace('pipeline = "baseline"', 'pipeline = "evaluation"')
    evaluation = evaluation.replace(
        "n_future_tokens = 2", f'n_future_tokens = 2\ncheckpoint = "{run_dir}"'
    )
    recipe.write_text(evaluation)
    result = invoke("run", recipe, "--dry-run")
    assert result.exit_code == 0, result.output
    assert "dry run: the model and benchmarks built, nothing evaluated" in result.flat
    assert not (run_dir / "eval").exists()


def test_an_evaluation_into_a_log_file_says_how_far_it_is_in_plain_lines(run_dir, tmp_path):
    """Output to a file (nohup, a batch job): rich draws its bars only at the end there, so each
    task also prints plain lines as it goes (every WMTP_PROGRESS_EVERY_S seconds, 0 here)."""
    import os

    done = subprocess.run(
        [sys.executable, "-m", "wmtp.cli", "eval", str(run_dir), "--out", str(tmp_path / "e"),
         "--set", "evaluation.max_problems=2"],
        env={**os.environ, "OMP_NUM_THREADS": "1", "WMTP_PROGRESS_EVERY_S": "0"},
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    lines = done.stdout.splitlines()
    said = [line for line in lines if line.startswith("humaneval: generating:")]
    assert "humaneval: generating: 1/2 (50%)" in said[0] and "2/2 (100%)" in said[-1], lines
    table = next(i for i, line in enumerate(lines) if "pass@" in line)
    assert lines.index(said[0]) < table  # said while it ran, before the results


def test_a_narrow_terminal_shows_the_checkpoint_and_results_paths_whole(run_dir, tmp_path):
    """At 60 columns the paths (longer than that) are never folded inside a word: folded in the
    table's title, ``.../checkpoints/step-12`` then ``0`` read as step 12."""
    import os

    out = tmp_path / "a_results_folder_whose_path_is_longer_than_the_terminal_is_wide"
    done = subprocess.run(
        [sys.executable, "-m", "wmtp.cli", "eval", str(run_dir), "--out", str(out),
         "--no-progress", "--set", "evaluation.max_problems=1"],
        env={**os.environ, "OMP_NUM_THREADS": "1", "COLUMNS": "60"},
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    lines = done.stdout.splitlines()
    checkpoint = str(run_dir / "checkpoints" / "step-3")
    assert len(checkpoint) > 60 and any(line.endswith(f" {checkpoint}") for line in lines)
    assert f"results in {out}" in lines, done.stdout
    assert any("pass@1" in line for line in lines)


def test_a_file_where_a_benchmarks_results_go_is_named_before_the_model_loads(run_dir, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "humaneval").write_text("my notes")
    result = invoke("eval", run_dir, "--no-progress", "--out", out)
    assert result.exit_code == 2 and "Traceback" not in result.output, result.output
    assert f"--out {out}: humaneval there is a file, where the results of benchmark" in result.flat
    assert (out / "humaneval").read_text() == "my notes"


def test_prompts_that_fill_the_models_context_are_named(run_dir, tmp_path, caplog):
    """A prompt that leaves no room for a completion is scored (as failed) and named, not
    dropped silently: HumanEval/141 in the alpaca template is over 1,024 bytes."""
    sets = ["evaluation.max_problems=16", "evaluation.n_samples=1", "evaluation.k=[1]"]
    sets += ["evaluation.temperature=0", "evaluation.max_new_tokens=2"]
    args = [x for s in sets for x in ("--set", s)]
    with caplog.at_level("WARNING", logger="wmtp.eval.completions"):
        result = invoke("eval", run_dir, "--no-progress", *args, "--out", tmp_path / "eval")
    assert result.exit_code == 0, result.output
    assert "1 of 16 prompts fill the model's context of 1024 tokens" in caplog.text
    assert "HumanEval/141" in caplog.text
    samples = (tmp_path / "eval" / "humaneval" / "samples.jsonl").read_text().splitlines()
    full = [json.loads(x) for x in samples if '"HumanEval/141"' in x]
    assert [(x["n_tokens"], x["status"]) for x in full] == [(0, "failed")]


def wmtp_subprocess(*args) -> subprocess.CompletedProcess:
    """``python -m wmtp.cli ARGS`` in a child process (torchrun needs one of its own)."""
    import os

    env = dict(os.environ, OMP_NUM_THREADS="1", WMTP_DIST_TIMEOUT_S="120")
    return subprocess.run(
        [sys.executable, "-m", "wmtp.cli", *map(str, args)],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


def written(folder: Path) -> dict:
    """What an evaluation wrote that does not depend on timing or on the sandbox's folders."""
    samples = [json.loads(x) for x in (folder / "samples.jsonl").read_text().splitlines()]
    for sample in samples:
        del sample["duration_s"], sample["detail"]
    summary = json.loads((folder / "summary.json").read_text())
    return {
        "samples": samples,
        "problems": (folder / "problems.jsonl").read_text(),
        "results": summary["results"],
        "split": summary["split"],
        "tokens": summary["generation"]["tokens"],
    }


@pytest.mark.slow
def test_two_processes_write_what_one_writes(run_dir, tmp_path):
    """``wmtp eval --nproc-per-node 2`` (torchrun, gloo): each rank decodes and checks every
    other problem, rank 0 writes the lot, in the problems' order: the files one process writes,
    one table, one warning."""
    sets = ["--set", "evaluation.max_problems=3"]  # shares of 2 and 1 problems
    one = invoke("eval", run_dir, "--no-progress", "--out", tmp_path / "one", *sets)
    assert one.exit_code == 0, one.output
    two = wmtp_subprocess(
        "eval", run_dir, "--nproc-per-node", "2", "--out", tmp_path / "two", *sets
    )
    assert two.returncode == 0, two.stdout[-3000:] + two.stderr[-3000:]
    assert written(tmp_path / "two" / "humaneval") == written(tmp_path / "one" / "humaneval")
    generation = summary_of(tmp_path / "two")["generation"]
    assert generation["ranks"] == 2 and len(generation["seconds_by_rank"]) == 2
    assert generation["completions"] == 6 and generation["steps"]["rows_started"] == 6
    flat = " ".join(two.stdout.split())
    assert flat.count("pass@1") == 1 and "on 2 ranks" in flat
    assert two.stderr.count("untrusted code runs without bubblewrap") <= 1, two.stderr
    assert "Traceback" not in two.stdout + two.stderr


@pytest.mark.slow
def test_wmtp_run_of_an_evaluation_recipe_on_two_processes(run_dir, tmp_path):
    """``wmtp run RECIPE --nproc-per-node 2`` of an evaluation recipe (README: Several GPUs):
    one problem for two ranks, so rank 1's share is empty; rank 0 writes the run's results."""
    recipe = tmp_path / "evaluation.toml"
    evaluation = RECIPE.replace('pipeline = "baseline"', 'pipeline = "evaluation"')
    evaluation = evaluation.replace(
        "n_future_tokens = 2", f'n_future_tokens = 2\ncheckpoint = "{run_dir}"'
    )
    recipe.write_text(evaluation.replace("max_problems = 2", "max_problems = 1"))
    done = wmtp_subprocess("run", recipe, "--nproc-per-node", "2")
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert " ".join(done.stdout.split()).count("evaluated; results in") == 1
    summary = summary_of(run_dir / "eval" / "step-3")
    assert summary["results"]["unseen"]["problems"] == 1
    assert summary["generation"]["ranks"] == 2 and summary["generation"]["completions"] == 2


def test_a_mistake_is_reported_once_before_any_worker_starts(run_dir):
    result = invoke("eval", run_dir, "--nproc-per-node", "2", "--set", "evaluation.k=[1, 5]")
    assert result.exit_code == 2 and "n_samples" in result.flat
    assert "launching" not in result.flat and not (run_dir / "eval").exists()


@pytest.mark.slow
def test_an_evaluation_killed_part_way_takes_up_what_it_finished(run_dir, tmp_path):
    """SIGKILL once a few problems are judged (their samples and verdicts appended to
    .partial-<key>/rank0.jsonl, the last line cut short here as a kill may leave it), then the
    same command again: only the other problems decode, and the files equal an uninterrupted
    run's."""
    import signal

    sets = LONGER_EVAL
    whole = invoke("eval", run_dir, "--no-progress", "--out", tmp_path / "whole", *sets)
    assert whole.exit_code == 0, whole.output

    out = tmp_path / "killed"
    child = _eval_in_a_child(run_dir, out)
    _wait_for_finished_problems(child, out, 3)
    child.send_signal(signal.SIGKILL)
    child.wait()
    (partial,) = out.glob("humaneval/.partial-*/rank0.jsonl")
    with partial.open("a") as f:
        f.write('{"task_id": "HumanEval/1", "samp')  # a line a kill cut short

    again = invoke("eval", run_dir, "--no-progress", "--out", out, *sets)
    assert again.exit_code == 0, again.output
    resumed, uninterrupted = written(out / "humaneval"), written(tmp_path / "whole" / "humaneval")
    assert resumed.pop("tokens") < uninterrupted.pop("tokens")  # tokens decoded by this run
    assert resumed == uninterrupted  # samples, verdicts, pass@k
    summary = summary_of(out)
    finished = summary["resumed_problems"]
    assert 3 <= finished < 16
    assert summary["generation"]["completions"] == 2 * (16 - finished)  # only the others decoded
    assert not list(out.glob("humaneval/.partial-*")), "the partial results stay after the end"


@pytest.mark.slow
@pytest.mark.parametrize("sig", ["SIGINT", "SIGTERM"])
def test_a_stop_signal_during_an_evaluation_says_what_it_keeps(run_dir, tmp_path, sig):
    """Ctrl-C or SIGTERM part way: exit 128 + the signal, one line saying how many problems
    finished and where they are kept (no traceback); the same command takes them up."""
    import signal

    sets = LONGER_EVAL
    out = tmp_path / "stopped"
    child = _eval_in_a_child(run_dir, out)
    _wait_for_finished_problems(child, out, 2)
    child.send_signal(getattr(signal, sig))
    _, err = child.communicate(timeout=120)
    flat = " ".join(err.split())
    assert child.returncode == 128 + getattr(signal, sig), err[-2000:]
    assert f"stopped: {sig} during humaneval: " in flat and "Traceback" not in err, err[-2000:]
    assert "of 16 problems finished are kept in" in flat and "the same command goes on" in flat
    kept = int(flat.split(f"stopped: {sig} during humaneval: ")[1].split(" of 16")[0])
    again = invoke("eval", run_dir, "--no-progress", "--out", out, *sets)
    assert again.exit_code == 0, again.output
    assert summary_of(out)["resumed_problems"] >= kept >= 2


def test_the_progress_of_a_stopped_evaluation_says_it_stopped_where_it_stood(run_dir, tmp_path):
    """Ctrl-C once the first problem's two samples are checked: the bars (drawn at the end, off a
    terminal) say stopped, at what was done of all the problems' checks, never 100%."""
    import os
    import re

    sets = ["--set", "evaluation.max_problems=4", "--set", "evaluation.max_new_tokens=64",
            "--set", "evaluation.batch_size=2"]  # fmt: skip  # one problem after another
    done = subprocess.run(
        [sys.executable, "-m", "tests.signal_at", "wmtp.sandbox:check:after:SIGINT:2", "--",
         "eval", str(run_dir), "--out", str(tmp_path / "e"), *sets],
        env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 130, done.stderr[-2000:]
    assert "stopped: SIGINT during humaneval: 1 of 4 problems finished" in done.stderr
    bars = [line for line in done.stdout.splitlines() if line.startswith("humaneval: ")]
    checked = re.search(r"^humaneval: checking \(stopped\): (\d+)/8 ", done.stdout, re.M)
    assert checked and 2 <= int(checked.group(1)) < 8, done.stdout  # 4 problems x 2 samples
    assert any(line.startswith("humaneval: generating (stopped)") for line in bars), bars
    assert not [line for line in bars if "100%" in line], bars


@pytest.mark.slow
def test_a_second_evaluation_into_the_same_folder_is_refused_while_one_writes(run_dir, tmp_path):
    """Two `wmtp eval` into one folder: the second is refused at once (exit 2, the first's pid,
    no traceback) and changes nothing; the first finishes as if alone, and the folder is free
    again after it."""
    sets = LONGER_EVAL
    out = tmp_path / "shared"
    first = _eval_in_a_child(run_dir, out)
    _wait_for_finished_problems(first, out, 1)
    partial_before = {p: p.read_bytes() for p in out.glob("humaneval/.partial-*/rank0.jsonl")}

    second = invoke("eval", run_dir, "--no-progress", "--out", out, *sets)
    assert second.exit_code == 2, second.output
    assert f"cannot evaluate into {out}: another evaluation writes its results there now " \
        f"(pid {first.pid} on " in second.flat and "--out" in second.flat  # fmt: skip
    assert "Traceback" not in second.output
    for path, before in partial_before.items():  # the second wrote nothing of its own
        assert path.read_bytes().startswith(before)

    _, err = first.communicate(timeout=300)
    assert first.returncode == 0, err[-2000:]
    assert summary_of(out)["results"]["unseen"]["problems"] == 16
    assert not (out / ".eval.lock").exists()  # let go and removed
    again = invoke("eval", run_dir, "--no-progress", "--out", out, *sets)
    assert again.exit_code == 0, again.output


LONGER_EVAL = ["--set", "evaluation.max_problems=16", "--set", "evaluation.max_new_tokens=64",
               "--set", "evaluation.batch_size=2"]  # fmt: skip  # one problem after another
"""Settings of an evaluation long enough to be stopped part way (seconds on the CPU)."""


def _eval_in_a_child(run_dir, out) -> subprocess.Popen:
    """``wmtp eval RUN --out OUT`` with :data:`LONGER_EVAL`, started in a child process (its
    stderr piped, as text)."""
    args = [sys.executable, "-m", "wmtp.cli", "eval", str(run_dir), "--no-progress", "--out",
            str(out), *LONGER_EVAL]  # fmt: skip
    return subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def _wait_for_finished_problems(child: subprocess.Popen, out, n: int) -> None:
    """Until the evaluation ``child`` writing into ``out`` has recorded ``n`` finished problems
    in its partial results (it must still be running then)."""
    import time

    deadline, lines = time.monotonic() + 120, []
    while child.poll() is None and time.monotonic() < deadline and len(lines) < n:
        time.sleep(0.02)
        lines = [line for f in out.glob("humaneval/.partial-*/rank0.jsonl")
                 for line in f.read_text().splitlines()]  # fmt: skip
    assert child.poll() is None, "the evaluation ended before it could be stopped"
