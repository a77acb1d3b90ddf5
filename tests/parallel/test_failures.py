"""A failing rank ends the whole run, never a hang: ``WMTP_FAULT`` (wmtp.train.faults) fails rank 1
of a real 2-process gloo run after step 1, by raising or by SIGKILL."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.parallel.test_fsdp import free_port
from tests.train.train_helpers import REPO, TINY
from wmtp.errors import RunError
from wmtp.train.faults import Fault, parse_fault

SETS = (
    "training.max_steps=3",
    "training.schedule.warmup_steps=1",
    "training.micro_batch_size=2",
    "training.log_every=1",
    "training.eval_every=0",
    "training.checkpoint_every=0",
    "parallel.sharding='full_shard'",
)
MESSAGE = "injected fault (WMTP_FAULT): rank 1 failed after step 1"


def _cmd(tmp_path, *launch: str) -> list[str]:
    sets = [*SETS, f"experiment.runs_dir='{tmp_path / 'runs'}'"]
    return [
        sys.executable,
        "-m",
        "wmtp.cli",
        "run",
        str(TINY),
        *launch,
        *(a for s in sets for a in ("--set", s)),
    ]


def _env(fault: str, timeout_s: int) -> dict[str, str]:
    return dict(
        os.environ, WMTP_FAULT=fault, OMP_NUM_THREADS="1", WMTP_DIST_TIMEOUT_S=str(timeout_s)
    )


def _two_ranks(tmp_path, fault: str, *extra: str) -> tuple[subprocess.CompletedProcess, str]:
    """``wmtp run --nproc-per-node 2`` of the tiny recipe with ``fault``; its stdout + stderr."""
    done = subprocess.run(
        [*_cmd(tmp_path, "--nproc-per-node", "2"), *extra],
        cwd=REPO,
        env=_env(fault, 60),
        capture_output=True,
        text=True,
        timeout=180,
    )
    return done, done.stdout + done.stderr


def processes_naming(text: str) -> list[int]:
    """Live processes whose command line names ``text`` (zombies and this process aside)."""
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit() or int(proc.name) == os.getpid():
            continue
        try:
            cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode()
            state = (proc / "stat").read_text().split(") ")[-1].split()[0]
        except OSError:
            continue
        if text in cmdline and state != "Z":
            found.append(int(proc.name))
    return found


def test_fault_specs_parse_and_bad_ones_say_what_is_wrong():
    assert parse_fault("rank=0, step=7, kind=sigkill") == Fault(rank=0, step=7, kind="sigkill")
    assert parse_fault("step=2") == Fault(rank=1, step=2, kind="raise")
    with pytest.raises(RunError, match="kind must be one of raise, sigkill, sigint, sigterm, nan"):
        parse_fault("kind=explode")
    with pytest.raises(RunError, match="'rnak=1' is not one of"):
        parse_fault("rnak=1")
    with pytest.raises(RunError, match="step must be an integer"):
        parse_fault("step=two")


@pytest.mark.slow
def test_a_rank_out_of_memory_is_one_message_whose_resume_keeps_the_processes(tmp_path):
    """Rank 1's allocator fails in step 3 (after a checkpoint at step 2): its message once, with
    the resume command for the same two processes and each process's batch kept."""
    sets = ("--set", "training.checkpoint_every=2", "--set", "training.max_steps=4")
    done, output = _two_ranks(tmp_path, "rank=1,step=3,kind=oom", *sets)
    assert done.returncode == 2, output[-3000:]  # as one process exits
    run_dir = (tmp_path / "runs" / "tiny" / "latest").resolve()
    message = "error: rank 1 failed: out of memory on the CPU in step 3 (DefaultCPUAllocator"
    assert output.count(message) == 1, output[-3000:]
    assert (
        f"its checkpoints up to step 2 are kept. To use less memory, wmtp run --resume {run_dir} "
        "--nproc-per-node 2 with: --set training.micro_batch_size=1 "
        "--set training.grad_accum_steps=2 (the same 2 sequences a step on each process)"
    ) in " ".join(output.split()), output[-3000:]
    assert "Traceback" not in output, output[-3000:]


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["raise", "sigkill"])
def test_a_failing_rank_ends_the_torchrun_job(tmp_path, kind):
    """Under ``wmtp run --nproc-per-node 2`` torchrun stops rank 0 as soon as rank 1 dies; the
    fault reaching rank 1 at all shows the launcher's environment passes through to workers."""
    start = time.monotonic()
    step = 1 if kind == "raise" else 2  # killed after the step-1 checkpoint
    done = subprocess.run(
        [*_cmd(tmp_path, "--nproc-per-node", "2"), "--set", "training.checkpoint_every=1"],
        cwd=REPO,
        env=_env(f"rank=1,step={step},kind={kind}", 60),
        capture_output=True,
        text=True,
        timeout=120,
    )
    took = time.monotonic() - start
    output = done.stdout + done.stderr
    assert done.returncode == (2 if kind == "raise" else 1), output[-3000:]  # a RunError: 2
    if kind == "raise":  # rank 1's message, once, and rank 0's loss of it in one line
        assert output.count(MESSAGE) == 1, output[-3000:]
        assert f"error: rank 1 failed: {MESSAGE}" in output
        assert "(the other ranks stopped with it: rank 0: lost its connection" in output
    else:  # no message of its own: what torchrun saw, and what continues the run
        assert "error: rank 1 failed: killed by SIGKILL" in output, output[-3000:]
        (run_dir,) = (tmp_path / "runs" / "tiny").glob("2*")
        kept = f"checkpoint {run_dir / 'checkpoints' / 'step-1'} holds the steps up to step 1"
        resume = f"continue with: wmtp run --resume {run_dir} --nproc-per-node 2"
        assert f"{kept}; {resume}" in " ".join(output.split()), output[-3000:]
    # torchrun's SIGTERM to rank 0 is no stop with a checkpoint: rank 0 said one would follow
    assert "stopping after this step with a checkpoint" not in output, output[-3000:]
    # one message: no traceback, not torchrun's report of the failure
    assert "Traceback" not in output and "Root Cause" not in output, output[-3000:]
    # Rank 0 never got past the failed step (the next needs rank 1; it may be stopped before
    # logging that one).
    from wmtp.train.metrics import read_metrics

    (run_dir,) = (tmp_path / "runs" / "tiny").glob("2*")
    assert {m["step"] for m in read_metrics(run_dir)} <= set(range(1, step + 1))
    assert not processes_naming(str(tmp_path)), "a process of the run outlived the launcher"
    assert took < 120


