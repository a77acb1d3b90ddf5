"""The step benchmark's code path on CPU (figures come from GPUs; this checks it runs and counts)."""

import json
from dataclasses import replace

import pytest
import torch

from wmtp.bench.step import StepConfig, bench_step
from wmtp.models.args import FLAVOURS

from ..parallel.test_fsdp import launch


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


TWO_RANKS = """
import json, os, sys
from dataclasses import replace
from wmtp.bench.step import StepConfig, bench_step
from wmtp.models.args import FLAVOURS
from wmtp.parallel import teardown
args = replace(FLAVOURS["tiny"], vocab_size=97, n_future_tokens=2)
cfg = StepConfig(batch=1, seq_len=16, attention="sdpa", compile=False, sharding="shard_grad_op")
result = bench_step(args, cfg, label="fsdp", warmup=1, repeats=2, device="cpu")
teardown()
if os.environ["RANK"] == "0":
    with open(sys.argv[1], "w") as f:
        json.dump(result.to_dict(), f)
"""


@pytest.mark.slow
def test_step_bench_under_two_gloo_ranks_counts_both_ranks_tokens(tmp_path):
    """Launched as two ranks, the step runs FSDP2 and tokens/s is the job's (both ranks')."""
    script = tmp_path / "two_ranks.py"
    script.write_text(TWO_RANKS)
    procs = launch(2, [str(tmp_path / "result")], script)
    for p in procs:
        output, _ = p.communicate(timeout=240)
        assert p.returncode == 0, output
    result = json.loads((tmp_path / "result").read_text())
    assert result["world_size"] == 2
    median_s = result["step"]["median_ms"] / 1e3
    assert result["tokens_per_s"] == pytest.approx(2 * 1 * 16 / median_s)
