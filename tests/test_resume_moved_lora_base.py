"""``wmtp run --resume RUN --set model.policy.path=NEW`` of a LoRA run whose base model moved:
the trained weights are the adapters in the checkpoint (the base is frozen), so the base at its
new path is taken where it is the one the run recorded (its identity, checked as every reader of
the adapters checks it), and the resumed run trains on exactly as if it had never stopped;
another model there, or a run that recorded no identity, is refused at the ``--set``, exit 2,
nothing of the run changed. Real parts: a Meta-format base, a real LoRA run stopped by SIGTERM,
the CLI in subprocesses."""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.test_moved_lora_base import EVAL, FOUND, LORA, SHARD, meta_base, move_away
from tests.train.train_helpers import FAST, REPO, TINY, cli, losses_of, runs_override

pytestmark = [pytest.mark.minutes(3), pytest.mark.slow]

RUN = (
    *FAST,
    "training.max_steps=8",
    "training.schedule.warmup_steps=1",
    "training.checkpoint_every=2",
    "training.keep_last=10",
    "training.lr=1e-2",
    LORA,
)


def sets(*values: str) -> list[str]:
    return [arg for value in values for arg in ("--set", value)]


def files_of(run: Path) -> dict[str, bytes]:
    return {str(p.relative_to(run)): p.read_bytes() for p in sorted(run.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def moved(tmp_path_factory) -> dict:
    """The run uninterrupted over a Meta base (``whole``); the same run stopped by SIGTERM at
    its first checkpoint (``run``, a copy of it as it stopped at ``stopped``); then the base
    moved to ``new``, and at ``other`` another model of the same shapes."""
    from wmtp.train.checkpoint import checkpoint_dirs

    root = tmp_path_factory.mktemp("resume_moved_lora_base")
    base = meta_base(root / "models" / "base", seed=0)
    over = f"model.policy.path='{base}'"
    code, shown = cli("run", TINY, *sets(*RUN, over, runs_override(root / "whole")))
    assert code == 0, shown[-3000:]
    whole = (root / "whole" / "runs" / "tiny" / "latest").resolve()
    command = [sys.executable, "-m", "wmtp.cli", "run", str(TINY)]
    command += sets(*RUN, over, runs_override(root / "stopped"))
    proc = subprocess.Popen(command, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    latest = root / "stopped" / "runs" / "tiny" / "latest"
    deadline = time.monotonic() + 300
    while not (latest.exists() and checkpoint_dirs(latest)):
        assert proc.poll() is None, proc.stderr.read().decode()
        assert time.monotonic() < deadline, "no checkpoint appeared"
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)  # stops after the step in progress, with a checkpoint
    proc.communicate(timeout=300)
    run = latest.resolve()
    stopped_at = int(checkpoint_dirs(run)[-1].name.split("-")[1])
    assert stopped_at < 8, "the run finished before it was stopped; nothing to resume"
    stopped = root / "stopped-copy" / run.name
    shutil.copytree(run, stopped, symlinks=True)
    new, other = move_away(base, root)
    return {"root": root, "whole": whole, "run": run, "stopped": stopped, "old": base,
            "new": new, "other": other}  # fmt: skip


def test_resume_takes_the_moved_base_and_trains_on_exactly(moved):
    """Was refused, even with --force: the trained role's path was taken for the source of the
    trained weights. Now the model at the new path, the recorded base, is said found once; the
    losses are the uninterrupted run's; inputs.json says where the base is now and keeps where
    it was; the newest checkpoint's recipe names the new path, so ``wmtp eval RUN`` (and a
    second resume) need no --set."""
    from wmtp.recipe import load_recipe
    from wmtp.train.checkpoint import checkpoint_dirs

    run, new, old = moved["run"], moved["new"], moved["old"]
    recorded = json.loads((run / "inputs.json").read_text())["model.policy.path"]
    code, shown = cli("run", "--resume", run, "--set", f"model.policy.path='{new}'")
    assert code == 0, shown[-3000:]
    assert f"model.policy.path = '{new}': the base model the LoRA adapters" in shown
    assert shown.count(FOUND) == 1, shown[-3000:]
    expected = losses_of(moved["whole"])
    assert [s for s, _ in expected] == list(range(1, 9))
    assert losses_of(run) == expected  # exactly: same base, batches, RNG, optimizer state

    now = json.loads((run / "inputs.json").read_text())["model.policy.path"]
    assert now["identity"] == recorded["identity"]
    assert (now["written"], now["resolved"]) == (str(new), str(new.resolve()))
    assert now["moved_from"] == [{"written": str(old), "resolved": str(old.resolve())}]
    newest = checkpoint_dirs(run)[-1]
    assert newest.name == "step-8"
    assert load_recipe(newest / "recipe.toml").recipe.model.policy.path == str(new)
    # the run's own recipe.toml is the one it began with (its fingerprint's hash), untouched
    assert (run / "recipe.toml").read_bytes() == (moved["stopped"] / "recipe.toml").read_bytes()

    code, shown = cli("eval", run, *EVAL, "--out", moved["root"] / "eval")
    assert code == 0, shown[-3000:]
    assert FOUND not in shown and "Traceback" not in shown
    code, shown = cli("run", "--resume", run)  # trained all its steps: resumes to nothing
    assert code == 0 and "Traceback" not in shown, shown[-3000:]


@pytest.mark.parametrize("case", ["another model", "no identity recorded"])
def test_resume_over_another_base_is_refused_at_the_set_and_changes_nothing(moved, tmp_path, case):
    run = tmp_path / "runs" / "tiny" / moved["stopped"].name
    shutil.copytree(moved["stopped"], run, symlinks=True)
    if case == "another model":
        path, said = moved["other"], f"its {SHARD} holds other bytes than the base's"
    else:  # a run of an older wmtp: its base known by its path alone
        (run / "inputs.json").write_text("{}\n")
        path, said = moved["new"], f"was trained with path = '{moved['old'].resolve()}'"
    given = f"model.policy.path='{path}'"
    before = files_of(run)
    for force in ([], ["--force"]):
        code, shown = cli("run", "--resume", run, "--set", given, *force)
        assert code == 2 and "Traceback" not in shown, shown[-3000:]
        assert f"--set {given}: model.policy.path: " in shown, shown[-3000:]
        assert said in shown and FOUND not in shown, shown[-3000:]
        assert files_of(run) == before


def test_resume_over_another_model_put_at_the_base_path_is_refused(moved, tmp_path):
    """No --set: the base's path is unchanged, but another model of the same shapes was put there
    since. Its identity is not the recorded one: refused, located, the run unchanged (was
    trained on over the other model's weights)."""
    run = tmp_path / "runs" / "tiny" / moved["stopped"].name
    shutil.copytree(moved["stopped"], run, symlinks=True)
    before = files_of(run)
    shutil.copytree(moved["other"], moved["old"])
    try:
        code, shown = cli("run", "--resume", run)
    finally:
        shutil.rmtree(moved["old"])
    assert code == 2 and "Traceback" not in shown, shown[-3000:]
    assert "model.policy.path: " in shown and "is not the base model" in shown, shown[-3000:]
    assert f"its {SHARD} holds other bytes than the base's" in shown, shown[-3000:]
    assert files_of(run) == before
