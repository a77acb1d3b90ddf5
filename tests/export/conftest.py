"""Real runs the export tests share, each trained once per session on the CPU (tiny recipe, a
few steps): full weights, LoRA over a wmtp base, scaled RoPE, a critic, and two ranks under FSDP2
(gloo)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests.export.export_helpers import SHORT, TINY_CRITIC, train
from tests.train.train_helpers import REPO, TINY, runs_override


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory) -> Path:
    """2 heads, full weights, byte tokenizer."""
    return train(tmp_path_factory.mktemp("tiny"))


@pytest.fixture(scope="session")
def lora_base(tmp_path_factory) -> Path:
    """A wmtp model directory (random tiny weights) that the LoRA run adapts."""
    from wmtp.models.args import flavour
    from wmtp.models.checkpoint import save_wmtp
    from wmtp.models.llama_mtp import LlamaMTP

    torch.manual_seed(0)
    base = tmp_path_factory.mktemp("base") / "tiny-base"
    return save_wmtp(LlamaMTP(flavour("tiny").with_vocab(259), attention="sdpa"), base)


@pytest.fixture(scope="session")
def lora_run(tmp_path_factory, lora_base) -> Path:
    lora = "model.policy.lora={rank = 4, alpha = 16.0, dropout = 0.1}"  # scale 4, dropout on
    root = tmp_path_factory.mktemp("lora")
    return train(root, TINY, f"model.policy.path='{lora_base}'", lora, "training.lr=1e-2")


@pytest.fixture(scope="session")
def rope_run(tmp_path_factory) -> Path:
    """RoPE theta 50,000 with Llama-3 scaling whose original context (64) the prompts pass."""
    scaling = "{factor = 4.0, low_freq_factor = 1.0, high_freq_factor = 4.0, "
    scaling += "original_max_position_embeddings = 64}"
    rope = ("model.policy.rope_theta=50000.0", f"model.policy.rope_scaling={scaling}")
    return train(tmp_path_factory.mktemp("rope"), TINY, *rope)


@pytest.fixture(scope="session")
def critic_run(tmp_path_factory) -> Path:
    return train(tmp_path_factory.mktemp("critic"), TINY_CRITIC)


@pytest.fixture(scope="session")
def fsdp_run(tmp_path_factory) -> Path:
    """``wmtp run --nproc-per-node 2``: torchrun, gloo, FSDP2 full_shard; one DCP file per rank."""
    root = tmp_path_factory.mktemp("fsdp")
    sets = [*SHORT, "parallel.sharding='full_shard'", runs_override(root)]
    cmd = [sys.executable, "-m", "wmtp.cli", "run", str(TINY), "--nproc-per-node", "2"]
    cmd += [a for s in sets for a in ("--set", s)]
    env = dict(os.environ, OMP_NUM_THREADS="1", WMTP_DIST_TIMEOUT_S="120")
    done = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=400)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return (root / "runs" / "tiny" / "latest").resolve()
