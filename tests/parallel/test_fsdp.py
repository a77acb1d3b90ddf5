"""FSDP2 on gloo: two CPU ranks train exactly like one process with the same global batch."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

WORKER = Path(__file__).parent / "two_rank_worker.py"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch(
    world: int, args: list[str], script: Path = WORKER, timeout_s: int = 20
) -> list[subprocess.Popen]:
    port = str(free_port())
    procs = []
    for rank in range(world):
        env = dict(os.environ, RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world))
        env.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=port, OMP_NUM_THREADS="1")
        env.update(WMTP_DIST_TIMEOUT_S=str(timeout_s))
        procs.append(
            subprocess.Popen(
                [sys.executable, str(script), *args],
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
            )
        )
    return procs


def run_losses(
    tmp_path: Path, world: int, sharding: str, strategy: str, ac: int = 0
) -> list[float]:
    out = tmp_path / f"losses-{world}-{sharding}-{strategy}.json"
    procs = launch(world, [str(out), sharding, strategy, str(ac)])
    for p in procs:
        output, _ = p.communicate(timeout=240)
        assert p.returncode == 0, output
    return json.loads(out.read_text())


@pytest.mark.slow
@pytest.mark.parametrize(
    ("sharding", "strategy", "ac"),
    [
        ("full_shard", "chunked", 1),
        ("shard_grad_op", "per_head", 2),
        ("no_shard", "joint", 0),
    ],
)
def test_two_gloo_ranks_match_one_process(tmp_path, sharding, strategy, ac):
    one = run_losses(tmp_path, 1, sharding, strategy, ac)
    two = run_losses(tmp_path, 2, sharding, strategy, ac)
    assert len(one) == 6 and one[0] > one[-2]  # (loss, grad norm) per step, and it trains
    assert two == pytest.approx(one, rel=1e-5, abs=1e-6)


FAILING = """
import sys, torch
from wmtp.parallel import init_distributed, all_reduce_sum
ctx = init_distributed("cpu")
if ctx.rank == 1:
    sys.exit(3)
all_reduce_sum(torch.ones(1))
print("survived")
"""


@pytest.mark.slow
def test_a_failing_rank_makes_the_other_exit(tmp_path):
    script = tmp_path / "failing.py"
    script.write_text(FAILING)
    procs = launch(2, [], script, timeout_s=5)
    outputs = [p.communicate(timeout=120)[0] for p in procs]
    assert procs[1].returncode == 3
    assert procs[0].returncode != 0, outputs[0]
    assert "survived" not in outputs[0]
