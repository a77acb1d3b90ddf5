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


def test_a_model_wmtp_did_not_train_is_not_said_to_be_trained(tmp_path):
    """A model directory with only its tokenizer beside it: the recipe made to read it is an
    evaluation, which trains nothing, so the card claims no training by wmtp."""
    from tests.export.test_tokenizers import model_dir
    from wmtp.export.tokenizer_files import byte_level_tokenizer

    source = model_dir(tmp_path / "base", 259)
    byte_level_tokenizer().save(str(source / "tokenizer.json"))
    result = export(source, "--to", "hf", "--out", tmp_path / "out")
    assert result.exit_code == 0, result.output
    card = (tmp_path / "out" / "README.md").read_text()
    assert "trained with wmtp" not in card and "the resolved recipe that trained it" not in card
    assert f"exported by wmtp from `{source}`, which wmtp did not train" in card


def test_an_earlier_checkpoint_with_one_head_in_bf16_is_described_as_written(tmp_path):
    """The printed summary and the card name the step, dtype, heads and size of what the folder
    holds, read back from the files; the weights are that step's."""
    import torch
    from safetensors.torch import load_file

    from tests.export.export_helpers import logits, train, wmtp_model
    from tests.train.train_helpers import TINY

    run = train(tmp_path, TINY, "training.checkpoint_every=1", "training.keep_last=3")
    step_2, out = run / "checkpoints" / "step-2", tmp_path / "out"
    result = export(step_2, "--to", "hf", "--out", out, "--heads", "1", "--dtype", "bfloat16")
    assert result.exit_code == 0, result.output
    assert "(step 2) ->" in result.flat and "(hf, bfloat16, 1 head)" in result.flat
    weights = load_file(out / "model.safetensors")
    assert {t.dtype for t in weights.values()} == {torch.bfloat16}
    card = (out / "README.md").read_text()
    size = sum(t.numel() for t in weights.values())
    assert "its next-token head (of the 2 it trained)" in card
    assert f"bfloat16, {size:,} parameters" in card and f"run {run.name}, step 2" in card
    config = json.loads((out / "config.json").read_text())
    sizes = f"vocabulary {config['vocab_size']}, context {config['max_position_embeddings']})"
    assert sizes in card  # the context: params.json of --to meta leaves it to Meta's loader
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    tokens = sum(int(r["tokens"]) for r in records if r.get("step") in (1, 2) and "tokens" in r)
    assert f"- steps: 2\n- input tokens: {tokens:,}\n" in card
    exported = logits(wmtp_model(out))  # bf16 weights, computed in bf16 as the export's recipe says

    def rounded(path):
        return logits(wmtp_model(path).to(torch.bfloat16))[:, :, :1]

    assert torch.equal(exported, rounded(step_2)) and not torch.equal(exported, rounded(run))


def test_an_export_of_an_export_names_the_run_and_its_training_when_the_run_is_gone(
    tiny_run, tmp_path
):
    """The first export's marker records the run, step and training facts it was made from;
    the second export's card shows them, though the run is gone by then."""
    run = tmp_path / "runs" / tiny_run.name
    shutil.copytree(tiny_run, run)
    first, second = tmp_path / "first", tmp_path / "second"
    assert export(run, "--to", "meta", "--out", first).exit_code == 0
    shutil.rmtree(run)
    result = export(first, "--to", "hf", "--out", second)
    assert result.exit_code == 0, result.output
    card, first_card = (second / "README.md").read_text(), (first / "README.md").read_text()
    assert f"# tiny: run {run.name}, step 3\n" in card
    assert "wmtp_export.json" in result.flat and "- `wmtp_export.json`" in card  # the marker too
    training = first_card.split("## Training")[1].split("- recipe:")[0]
    assert "- steps: 3\n- input tokens: " in training and training in card
    made_from = json.loads((second / "wmtp_export.json").read_text())["made_from"]
    assert (made_from["checkpoint"], made_from["run"], made_from["step"]) == (
        str(first),
        str(run),
        3,
    )


def test_a_critic_export_says_how_a_critic_is_used_and_gives_no_generation_advice(
    critic_run, tmp_path
):
    """A value model generates nothing: its card names no `wmtp eval` / `bench decode` (both
    refuse it) and gives the `[model.critic]` section a later recipe uses, which loads."""
    from typer.testing import CliRunner

    from tests.export.export_helpers import in_repo
    from wmtp.cli import app
    from wmtp.recipe._toml import loads as toml_loads

    out = tmp_path / "critic"
    result = export(critic_run, "--to", "wmtp", "--out", out)
    assert result.exit_code == 0, result.output
    assert "(wmtp, float32, value model)" in result.flat and "1 head" not in result.flat
    card = (out / "README.md").read_text()
    usage = card.split("## Use it")[1].split("## Tokenizer")[0]
    assert "wmtp eval " not in usage and "wmtp bench decode --checkpoint" not in usage
    assert "Generation stops" not in card and "text-generation" not in card
    section = toml_loads(usage.split("```toml")[1].split("```")[0])["model"]["critic"]
    assert section["path"] == str(out) and section["kind"] == "value_model"
    sets = [f"model.critic.path='{section['path']}'", "model.critic.checkpoint=''"]
    args = ["validate", "recipes/tiny_verifiable.toml", "--env"]
    with in_repo():
        result = CliRunner().invoke(app, [*args, *[a for s in sets for a in ("--set", s)]])
    assert result.exit_code == 0, result.output
