"""`wmtp bench decode` on CPU with a tiny random model: the figures file and its fields."""

import json

from typer.testing import CliRunner

from wmtp.cli import app


def test_bench_decode_writes_plain_and_speculative_figures(tmp_path):
    out = tmp_path / "decode.json"
    args = ["bench", "decode", "--flavour", "tiny", "--n-future-tokens", "2", "--prompts", "1"]
    result = CliRunner().invoke(app, [*args, "--new-tokens", "6", "--out", str(out)])
    assert result.exit_code == 0, result.output
    figures = json.loads(out.read_text())
    assert figures["n_future_tokens"] == 2 and figures["batch_size"] == 1
    spec = figures["as_loaded"]["speculative"]
    assert 0.0 <= spec["acceptance_rate"] <= 1.0 and spec["tokens_per_forward"] >= 1.0
    assert figures["as_loaded"]["identical_outputs"] == "1/1"  # greedy: exactly the same


def test_bench_decode_sampled_reports_acceptance_per_head(tmp_path):
    out = tmp_path / "decode.json"
    args = ["bench", "decode", "--flavour", "tiny", "--n-future-tokens", "3", "--prompts", "2"]
    sampled = ["--temperature", "0.8", "--top-p", "0.95", "--new-tokens", "12"]
    result = CliRunner().invoke(app, [*args, *sampled, "--out", str(out)])
    assert result.exit_code == 0, result.output
    figures = json.loads(out.read_text())["as_loaded"]
    assert figures["sampling"] == {"temperature": 0.8, "top_p": 0.95}
    assert set(figures["speculative"]["acceptance_by_head"]) == {"2", "3"}
    assert figures["identical_outputs"] is None  # sampled: other draws, nothing to compare


def test_bench_decode_needs_one_model_source():
    result = CliRunner().invoke(app, ["bench", "decode"])
    assert result.exit_code == 2 and "exactly one of --flavour and --checkpoint" in result.output