@pytest.mark.slow
def test_a_nan_on_one_rank_stops_every_rank_once_naming_that_rank(tmp_path):
    """Rank 0's gradients turn NaN at step 2: both ranks refuse the step together, and the run's
    error is said once, as one process says it (exit 2), naming rank 0 rather than whichever
    rank's record came first; the step-1 checkpoint is kept and named."""
    done, output = _two_ranks(
        tmp_path, "rank=0,step=2,kind=nan", "--set", "training.checkpoint_every=1"
    )
    (run_dir,) = (tmp_path / "runs" / "tiny").glob("2*")
    nan = "step 2: the gradient norm is nan (in head 2 on rank 0); the step was not applied"
    assert done.returncode == 2, output[-3000:]
    assert output.count(nan) == 1, output[-3000:]
    assert f"The last good checkpoint is {run_dir / 'checkpoints' / 'step-1'}." in output
    assert "rank 1 failed" not in output and "Traceback" not in output, output[-3000:]
    assert sorted(p.name for p in (run_dir / "checkpoints").iterdir()) == ["step-1"]
    assert not processes_naming(str(tmp_path)), "a process of the run outlived the launcher"


@pytest.mark.slow
def test_without_torchrun_the_survivor_fails_on_the_collective_timeout(tmp_path):
    """Ranks started by hand (no torchrun agent to stop them): rank 0's next collective fails
    after ``WMTP_DIST_TIMEOUT_S`` instead of waiting forever."""
    port = str(free_port())
    procs = []
    for rank in (0, 1):
        env = _env("rank=1,step=1,kind=raise", 10)
        env.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE="2")
        env.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=port)
        procs.append(
            subprocess.Popen(
                _cmd(tmp_path),
                cwd=REPO,
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
            )
        )
    outputs = [p.communicate(timeout=150)[0] for p in procs]
    assert procs[1].returncode == 2 and MESSAGE in outputs[1], outputs[1][-2000:]
    assert procs[0].returncode != 0, outputs[0][-2000:]
    assert MESSAGE not in outputs[0]


def _launch(
    tmp_path, *extra: str, env: dict | None = None, new_session: bool = False
) -> subprocess.Popen:
    sets = [*SETS, "training.max_steps=400", "training.checkpoint_every=0"]
    sets += [f"experiment.runs_dir='{tmp_path / 'runs'}'"]
    cmd = [sys.executable, "-m", "wmtp.cli", "run", str(TINY), "--nproc-per-node", "2"]
    cmd += [a for s in sets for a in ("--set", s)]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "WMTP_DIST_TIMEOUT_S": "60", **(env or {})}
    return subprocess.Popen(
        [*cmd, *extra],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=new_session,  # a terminal's process group: the launcher's own
    )


