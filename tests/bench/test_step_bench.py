"""``wmtp bench step`` on CPU: it times the trainer's own step (figures come from GPUs; this
checks that the path runs what `wmtp run` runs, and counts what it should)."""

import gzip
import json
import subprocess
import sys

import pytest

from tests.train.train_helpers import REPO, TINY
from wmtp.bench.step import bench_step
from wmtp.recipe import load_recipe

from ..parallel.test_fsdp import launch

SMALL = [
    "parallel.device='cpu'",
    "data.max_length=32",
    "training.micro_batch_size=2",
    "training.grad_accum_steps=2",
]


def tiny(*extra: str):
    return load_recipe(TINY, [*SMALL, *extra]).recipe


def test_step_bench_times_the_trainers_step_on_synthetic_batches(monkeypatch):
    import wmtp.train.loop as loop

    steps = []
    real = loop.Trainer.train_step
    monkeypatch.setattr(
        loop.Trainer, "train_step", lambda self, f: steps.append(1) or real(self, f)
    )
    result = bench_step(tiny(), label="tiny", warmup=1, repeats=2)
    assert len(steps) == 3  # warm-up + repeats, all through Trainer.train_step
    assert result.step.repeats == 2
    assert result.step.min_ms <= result.step.median_ms <= result.step.max_ms
    # every row is data.max_length tokens: micro-batch x accumulation x 32 per step
    assert result.tokens_per_s == pytest.approx(2 * 2 * 32 / (result.step.median_ms / 1e3))
    assert result.config["n_future_tokens"] == 2 and result.config["attention"] == "sdpa"
    assert result.config["mtp_loss"] == "per_head" and not result.config["one_backward"]


def test_step_bench_of_the_verifiable_pipeline_runs_its_frozen_critic():
    critic = "model.critic={kind='value_model', flavour='tiny', dtype='float32', attention='sdpa'}"
    recipe = tiny("experiment.pipeline='verifiable'", critic, "weighting={kind='td'}")
    result = bench_step(recipe, label="verifiable", warmup=1, repeats=1)
    assert result.config["frozen"] == ["critic"] and result.config["pipeline"] == "verifiable"
    assert result.tokens_per_s > 0


def test_step_bench_of_the_critic_pipeline_reads_pairs():
    critic = "model.critic={kind='value_model', flavour='tiny', dtype='float32', attention='sdpa'}"
    pairs = "data.pairs={length_bins=[64]}"
    recipe = tiny("experiment.pipeline='critic'", critic, pairs)
    result = bench_step(recipe, label="critic", warmup=0, repeats=1)
    # a pair is two rows: chosen and rejected
    assert result.tokens_per_s == pytest.approx(2 * 2 * 2 * 32 / (result.step.median_ms / 1e3))


def test_step_bench_command_writes_its_figures(tmp_path):
    sets = [a for s in SMALL for a in ("--set", s)]
    cmd = [sys.executable, "-m", "wmtp.cli", "bench", "step", str(TINY), *sets, "--out"]
    done = subprocess.run(
        [*cmd, str(tmp_path), "--warmup", "0", "--repeats", "1", "--profile", "1"],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    result = json.loads((tmp_path / "tiny.json").read_text())
    assert result["world_size"] == 1 and result["config"]["pipeline"] == "baseline"
    assert "tokens/s" in done.stdout
    table = (tmp_path / "tiny.txt").read_text()  # --profile 1: the operators of one step
    assert table.startswith("1 steps profiled") and "aten::mm" in table
    with gzip.open(tmp_path / "tiny.trace.json.gz", "rt") as trace:
        assert json.load(trace)["traceEvents"]


TWO_RANKS = """
import json, os, sys
from wmtp.bench.step import bench_step
from wmtp.parallel import teardown
from wmtp.recipe import load_recipe
recipe = load_recipe(sys.argv[2], sys.argv[3:]).recipe
result = bench_step(recipe, label="fsdp", warmup=1, repeats=2)
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
    sets = [*SMALL, "parallel.sharding='shard_grad_op'"]
    procs = launch(2, [str(tmp_path / "result"), str(TINY), *sets], script)
    for p in procs:
        output, _ = p.communicate(timeout=240)
        assert p.returncode == 0, output
    result = json.loads((tmp_path / "result").read_text())
    assert result["world_size"] == 2 and result["config"]["one_backward"]
    median_s = result["step"]["median_ms"] / 1e3
    assert result["tokens_per_s"] == pytest.approx(2 * 2 * 2 * 32 / median_s)


def test_each_document_of_a_packed_synthetic_row_masks_its_own_eighth_as_prompt():
    """A packed row holds several documents; each masks 1/8 of its own tokens, as an unpacked
    row does of its tokens (not 1/8 of the row: half of each document at four a row)."""
    from wmtp.bench.step import DOCUMENTS_PER_ROW, PROMPT_FRACTION, SyntheticBatches
    from wmtp.data.examples import IGNORE_INDEX

    for packing in (False, True):
        recipe = tiny("data.max_length=256", f"data.packing={str(packing).lower()}")
        batches = SyntheticBatches(recipe, vocab_size=259, n_heads=2, rank=0)
        for batch in batches.next_step():
            labels_BS = batch["labels"]
            documents = DOCUMENTS_PER_ROW if packing else 1
            masked_per_document = (labels_BS == IGNORE_INDEX).sum(dim=1) / documents
            assert masked_per_document.tolist() == [256 / documents / PROMPT_FRACTION] * 2
