"""A user's error that every rank of ``--nproc-per-node`` meets before training (a device the
machine lacks, more processes than GPUs): said once, by the launcher, with exit code 2, as one
process says it; not once per rank and then "failed without a message of its own", exit 1."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from tests.gpu import needs_cuda
from tests.train.train_helpers import REPO, TINY


def run_on(nproc: int, runs, *sets: str) -> tuple[int, str]:
    done = subprocess.run(
        [sys.executable, "-m", "wmtp.cli", "run", str(TINY), "--nproc-per-node", str(nproc),
         *(a for s in (*sets, f"experiment.runs_dir='{runs}'") for a in ("--set", s))],
        cwd=REPO, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    return done.returncode, " ".join(done.stderr.split())


def test_a_cuda_recipe_on_a_machine_without_one_is_said_once(tmp_path):
    if torch.cuda.is_available():
        pytest.skip("this machine has a CUDA device: the GPU test below is its case")
    code, said = run_on(2, tmp_path, "parallel.device='cuda'")
    assert code == 2, said[-3000:]
    assert said.count("but no CUDA device is visible") == 1, said[-3000:]
    assert "without a message of its own" not in said and "Traceback" not in said
    assert not list(tmp_path.glob("*/2*"))  # refused before a run directory


@needs_cuda("counting the GPUs of a node needs one")
def test_more_processes_than_gpus_is_refused_naming_the_most_it_takes(tmp_path):
    gpus = torch.cuda.device_count()
    code, said = run_on(gpus + 1, tmp_path, "parallel.device='cuda'")
    assert code == 2, said[-3000:]
    refused = f"--nproc-per-node {gpus + 1}: {gpus + 1} processes on this node, but {gpus} CUDA"
    assert said.count(refused) == 1 and f"--nproc-per-node {gpus} at most" in said, said[-3000:]
    assert "Traceback" not in said and "invalid device ordinal" not in said
    assert not list(tmp_path.glob("*/2*"))
