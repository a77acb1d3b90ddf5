"""``wmtp bench suite``'s headline ratio compares wmtp and the Hugging Face peer each at its own
best micro-batch, over the same micro-batches (the figures are fakes: the suite needs CUDA)."""

import pytest

from wmtp.bench import suite
from wmtp.bench.hf_peer import PeerResult
from wmtp.bench.step import StepResult
from wmtp.bench.timing import Timing

PEER_TOKENS_PER_S = {2: 600.0, 4: 800.0, 8: 900.0}
"""A peer that gains with its micro-batch, as the H200's did (hf+compile: b2 63.6k, b8 77.2k)."""
WMTP_TOKENS_PER_S = {2: 700.0, 4: 1000.0, 8: 1100.0}


def _fake_peer(args, *, batches, seq_len, compile, attn_implementation, **timing):
    name = f"hf-{attn_implementation}{'+compile' if compile else ''}"
    step = Timing(1.0, 1.0, 1.0, 1)
    return [PeerResult(name, b, PEER_TOKENS_PER_S[b], 0.1, 989.0, 1.0, step) for b in batches]


def _fake_step(recipe, *, label):
    b = recipe.training.micro_batch_size
    tokens_per_s = WMTP_TOKENS_PER_S[b] / (1.2 if recipe.model.policy.n_future_tokens > 1 else 1)
    step = Timing(1000 / tokens_per_s, 1.0, 1.0, 1)
    return StepResult(label, tokens_per_s, 0.1, 989.0, 1.0, step, {"micro_batch_size": b})


def test_the_suite_compares_each_side_at_its_best_micro_batch(tmp_path, monkeypatch):
    monkeypatch.setattr(suite, "bench_hf", _fake_peer)
    monkeypatch.setattr(suite, "bench_step", _fake_step)
    monkeypatch.setattr(suite, "static_compile_shapes", lambda: None)
    monkeypatch.setattr(suite.torch.cuda, "get_device_name", lambda *a: "NVIDIA H200")
    monkeypatch.setattr(suite.torch.cuda, "empty_cache", lambda: None)
    result = suite.run_suite(tmp_path)
    assert result["step_tokens_per_s_ratio_vs_hf_compile"] == pytest.approx(1100.0 / 900.0)
    assert result["ntp_best_micro_batch"] == 8 and result["hf_compile_best_micro_batch"] == 8
    measured = {(p["name"], p["micro_batch"]) for p in result["peers"]}
    assert {b for name, b in measured if name == "hf-sdpa+compile"} == set(suite.MICRO_BATCHES)
    assert "(b8, b8): 1.22x" in (tmp_path / "h200_suite.md").read_text()
