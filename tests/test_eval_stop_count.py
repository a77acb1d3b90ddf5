"""A stopped `wmtp eval` says how many problems it keeps, and that is what it kept: the count in
its stop message equals the problems found in its partial results on disk and the count the
same command, run again, takes up. Real runs of a tiny model through the CLI in child
processes, real signals, real torch.distributed (gloo on the CPU).

The checks of the benchmark here sleep for as long as the test says (the model's completion is
inert text inside a string), so that a check is still running when the signal comes: the
moment the count used to be taken too early."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.eval.test_eval_command import RECIPE, tiny_model
from tests.train.train_helpers import REPO

pytestmark = [pytest.mark.slow, pytest.mark.minutes(1)]

STOPPED = re.compile(r"stopped: SIGINT during humaneval: (.*?)(\d+) of (\d+) problems finished")
RESUMED = re.compile(r"humaneval: (\d+) of (\d+) problems finished by an interrupted run")


@pytest.fixture
def run_dir(tmp_path) -> Path:
    """A run directory with a tiny wmtp-format checkpoint (random weights) at step 3."""
    from wmtp.models.checkpoint import save_wmtp

    run = tmp_path / "runs" / "tiny-eval" / "20261122-060000-0123abcd"
    run.mkdir(parents=True)
    (run / "recipe.toml").write_text(RECIPE)
    save_wmtp(tiny_model(), run / "checkpoints" / "step-3", recipe_toml=RECIPE)
    return run


def sleeping_benchmark(path: Path, sleeps: list[int]) -> list[str]:
    """A humaneval-format file whose problem i passes after ``sleeps[i]`` seconds, whatever the
    model writes: its prompt ends in an open raw string that the test closes. ``--set``s that
    evaluate it, every problem, two checks of a problem at once on each process."""
    rows = [
        {
            "task_id": f"Sleep/{i}",
            "prompt": f"import time\n\ndef f{i}():\n    return {i}\n\ntime.sleep({s})\n_ = r'''",
            "test": f"'''\n\ndef check(candidate):\n    assert candidate() == {i}\n",
            "entry_point": f"f{i}",
        }
        for i, s in enumerate(sleeps)
    ]
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return ["--set", f'evaluation.benchmarks=["humaneval={path}"]',
            "--set", f"evaluation.max_problems={len(sleeps)}"]  # fmt: skip


def wmtp_child(*args, **popen) -> subprocess.Popen:
    """``python -m wmtp.cli ARGS`` started in the repository (the HumanEval split lives there)."""
    env = dict(os.environ, OMP_NUM_THREADS="1", WMTP_DIST_TIMEOUT_S="120")
    argv = [sys.executable, "-m", "wmtp.cli", *map(str, args)]
    return subprocess.Popen(argv, cwd=REPO, env=env, text=True, **popen)


def kept_on_disk(out: Path) -> dict[str, int]:
    """Rank file -> the problems it holds, in the evaluation's partial results."""
    return {
        path.name: len({json.loads(line)["task_id"] for line in path.read_text().splitlines()})
        for path in sorted(out.glob("humaneval/.partial-*/rank*.jsonl"))
    }


def wait_for_kept(child: subprocess.Popen, out: Path, rank_file: str) -> None:
    """Until ``rank_file`` of the partial results holds a problem (the child still running)."""
    deadline = time.monotonic() + 180
    while child.poll() is None and time.monotonic() < deadline:
        if kept_on_disk(out).get(rank_file):
            return
        time.sleep(0.02)
    raise AssertionError(f"no problem kept in {rank_file} while the evaluation ran")


def said_count(stderr: str) -> tuple[int, str]:
    """The problems the stop message says it keeps, and any word before the number ("at
    least"): the count should be exact, not a bound."""
    found = STOPPED.search(" ".join(stderr.split()))
    assert found, stderr[-3000:]
    hedge, count, _ = found.groups()
    return int(count), hedge


def resumed_by_the_same_command(run_dir: Path, out: Path, sets: list[str]) -> int:
    """Run the same evaluation again (one process) to its end; the problems it took up."""
    again = wmtp_child("eval", run_dir, "--no-progress", "--out", out, *sets,
                       stdout=subprocess.PIPE, stderr=subprocess.PIPE)  # fmt: skip
    stdout, stderr = again.communicate(timeout=300)
    assert again.returncode == 0, stdout[-2000:] + stderr[-2000:]
    summary = json.loads((out / "humaneval" / "summary.json").read_text())
    said = RESUMED.search(" ".join(stderr.split()))
    assert said and int(said.group(1)) == summary["resumed_problems"], stderr[-2000:]
    return summary["resumed_problems"]


def test_ctrl_c_of_two_processes_counts_the_other_ranks_last_problem(run_dir, tmp_path):
    """``wmtp eval --nproc-per-node 2`` and Ctrl-C (SIGINT to the launcher, as a terminal sends
    it) while rank 1's first problem is still being checked (its checks sleep 5 s, rank 0's
    1 s): rank 1 finishes that check and keeps its problem after rank 0 has stopped its own.
    The message counts it: what it says equals what is on disk and what the rerun takes up."""
    sets = sleeping_benchmark(tmp_path / "sleeps.jsonl", [1, 5] * 3)  # rank r: problems r, r+2..
    sets += ["--set", "evaluation.workers=4"]  # two checks at once on each rank
    out = tmp_path / "stopped"
    launcher = wmtp_child("eval", run_dir, "--no-progress", "--nproc-per-node", "2",
                          "--out", out, *sets, stdout=subprocess.DEVNULL,
                          stderr=subprocess.PIPE)  # fmt: skip
    wait_for_kept(launcher, out, "rank0.jsonl")
    launcher.send_signal(signal.SIGINT)
    _, stderr = launcher.communicate(timeout=300)

    assert launcher.returncode == 130, stderr[-3000:]
    on_disk = kept_on_disk(out)
    assert on_disk.get("rank1.jsonl"), on_disk  # rank 1's problem, kept as it stopped
    assert said_count(stderr) == (sum(on_disk.values()), ""), (stderr[-2000:], on_disk)
    assert "Traceback" not in stderr
    assert resumed_by_the_same_command(run_dir, out, sets) == sum(on_disk.values())


def test_a_second_ctrl_c_while_the_checks_drain_counts_what_is_kept(run_dir, tmp_path):
    """One process, Ctrl-C once the first problem is kept, while the other two's checks (5 s)
    run; a second Ctrl-C while the evaluation waits for them. It stops waiting: the message
    counts what is kept then, and the checks that end later, as the process exits, keep nothing
    behind the message's back (they used to: a count one or two short)."""
    sets = sleeping_benchmark(tmp_path / "sleeps.jsonl", [0, 5, 5])
    sets += ["--set", "evaluation.workers=6"]  # every problem's checks at once
    out = tmp_path / "stopped"
    child = wmtp_child("eval", run_dir, "--no-progress", "--out", out, *sets,
                       stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)  # fmt: skip
    wait_for_kept(child, out, "rank0.jsonl")
    child.send_signal(signal.SIGINT)
    time.sleep(1)  # the first handled: the evaluation now waits for the running checks
    child.send_signal(signal.SIGINT)
    _, stderr = child.communicate(timeout=300)

    assert child.returncode == 130, stderr[-3000:]
    kept = sum(kept_on_disk(out).values())
    assert said_count(stderr) == (kept, ""), (stderr[-2000:], kept_on_disk(out))
    assert kept == 1  # the slow problems' checks were not waited for: they decode again
    assert "Traceback" not in stderr
    assert resumed_by_the_same_command(run_dir, out, sets) == kept