def _wait_for_training(tmp_path, proc: subprocess.Popen) -> Path:
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        assert proc.poll() is None, proc.communicate()[1][-3000:]
        for metrics in (tmp_path / "runs").glob("tiny/2*/metrics.jsonl"):
            if metrics.read_text().count("\n") >= 2:
                return metrics.parent
        time.sleep(0.1)
    raise AssertionError("training never started")


def _gone(marker: str, within: float) -> bool:
    deadline = time.monotonic() + within
    while processes_naming(marker):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.2)
    return True


@pytest.mark.slow
def test_sigterm_to_the_launcher_stops_every_rank_with_a_checkpoint(tmp_path):
    """The launcher forwards SIGTERM to torchrun, whose workers finish their step, write a
    checkpoint together and exit 143; nothing outlives the launcher."""
    proc = _launch(tmp_path)
    run = _wait_for_training(tmp_path, proc)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 143, err[-3000:]
    assert "stopped: SIGTERM after step" in err and "Traceback" not in err, err[-3000:]
    assert "not every rank stopped cleanly" not in err, err[-3000:]
    assert f"continue with: wmtp run --resume {run} --nproc-per-node 2" in err, err[-3000:]
    assert list((run / "checkpoints").glob("step-*")), "no checkpoint written on the way out"
    assert _gone(str(tmp_path), within=30), "a process of the run outlived the launcher"
    # the command it gave, for two more steps: the launcher and both ranks check that no
    # process trains the run (at once, under a shared lock), then rank 0 trains it, locked
    stopped = max(int(p.name.split("-")[1]) for p in (run / "checkpoints").glob("step-*"))
    more = ["--set", f"training.max_steps={stopped + 2}", "--force"]
    done = subprocess.run(
        [sys.executable, "-m", "wmtp.cli", "run", "--resume", str(run), "--nproc-per-node", "2",
         *more],
        cwd=REPO, capture_output=True, text=True, timeout=300,
        env={**os.environ, "OMP_NUM_THREADS": "1", "WMTP_DIST_TIMEOUT_S": "60"},
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    assert f"trained {stopped + 2} steps" in " ".join(done.stdout.split()), done.stdout[-2000:]


def _worker(marker: str, rank: int) -> int:
    """The pid of the torchrun worker of ``rank`` among the processes naming ``marker``."""
    for pid in processes_naming(marker):
        try:
            environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
        except OSError:
            continue
        if f"RANK={rank}".encode() in environ and b"LOCAL_RANK=" + str(rank).encode() in environ:
            return pid
    raise AssertionError(f"no worker of rank {rank}")


@pytest.mark.slow
def test_sigterm_to_one_worker_is_the_runs_clean_stop_not_a_failed_rank(tmp_path):
    """A scheduler's SIGTERM that reaches one worker: the ranks agree to stop at a step and write
    a checkpoint together, so the launcher exits 143 as for its own SIGTERM, without calling the
    rank that got it failed (it said "rank 1 failed: exit code 143" and exited 1)."""
    proc = _launch(tmp_path)
    run = _wait_for_training(tmp_path, proc)
    os.kill(_worker(str(tmp_path), 1), signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 143, err[-3000:]
    assert "stopped: SIGTERM after step" in err and "failed" not in err, err[-3000:]
    assert list((run / "checkpoints").glob("step-*")), "no checkpoint written on the way out"
    assert _gone(str(tmp_path), within=30), "a process of the run outlived the launcher"


@pytest.mark.slow
def test_a_signal_while_two_ranks_build_the_run_stops_them_at_once(tmp_path):
    """SIGINT to the launcher before the first step: torchrun passes it on, and each rank stops
    where its build was (nothing trained, nothing to wait for): one message, exit 130, no
    checkpoint, no process left."""
    proc = _launch(tmp_path)
    for line in proc.stderr:
        if "model.policy: trains" in line:  # building: every handler is in place
            break
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    (run,) = (tmp_path / "runs").glob("tiny/2*")
    said = f"stopped: SIGINT before the first step: nothing was trained; {run} keeps its recipe"
    assert proc.returncode == 130 and err.count(said) == 1, err[-3000:]
    assert "Traceback" not in err and "not every rank stopped cleanly" not in err, err[-3000:]
    assert not (run / "checkpoints").exists()
    assert _gone(str(tmp_path), within=30), "a process of the run outlived the launcher"


@pytest.mark.slow
def test_a_stop_that_torchrun_cuts_short_says_no_checkpoint_was_written(tmp_path):
    """torchrun kills workers still busy ``TORCH_ELASTIC_SHUTDOWN_TIMEOUT`` seconds after it
    passed the signal on (0 here: at once, as 30 s would a large model's step and checkpoint):
    the launcher says the stop lost the steps since the last checkpoint instead of exiting 143 as
    if each rank had written one."""
    proc = _launch(tmp_path, env={"TORCH_ELASTIC_SHUTDOWN_TIMEOUT": "0"})
    run = _wait_for_training(tmp_path, proc)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 143, err[-3000:]
    assert "stopped: SIGTERM, but not every rank stopped cleanly with a checkpoint" in err, err
    assert "TORCH_ELASTIC_SHUTDOWN_TIMEOUT = 0 s" in err and "Traceback" not in err, err[-3000:]
    assert "continue from it with: wmtp run --resume RUN_DIR --nproc-per-node 2" in err, err
    assert not list((run / "checkpoints").glob("step-*"))
    assert _gone(str(tmp_path), within=30), "a process of the run outlived the launcher"


@pytest.mark.slow
def test_ctrl_c_twice_stops_every_rank_at_once_said_once(tmp_path):
    """A terminal's Ctrl-C reaches the launcher's process group; a second one, during the stop
    the first asked for, stops every rank at once: the launcher passes it to the workers, so
    the stop is said once, as SIGINT, naming the checkpoint and the resume command (it killed
    torchrun, whose death reached each rank as a SIGTERM: "SIGTERM again", said by each)."""
    proc = _launch(tmp_path, "--set", "training.checkpoint_every=1", new_session=True)
    run = _wait_for_training(tmp_path, proc)
    os.killpg(proc.pid, signal.SIGINT)
    for line in proc.stderr:
        if "SIGINT: stopping after this step" in line:
            break
    os.killpg(proc.pid, signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    said = f"SIGINT again: stopping now, checkpoint {run / 'checkpoints' / 'step-'}"
    assert proc.returncode == 130 and err.count(said) == 1, err[-3000:]
    assert f"continue with: wmtp run --resume {run} --nproc-per-node 2" in err, err[-3000:]
    assert "SIGTERM" not in err and "Traceback" not in err, err[-3000:]
    assert _gone(str(tmp_path), within=30), "a process of the run outlived the launcher"


@pytest.mark.slow
def test_sigkill_of_the_launcher_leaves_no_process_behind(tmp_path):
    """Nothing can catch SIGKILL: torchrun learns of it from the parent-death signal and stops
    its workers; no process is left training."""
    proc = _launch(tmp_path)
    _wait_for_training(tmp_path, proc)
    proc.kill()
    proc.wait()
    assert _gone(str(tmp_path), within=60), processes_naming(str(tmp_path))


@pytest.mark.slow
def test_bad_data_under_two_processes_exits_as_one_process_does(tmp_path):
    """A dataset line that is not JSON: the rank that read it says where, and the launcher exits
    2 as one process would (a user's error, not a crash), the other rank's loss in one line."""
    from tests.data.data_rows import problem_rows, write_dataset

    (tmp_path / "data").mkdir()
    path = write_dataset(tmp_path / "data" / "train.jsonl", problem_rows(4, 2, 1))
    lines = path.read_text().splitlines()
    path.write_text("\n".join([*lines[:5], "{not json", *lines[5:]]) + "\n")
    data = f"data={{kind='jsonl', path='{path.parent}', max_length=512}}"
    done, output = _two_ranks(tmp_path, "rank=9", "--set", data)
    assert done.returncode == 2, output[-3000:]
    assert output.count(f"{path}:6: not valid JSON") == 1, output[-3000:]
    assert "Traceback" not in output and "Root Cause" not in output, output[-3000:]


def test_a_collective_timeout_that_is_no_number_is_refused_before_launch(tmp_path):
    env = dict(os.environ, WMTP_DIST_TIMEOUT_S="abc", OMP_NUM_THREADS="1")
    done = subprocess.run(
        _cmd(tmp_path, "--nproc-per-node", "2"), cwd=REPO, env=env, capture_output=True,
        text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 2, done.stderr[-3000:]
    said = "error: WMTP_DIST_TIMEOUT_S = 'abc': give the collective timeout in seconds, a positive"
    assert said in " ".join(done.stderr.split()) and "Traceback" not in done.stderr
    assert "launching" not in done.stdout and not (tmp_path / "runs").exists()
