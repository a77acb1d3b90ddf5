"""More processes on a node than it has GPUs: every rank computes on its own ``cuda:LOCAL_RANK``,
so `wmtp run --nproc-per-node N` past the GPUs is refused before training, with the most it
takes, not a CUDA error on the ranks without a GPU."""

from __future__ import annotations

import subprocess
import sys

import torch

from tests.gpu import needs_cuda
from tests.train.train_helpers import REPO, TINY


@needs_cuda("counting the GPUs of a node needs one")
def test_more_processes_than_gpus_is_refused_naming_the_most_it_takes(tmp_path):
    gpus = torch.cuda.device_count()
    done = subprocess.run(
        [sys.executable, "-m", "wmtp.cli", "run", str(TINY), "--nproc-per-node", str(gpus + 1),
         "--set", "parallel.device='cuda'", "--set", f"experiment.runs_dir='{tmp_path}'"],
        cwd=REPO, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    flat = " ".join(done.stderr.split())
    assert done.returncode == 2, flat[-3000:]
    said = f"--nproc-per-node {gpus + 1}: {gpus + 1} processes on this node, but {gpus} CUDA"
    assert said in flat and f"--nproc-per-node {gpus} at most" in flat, flat[-3000:]
    assert "Traceback" not in flat and "invalid device ordinal" not in flat
    assert not list(tmp_path.glob("*/2*"))  # refused before a run directory
