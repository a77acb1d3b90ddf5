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


def test_bench_decode_needs_one_model_source():
    result = CliRunner().invoke(app, ["bench", "decode"])
    assert result.exit_code == 2 and "exactly one of --flavour and --checkpoint" in result.output
