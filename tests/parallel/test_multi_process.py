"""The multi-node code path on one machine: two torchrun agents ("nodes" of one process each) meet
at a c10d rendezvous endpoint, exactly as the README's N-node command line does, and resume a
checkpoint written by a single process. Its last steps and weights must equal the uninterrupted
single-process run's (same global batch: 1 x 4 rows, then 2 nodes x 2 rows)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

from tests.parallel.test_fsdp import free_port
from tests.train.train_helpers import REPO, TINY, losses_of, runs_override


def node_command(node_rank: int, port: int, run_dir) -> list[str]:
    """``torchrun`` for one node of two (the README's multi-node line, one process per node)."""
    return [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nnodes=2",
        f"--node-rank={node_rank}",
        "--nproc-per-node=1",
        "--rdzv-backend=c10d",
        f"--rdzv-endpoint=127.0.0.1:{port}",
        "--rdzv-id=wmtp-two-nodes",
        "-m",
        "wmtp.cli",
        "run",
        "--resume",
        str(run_dir),
        "--force",  # the micro-batch changes with the world size; the global batch does not
        "--set",
        "training.micro_batch_size=2",
    ]


@pytest.mark.slow
def test_two_torchrun_nodes_resume_a_single_process_checkpoint(tmp_path):
    from wmtp.train.runner import run_recipe

    sets = [
        "training.max_steps=4",
        "training.schedule.warmup_steps=1",
        "training.micro_batch_size=4",
        "training.log_every=1",
        "training.eval_every=0",
        "training.checkpoint_every=2",
        "training.keep_last=2",
        "parallel.sharding='full_shard'",
        runs_override(tmp_path / "one"),
    ]
    one = run_recipe(TINY, sets, console=False)
    resumed = tmp_path / "resumed"
    shutil.copytree(one.run_dir, resumed)
    shutil.rmtree(resumed / "checkpoints" / "step-4")  # resume from step 2

    port = free_port()
    env = dict(os.environ, OMP_NUM_THREADS="1", WMTP_DIST_TIMEOUT_S="120")
    nodes = [
        subprocess.Popen(
            node_command(rank, port, resumed),
            cwd=REPO,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for rank in (0, 1)
    ]
    outputs = [node.communicate(timeout=300)[0] for node in nodes]
    for node, output in zip(nodes, outputs, strict=True):
        assert node.returncode == 0, output[-3000:]

    want = dict(losses_of(one.run_dir))
    got = dict(losses_of(resumed))
    assert sorted(got) == [1, 2, 3, 4]
    assert [got[s] for s in (3, 4)] == pytest.approx([want[s] for s in (3, 4)], rel=1e-4)

    ckpt = resumed / "checkpoints" / "step-4"
    assert sorted(p.name for p in (ckpt / "rng").iterdir()) == ["rank0.pt", "rank1.pt"]
    exported = load_file(str(ckpt / "model.safetensors"))
    reference = load_file(str(one.run_dir / "checkpoints" / "step-4" / "model.safetensors"))
    assert exported.keys() == reference.keys()
    for key, value in reference.items():
        torch.testing.assert_close(exported[key], value, rtol=1e-4, atol=1e-5, msg=key)


def test_two_ranks_train_with_bf16_mixed_precision(tmp_path):
    """FSDP2 with a bf16 param dtype (fp32 reduce) trains under every sharding strategy."""
    for sharding in ("full_shard", "shard_grad_op"):
        cmd = [
            sys.executable, "-m", "wmtp.cli", "run", str(TINY), "--nproc-per-node", "2",
            "--set", "model.policy.dtype='bfloat16'", "--set", f"parallel.sharding='{sharding}'",
            "--set", "training.max_steps=2", "--set", "training.schedule.warmup_steps=1",
            "--set", "training.checkpoint_every=0", "--set", "training.eval_every=0",
            "--set", runs_override(tmp_path / sharding),
        ]  # fmt: skip
        done = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=240)
        assert done.returncode == 0, done.stderr[-3000:]
        assert "trained 2 steps" in done.stdout
