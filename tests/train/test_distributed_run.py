"""``wmtp run --nproc-per-node 2`` (torchrun, gloo, FSDP2 full_shard) against one process with the
same global batch; its sharded checkpoint loads into one process."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

from tests.train.train_helpers import REPO, TINY, losses_of, runs_override
from wmtp.errors import RunError

COMMON = (
    "training.max_steps=3",
    "training.schedule.warmup_steps=1",
    "training.log_every=1",
    "training.eval_every=0",
    "training.checkpoint_every=3",
    "parallel.sharding='full_shard'",
)


@pytest.mark.slow
def test_two_ranks_match_one_process_and_the_checkpoint_reshards(tmp_path):
    from wmtp.train.runner import run_recipe

    one = run_recipe(
        TINY,
        [*COMMON, "training.micro_batch_size=4", runs_override(tmp_path / "one")],
        console=False,
    )

    sets = [*COMMON, "training.micro_batch_size=2", runs_override(tmp_path / "two")]
    cmd = [sys.executable, "-m", "wmtp.cli", "run", str(TINY), "--nproc-per-node", "2"]
    cmd += [a for s in sets for a in ("--set", s)]
    env = dict(os.environ, OMP_NUM_THREADS="1", WMTP_DIST_TIMEOUT_S="120")
    done = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=400)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    two_dir = (tmp_path / "two" / "runs" / "tiny" / "latest").resolve()

    got, want = losses_of(two_dir), losses_of(one.run_dir)
    assert [s for s, _ in got] == [1, 2, 3]
    assert [loss for _, loss in got] == pytest.approx([loss for _, loss in want], rel=1e-4)

    # The 2-rank sharded state (DCP) loads into a single process and equals its consolidated export.
    from wmtp.parallel import init_distributed
    from wmtp.recipe import load_recipe
    from wmtp.train.checkpoint import load_checkpoint
    from wmtp.train.loop import Trainer

    ckpt = two_dir / "checkpoints" / "step-3"
    assert sorted(p.name for p in (ckpt / "rng").iterdir()) == ["rank0.pt", "rank1.pt"]
    recipe = load_recipe(two_dir / "recipe.toml").recipe
    trainer = Trainer(
        recipe, "", tmp_path / "scratch", init_distributed("cpu"), console=False
    ).build()
    state = load_checkpoint(
        ckpt, model=trainer.model, optimizer=trainer.optimizer, scheduler=trainer.scheduler
    )
    assert state["step"] == 3 and state["world_size"] == 2
    exported = load_file(str(ckpt / "model.safetensors"))
    loaded = trainer.model.state_dict()
    assert exported.keys() == loaded.keys()
    for key, value in exported.items():
        torch.testing.assert_close(loaded[key], value, rtol=0, atol=0, msg=key)

    # Resumed on one process, the run's recipe would halve the global batch: refused, saying
    # how to keep it; the split that keeps it (2 x 2 accum x 1) needs no --force.
    from typer.testing import CliRunner

    from wmtp.cli import app
    from wmtp.train.runner import prepare_run

    refused = CliRunner().invoke(app, ["run", "--resume", str(two_dir)])
    flat = " ".join(refused.output.split())
    assert refused.exit_code == 2, refused.output
    assert "global batch: 4 rows (2 x 1 accum x 2 processes) -> 2 rows" in flat
    assert "set training.grad_accum_steps=2 to keep the global batch" in flat
    for split in ("training.grad_accum_steps=2", "training.micro_batch_size=4"):
        assert prepare_run(None, [split], resume=two_dir, world_size=1).checkpoint == ckpt

    # One more step on one process (2 x 2 accum): the next resume holds to that checkpoint's
    # own split (its recipe.toml and trainer.json), not to the run's first one.
    more = ["training.grad_accum_steps=2", "training.max_steps=4"]
    assert run_recipe(None, more, resume=two_dir, force=True, console=False).step == 4
    accum2 = ["training.grad_accum_steps=2"]
    assert prepare_run(None, accum2, resume=two_dir, world_size=1).checkpoint.name == "step-4"
    with pytest.raises(RunError, match=r"global batch: 4 rows \(2 x 2 accum x 1 process\) -> 8"):
        prepare_run(None, accum2, resume=two_dir, world_size=2)


def test_a_bad_recipe_is_reported_once_before_any_worker_starts(tmp_path):
    cmd = [sys.executable, "-m", "wmtp.cli", "run", str(TINY), "--nproc-per-node", "2"]
    cmd += ["--set", "training.max_steps=3", "--set", "training.schedule.warmup_steps=5"]
    cmd += ["--set", runs_override(tmp_path)]
    done = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=120)
    out = done.stdout + done.stderr
    assert done.returncode == 2, out
    assert "launching" not in out and "Traceback" not in out
    assert out.count("warmup_steps = 5 is more than max_steps = 3") == 1
    assert not list(tmp_path.rglob("recipe.toml"))  # no run directory was made
