"""The model card's facts from the run: the latest ``wmtp eval`` of the exported checkpoint (where
eval writes today, and per step and benchmark), training steps and tokens."""

from __future__ import annotations

import json
import shutil

from tests.export.export_helpers import export


def test_the_card_shows_the_latest_eval_of_that_checkpoint(tiny_run, tmp_path):
    from typer.testing import CliRunner

    from wmtp.cli import app

    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    sets = ["--set", "evaluation.max_problems=1", "--set", "evaluation.max_new_tokens=4"]
    args = ["eval", str(run), "--no-progress", "--sandbox", "rlimits", *sets]
    assert CliRunner().invoke(app, args).exit_code == 0
    assert export(run, "--to", "meta", "--out", tmp_path / "a").exit_code == 0
    card = (tmp_path / "a" / "README.md").read_text()
    assert "| benchmark | pass@1 | details |" in card and "| humaneval | 0.0% |" in card
    assert "unseen problems 1" in card

    per_step = run / "eval" / "step-3" / "mbpp" / "summary.json"  # one summary per benchmark
    per_step.parent.mkdir(parents=True)
    unseen = {"pass_at_k": {"1": 0.25, "10": 0.5}, "pass_at_k_stderr": {"1": 0.1, "10": 0.2}}
    unseen.update(problems=4, samples_per_problem=10)
    per_step.write_text(json.dumps({"benchmark": "mbpp", "results": {"unseen": unseen}}))
    assert export(run, "--to", "meta", "--out", tmp_path / "b").exit_code == 0
    card = (tmp_path / "b" / "README.md").read_text()
    assert "| mbpp | 25.0% | 50.0% | unseen problems 4, n 10, ± s.e. pass@1 10.0%" in card


def test_eval_of_another_checkpoint_is_not_this_ones(tmp_path):
    from wmtp.export.run_info import eval_results

    run, step = tmp_path / "run", tmp_path / "run" / "checkpoints" / "step-3"
    step.mkdir(parents=True)
    other = run / "eval" / "step-1" / "humaneval" / "summary.json"  # another checkpoint's
    other.parent.mkdir(parents=True)
    unseen = {"pass_at_k": {"1": 0.5}, "problems": 2}
    other.write_text(json.dumps({"results": {"unseen": unseen}}))
    assert eval_results(step, run, 3) == []
    torn = run / "eval" / "step-3" / "humaneval" / "summary.json"
    torn.parent.mkdir(parents=True)
    torn.write_text("{ torn")
    assert eval_results(step, run, 3) == []


def test_tokens_are_summed_when_every_step_was_logged_else_estimated(tmp_path):
    from wmtp.export.run_info import training_summary

    records = [{"step": s, "loss": 1.0, "tokens": 100 * s} for s in (1, 2, 3, 4)]
    lines = [json.dumps(r) for r in records] + [json.dumps({"step": 3, "tokens": 300}), "{torn"]
    (tmp_path / "metrics.jsonl").write_text("\n".join(lines))
    exact = training_summary(tmp_path, 4)
    assert (exact.steps, exact.tokens, exact.tokens_exact) == (4, 1000, True)
    assert training_summary(tmp_path, 3).tokens == 600
    logged_every_other = [json.dumps({"step": s, "tokens": 100}) for s in (2, 4)]
    (tmp_path / "metrics.jsonl").write_text("\n".join(logged_every_other))
    estimate = training_summary(tmp_path, 4)
    assert (estimate.tokens, estimate.tokens_exact, estimate.logged_steps) == (400, False, 2)


def test_an_export_of_an_export_keeps_its_provenance_and_eval(tiny_run, tmp_path):
    first, second = tmp_path / "first", tmp_path / "second"
    assert export(tiny_run, "--to", "hf", "--out", first).exit_code == 0
    results = first / "eval" / "humaneval" / "summary.json"
    results.parent.mkdir(parents=True)
    results.write_text(json.dumps({"results": {"unseen": {"pass_at_k": {"1": 0.125}}}}))
    result = export(first, "--to", "meta", "--out", second)
    assert result.exit_code == 0, result.output
    for name in ("training_recipe.toml", "fingerprint.json"):
        assert (second / name).read_text() == (first / name).read_text(), name
    assert (second / "training_recipe.toml").read_text() == (tiny_run / "recipe.toml").read_text()
    assert "| humaneval | 12.5% |" in (second / "README.md").read_text()
