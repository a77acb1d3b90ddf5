"""`wmtp eval RUN --set model.policy.max_seq_len=N`: a shorter context at evaluation is not
refused for the run's data.max_length (a training setting evaluation never reads); prompts that
fill that context are named, as for any context. Training with it is still refused."""

from __future__ import annotations

import json

from typer.testing import CliRunner

from tests.eval.tiny_runs import policy, train
from wmtp.cli import app


def invoke(*args):
    """Run ``wmtp ARGS``; the output with rich's line wrapping undone."""
    result = CliRunner().invoke(app, [*map(str, args)])
    result.flat = " ".join(result.output.split())
    return result


def test_an_evaluation_of_a_shorter_context_runs_and_names_the_prompts_that_fill_it(
    tmp_path, caplog
):
    run = train(tmp_path, "tiny", "baseline", policy())  # data.max_length = max_seq_len = 128
    sets = ["model.policy.max_seq_len=64", "evaluation.max_problems=2"]
    sets += ["evaluation.n_samples=1", "evaluation.k=[1]", "evaluation.max_new_tokens=2"]
    args = [a for s in sets for a in ("--set", s)]
    out = tmp_path / "eval"
    with caplog.at_level("WARNING", logger="wmtp.eval.completions"):
        result = invoke("eval", run, "--no-progress", *args, "--out", out)
    assert result.exit_code == 0, result.output
    assert "2 of 2 prompts fill the model's context of 64 tokens (max_seq_len)" in caplog.text
    assert "generation (humaneval): no token generated (no decoding step ran)" in result.flat
    assert "0 tokens/s" not in result.flat
    samples = (out / "humaneval" / "samples.jsonl").read_text().splitlines()
    assert [(json.loads(x)["n_tokens"], json.loads(x)["status"]) for x in samples] == [
        (0, "failed")
    ] * 2
    trains = invoke("validate", run, "--set", "model.policy.max_seq_len=64")  # its rows: 128
    assert trains.exit_code == 2, trains.output
    assert "data.max_length = 128 is longer than model.policy.max_seq_len = 64" in trains.flat
