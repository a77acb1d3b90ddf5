"""The step benchmark's code path on CPU (figures come from GPUs; this checks it runs and counts)."""

from dataclasses import replace

import torch

from wmtp.bench.step import StepConfig, bench_step
from wmtp.models.args import FLAVOURS


def test_step_bench_runs_training_steps_on_cpu():
    args = replace(FLAVOURS["tiny"], vocab_size=97, n_future_tokens=2)
    cfg = StepConfig(batch=2, seq_len=32, attention="sdpa", compile=False)
    result = bench_step(args, cfg, label="tiny", warmup=1, repeats=2, device="cpu")
    assert result.step.repeats == 2
    assert result.step.min_ms <= result.step.median_ms <= result.step.max_ms
    assert result.tokens_per_s == 2 * 32 / (result.step.median_ms / 1e3)
    assert result.config["n_future_tokens"] == 2 and result.config["attention_resolved"] == "sdpa"


def test_step_bench_with_frozen_critic_on_cpu():
    args = replace(FLAVOURS["tiny"], vocab_size=97, n_future_tokens=2)
    cfg = StepConfig(batch=1, seq_len=16, attention="sdpa", compile=False, critic=args)
    result = bench_step(args, cfg, label="verifiable", warmup=1, repeats=1, device="cpu")
    assert result.config["critic"] is True
    assert torch.isfinite(torch.tensor(result.tokens_per_s))
