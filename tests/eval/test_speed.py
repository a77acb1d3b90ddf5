"""The decode-throughput benchmark runs and reports consistent figures (no timing asserted)."""

from __future__ import annotations

import json

from typer.testing import CliRunner

from wmtp.cli import app
from wmtp.eval.speed import main


def test_speed_on_a_random_tiny_flavour(tmp_path):
    out = tmp_path / "speed.json"
    main(
        [
            "--flavour", "tiny", "--n-future-tokens", "3", "--dtype", "float32",
            "--prompts", "2", "--prompt-len", "12", "--new-tokens", "16",
            "--agreeing-heads", "--out", str(out),
        ]
    )  # fmt: skip
    result = json.loads(out.read_text())
    assert result["n_future_tokens"] == 3 and result["batch_size"] == 1
    assert result["device"] == "cpu" and result["dtype"] == "float32"
    for case in ("as_loaded", "agreeing_heads"):
        figures = result[case]
        assert figures["identical_outputs"] == "2/2"  # speculative decoding is greedy decoding
        assert figures["plain"]["tokens_per_s"] > 0 and figures["plain"]["ttft_s"] > 0
        assert 1 <= figures["speculative"]["tokens_per_forward"] <= 3
    # rigged heads: every draft is accepted; random ones rarely
    assert result["agreeing_heads"]["speculative"]["acceptance_rate"] == 1.0
    assert result["as_loaded"]["speculative"]["acceptance_rate"] < 0.5


def test_bench_decode_with_agreeing_heads_commits_a_token_per_head_per_verify_forward(tmp_path):
    """``tokens_per_forward`` is what ``wmtp eval``'s summary calls so: tokens per verify forward,
    the prompt forward's first token apart. Every draft accepted, 16 = 1 + 5 x 3 with 3 heads."""
    out = tmp_path / "decode.json"
    args = ["bench", "decode", "--flavour", "tiny", "--n-future-tokens", "3", "--prompts", "2"]
    args += ["--new-tokens", "16", "--agreeing-heads", "--out", str(out)]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    speculative = json.loads(out.read_text())["agreeing_heads"]["speculative"]
    assert speculative["acceptance_rate"] == 1.0 and speculative["tokens_per_forward"] == 3.0
