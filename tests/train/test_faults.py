"""Faults lose nothing and say what happened: each through the real CLI in a subprocess.

Damaged checkpoints (truncated, altered, missing files), a full disk (a real small tmpfs in a
mount namespace), a torn metrics line, NaN gradients, running out of memory, a forced change of
the learning rate, SIGINT / SIGTERM, and a start that fails: a located message, the stated exit
code, no traceback, nothing good deleted, and a resume that matches the uninterrupted run exactly.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.gpu import needs_cuda
from tests.small_disk import needs_small_disk
from tests.train.train_helpers import REPO, TINY, losses_of
from wmtp.models.locate import step_dirs
from wmtp.train.metrics import read_metrics

RUN = (
    "training.micro_batch_size=2",
    "training.log_every=1",
    "training.eval_every=0",
    "training.max_steps=6",
    "training.schedule.warmup_steps=1",
    "training.checkpoint_every=2",
    "training.keep_last=10",
)

pytestmark = [pytest.mark.slow, pytest.mark.minutes(4)]


def wmtp(
    target: str,
    *args: str,
    runs: Path,
    env: dict | None = None,
    timeout: int = 300,
    preexec_fn=None,
):
    """``wmtp run TARGET`` with the settings of :data:`RUN` (then ``args``, which win) in a
    subprocess (``preexec_fn`` runs in it first: a resource limit, say); ``TARGET`` ``--resume``
    takes a run directory and its own recipe instead."""
    if target == "--resume":
        cmd = ["--resume", *args]
    else:
        sets = [a for s in (*RUN, f"experiment.runs_dir='{runs}'") for a in ("--set", s)]
        cmd = [target, *sets, *args]
    return subprocess.run(
        [sys.executable, "-m", "wmtp.cli", "run", *cmd],
        cwd=REPO,
        env={**os.environ, "OMP_NUM_THREADS": "1", **(env or {})},
        capture_output=True,
        text=True,
        timeout=timeout,
        preexec_fn=preexec_fn,
    )


def train(runs: Path, *extra: str, env: dict | None = None) -> Path:
    done = wmtp(str(TINY), *extra, runs=runs, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    return (runs / "tiny" / "latest").resolve()


def assert_clean_failure(done, code: int, *expected: str) -> None:
    assert done.returncode == code, done.stderr[-3000:]
    for text in expected:
        assert text in done.stderr, (text, done.stderr[-3000:])
    assert "Traceback" not in done.stderr, done.stderr[-3000:]


@pytest.fixture(scope="module")
def pristine(tmp_path_factory) -> Path:
    """One uninterrupted run, checkpoints at steps 2, 4 and 6 (copied, never changed)."""
    return train(tmp_path_factory.mktemp("whole"))


@pytest.fixture(scope="module")
def whole(pristine) -> list[tuple[int, float]]:
    """The uninterrupted run's losses, step by step."""
    losses = losses_of(pristine)
    assert [s for s, _ in losses] == list(range(1, 7))
    return losses


@pytest.fixture
def partial_run(tmp_path, pristine):
    """``partial_run(n)``: what a crash after step n leaves: a copy of the uninterrupted run
    without its later checkpoints (the resume rewrites the metrics after its checkpoint)."""

    def make(stop_after: int) -> Path:
        run = tmp_path / "runs" / "tiny" / pristine.name
        shutil.copytree(pristine, run, symlinks=True)
        for step in step_dirs(run):
            if int(step.name.split("-")[1]) > stop_after:
                shutil.rmtree(step)
        return run

    return make


def test_run_log_says_how_the_run_ended_and_a_finished_run_resumes_to_nothing(partial_run, whole):
    """run.log ends with the console's last line; `--resume` of a run that trained all its
    steps says so, trains nothing and changes nothing."""
    run = partial_run(6)
    assert (
        f"trained 6 steps, loss {whole[-1][1]:.4f}; run directory" in (run / "run.log").read_text()
    )
    before = {p: p.read_bytes() for p in run.rglob("*") if p.is_file() and p.name != "run.log"}
    done = wmtp("--resume", str(run), runs=run.parent.parent)
    said = "nothing to do: the run had trained all its 6 steps (training.max_steps)"
    assert done.returncode == 0 and said in done.stdout, done.stdout + done.stderr[-2000:]
    assert {p: p.read_bytes() for p in before} == before
    assert (run / "run.log").read_text().rstrip().endswith(f"{said}; run directory {run}")


def test_a_resume_removes_a_checkpoint_an_earlier_process_left_half_written(partial_run, whole):
    """A kill, or a second signal, while step 5's checkpoint was written leaves `.tmp-step-5`;
    no later save of step 5 clears it (the stop step was no multiple of checkpoint_every), so
    the resume does, and still matches the uninterrupted run."""
    run = partial_run(4)
    half = run / "checkpoints" / ".tmp-step-5"
    shutil.copytree(run / "checkpoints" / "step-4", half)
    (half / "manifest.json").unlink()
    done = wmtp("--resume", str(run), runs=run.parent.parent)
    assert done.returncode == 0, done.stderr[-3000:]
    assert not half.exists() and losses_of(run) == whole
    assert (
        f"removed {half}: a checkpoint an earlier process left half written"
        in (run / "run.log").read_text()
    )


def test_an_edited_run_recipe_is_compared_with_the_recipe_that_trained_its_checkpoint(
    partial_run,
):
    """The run's recipe.toml edited by hand (another learning rate) is not taken as what the
    run trained with: `--resume` sets it against the checkpoint's own recipe and refuses it
    without --force, naming the key, as for the same change by --set."""
    run = partial_run(4)
    recipe = run / "recipe.toml"
    recipe.write_text(recipe.read_text().replace("lr = 0.003", "lr = 0.001"))
    done = wmtp("--resume", str(run), runs=run.parent.parent)
    assert_clean_failure(
        done, 2, "the recipe differs from the run's", "training.lr: 0.003 -> 0.001"
    )


# --- damaged checkpoints ------------------------------------------------------------------------


def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: max(path.stat().st_size // 2, 1)])


def _flip(path: Path) -> None:
    data = bytearray(path.read_bytes())
    for i in range(4):  # four bytes in the middle: same size, other content
        data[len(data) // 2 + i] ^= 0xFF
    path.write_bytes(bytes(data))


DAMAGE = {
    "truncated DCP shard": ("state/__0_0.distcp", _truncate, "has "),
    "flipped bytes in a shard": ("state/__0_0.distcp", _flip, "does not match its checksum"),
    "truncated scheduler.pt": ("scheduler.pt", _truncate, "has "),
    "invalid trainer.json": ("trainer.json", lambda p: p.write_text("{not json"), "has "),
    "deleted .metadata": ("state/.metadata", lambda p: p.unlink(), "is missing"),
    "no manifest": ("manifest.json", lambda p: p.unlink(), "has no manifest.json"),
}


@pytest.mark.parametrize("damage", list(DAMAGE))
def test_a_damaged_checkpoint_is_named_and_the_one_before_it_resumes_exactly(
    partial_run, tmp_path, whole, damage
):
    name, spoil, why = DAMAGE[damage]
    run = partial_run(4)
    spoil(run / "checkpoints" / "step-4" / name)
    weights = (run / "checkpoints" / "step-4" / "model.safetensors").read_bytes()
    evaluated = run / "eval" / "step-4" / "humaneval"  # as `wmtp eval` of that step leaves it
    evaluated.mkdir(parents=True)
    (evaluated / "summary.json").write_text('{"of": "the damaged step-4"}')
    done = wmtp("--resume", str(run), runs=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    assert f"step-4 is damaged: {name} {why}" in done.stderr or (
        damage == "no manifest" and "step-4 has no manifest.json" in done.stderr
    ), done.stderr[-3000:]
    assert "resuming from step-2, the newest intact checkpoint" in done.stderr
    assert losses_of(run) == whole  # steps 3-6 again from step-2: exactly the same losses
    # the resumed run's step 4 replaced the damaged one, which is set aside whole, not deleted
    (aside,) = (run / "checkpoints").glob("step-4.replaced-*")
    assert (aside / "model.safetensors").read_bytes() == weights
    assert f"kept as {aside}" in " ".join(done.stderr.split())
    # its evaluation goes with it: `wmtp report` never shows it as the new step-4's
    assert not (run / "eval" / "step-4").exists()
    assert (run / "eval" / aside.name / "humaneval" / "summary.json").is_file()


def test_resume_of_a_checkpoint_directory_names_the_run_to_resume(partial_run, tmp_path):
    run = partial_run(4)
    done = wmtp("--resume", str(run / "checkpoints" / "step-2"), runs=tmp_path)
    assert_clean_failure(
        done, 2, "step-2 is a checkpoint of the run", f"wmtp run --resume {run.resolve()}"
    )
    assert [p.name for p in step_dirs(run)] == ["step-2", "step-4"]


def test_no_intact_checkpoint_is_a_located_error_that_deletes_nothing(partial_run, tmp_path):
    run = partial_run(4)
    for step in step_dirs(run):
        _truncate(step / "scheduler.pt")
    done = wmtp("--resume", str(run), runs=tmp_path)
    assert_clean_failure(done, 2, f"cannot resume {run}: no intact checkpoint", "scheduler.pt has")
    assert [s.name for s in step_dirs(run)] == ["step-2", "step-4"]  # nothing good deleted


def test_eval_refuses_a_damaged_model_file_and_of_a_run_takes_the_newest_whole_one(partial_run):
    run = partial_run(6)
    _truncate(run / "checkpoints" / "step-6" / "model.safetensors")
    done = subprocess.run(
        [sys.executable, "-m", "wmtp.cli", "eval", str(run / "checkpoints" / "step-6")],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert_clean_failure(done, 2, "step-6 is damaged: model.safetensors has")
    # the run itself, as a resume does: the newest checkpoint with whole weights, each newer
    # one named; a checkpoint without its weights file is passed over the same way
    (run / "checkpoints" / "step-4" / "model.safetensors").unlink()
    done = subprocess.run(
        [sys.executable, "-m", "wmtp.cli", "eval", str(run),
         "--set", "evaluation.max_problems=1", "--set", "evaluation.n_samples=1",
         "--set", "evaluation.max_new_tokens=8"],
        cwd=REPO, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    flat = " ".join(done.stderr.split())
    assert "warning: " in flat and "step-6 is damaged: model.safetensors has" in flat
    assert "step-4: no model.safetensors or lora.safetensors; using step-2" in flat
    assert (run / "eval" / "step-2").is_dir() and not (run / "eval" / "step-6").exists()


# --- a full disk, a torn metrics line -------------------------------------------------------------


FULL_DISK = """
set -u
mount -t tmpfs -o size={size}k tmpfs {runs}
{wmtp} {tiny} {sets}; echo "FIRST EXIT $?"
ls -a {runs}/tiny/2*/checkpoints; echo "LISTED"
mount -o remount,size=64m {runs}
{wmtp} --resume $(ls -d {runs}/tiny/2*); echo "RESUME EXIT $?"
cat {runs}/tiny/2*/metrics.jsonl
"""


@needs_small_disk
def test_a_full_disk_says_so_keeps_earlier_checkpoints_and_resumes_exactly(
    tmp_path, pristine, whole
):
    """In a mount namespace, the runs directory is a tmpfs with room for one checkpoint and a
    half: the second fails; then the file system grows and the run resumes."""
    runs = tmp_path / "small"
    runs.mkdir()
    sets = " ".join(f'--set "{s}"' for s in (*RUN, f"experiment.runs_dir='{runs}'"))
    script = FULL_DISK.format(
        size=int(1.5 * _kib(step_dirs(pristine)[0])) + 64,
        runs=runs,
        wmtp=f"{sys.executable} -m wmtp.cli run",
        tiny=TINY,
        sets=sets,
    )
    done = subprocess.run(
        ["unshare", "-Urm", "sh", "-c", script],
        cwd=REPO,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
        capture_output=True,
        text=True,
        timeout=600,
    )
    out = done.stdout + done.stderr
    assert "FIRST EXIT 2" in out, out[-3000:]
    assert "cannot write checkpoint" in out and "no space left on device" in out, out[-3000:]
    assert "earlier checkpoints kept: step-2" in out
    listed = out[out.index("FIRST EXIT") : out.index("LISTED")]
    assert "step-2" in listed and ".tmp-step" not in listed  # the partial one was removed
    assert "RESUME EXIT 0" in out, out[-3000:]
    records = [json.loads(line) for line in out.splitlines() if line.startswith('{"step"')]
    assert [(r["step"], r["loss"]) for r in records if "loss" in r] == whole
    assert "Traceback" not in out


FIRST_FULL = """
set -u
mount -t tmpfs -o size={size}k tmpfs {runs}
{wmtp} {tiny} {sets}; echo "FIRST EXIT $?"
ls -a {runs}/tiny/2*/checkpoints; echo "LISTED"
"""


@needs_small_disk
def test_a_full_disk_at_the_first_checkpoint_says_to_start_again_not_to_resume(tmp_path, pristine):
    """Room for half a checkpoint: the first fails, and with no earlier checkpoint the message
    says to run the recipe again (it offered a resume, which was then refused)."""
    runs = tmp_path / "small"
    runs.mkdir()
    sets = " ".join(f'--set "{s}"' for s in (*RUN, f"experiment.runs_dir='{runs}'"))
    script = FIRST_FULL.format(
        size=_kib(step_dirs(pristine)[0]) // 2 + 64,
        runs=runs,
        wmtp=f"{sys.executable} -m wmtp.cli run",
        tiny=TINY,
        sets=sets,
    )
    done = subprocess.run(
        ["unshare", "-Urm", "sh", "-c", script], cwd=REPO, capture_output=True, text=True,
        env={**os.environ, "OMP_NUM_THREADS": "1"}, timeout=600,
    )  # fmt: skip
    out = " ".join((done.stdout + done.stderr).split())
    assert "FIRST EXIT 2" in out and "cannot write checkpoint" in out, out[-3000:]
    assert "there is no earlier checkpoint to resume from: once fixed, run the recipe again" in out
    assert "continue with" not in out and "Traceback" not in out, out[-3000:]
    listed = out[out.index("FIRST EXIT") : out.index("LISTED")]
    assert ".tmp-step" not in listed  # the partial one was removed


def _kib(directory: Path) -> int:
    return sum(p.stat().st_size for p in directory.rglob("*") if p.is_file()) // 1024


def test_a_torn_last_metrics_line_is_dropped_on_resume(partial_run, tmp_path, whole):
    run = partial_run(4)
    metrics = run / "metrics.jsonl"
    lines = [line for line in metrics.read_text().splitlines() if json.loads(line)["step"] <= 4]
    metrics.write_text("\n".join(lines) + '\n{"step": 5, "loss": 2.')  # a crash mid-write
    done = wmtp("--resume", str(run), runs=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    assert losses_of(run) == whole


# --- NaN and forced changes ---------------------------------------------------------------------


def test_a_nan_gradient_names_the_head_and_is_never_applied(tmp_path):
    """The stop names the checkpoint to go back to and the command that skips the step; that
    command, the bad step met again, skips it (logged) and trains on to the end."""
    nan_at_3 = {"WMTP_FAULT": "rank=0,step=3,kind=nan"}
    done = wmtp(str(TINY), runs=tmp_path, env=nan_at_3)
    run = next((tmp_path / "tiny").glob("2*"))
    skip = "--set training.max_bad_steps=1 --force"
    assert_clean_failure(
        done,
        2,
        "step 3: the gradient norm is nan (in head 2); the step was not applied",
        # the loss was finite: the weights step 3 started from are good
        f"The last good checkpoint is {run / 'checkpoints' / 'step-2'}.",
        f"To skip such a step and go on from it: wmtp run --resume {run} {skip}",
    )
    assert [s.name for s in step_dirs(run)] == ["step-2"]
    done = wmtp("--resume", str(run), *skip.split(), runs=tmp_path, env=nan_at_3)
    assert done.returncode == 0, done.stderr[-3000:]
    by_step = {record["step"]: record for record in read_metrics(run)}
    assert by_step[3]["skipped"] == 1.0 and sorted(by_step) == [1, 2, 3, 4, 5, 6], by_step


def test_running_out_of_memory_says_what_to_change_and_that_change_resumes_the_run(tmp_path, whole):
    """A real allocator failure mid-step (``kind=oom``: the CPU allocator refuses an exbibyte
    after step 5's backward): one message with the memory it could not get, the checkpoints
    kept, and the ``wmtp run --resume`` command with half the micro-batch and twice the
    accumulation; exit 2, run.log keeps the allocator's trace. Following the advice finishes the
    run on the same batches: the uninterrupted run's losses (step 5 on, the same sums in another
    order)."""
    done = wmtp(str(TINY), runs=tmp_path, env={"WMTP_FAULT": "rank=0,step=5,kind=oom"})
    run = next((tmp_path / "tiny").glob("2*"))
    options = "--set training.micro_batch_size=1 --set training.grad_accum_steps=2"
    assert_clean_failure(
        done,
        2,
        "out of memory on the CPU in step 5 (DefaultCPUAllocator: can't allocate memory",
        "The run stopped; its checkpoints up to step 4 are kept.",
        f"To use less memory, wmtp run --resume {run} with: {options} (the same 2 sequences",
        "or train with --set parallel.activation_checkpointing=true",
    )
    assert [s.name for s in step_dirs(run)] == ["step-2", "step-4"]
    log = (run / "run.log").read_text()
    assert "caused by:" in log and "Traceback (most recent call last)" in log
    resumed = wmtp("--resume", str(run), *options.split(), runs=tmp_path)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    losses = losses_of(run)
    assert [s for s, _ in losses] == [s for s, _ in whole]
    assert losses[:4] == whole[:4]
    assert [loss for _, loss in losses[4:]] == pytest.approx(
        [loss for _, loss in whole[4:]], rel=1e-5
    )


@pytest.mark.parametrize(
    ("sets", "advice"),
    [
        (  # a micro-batch of 3: the largest smaller one that divides it, the batch kept
            ["training.micro_batch_size=3", "training.grad_accum_steps=2"],
            "To use less memory, run again with: --set training.micro_batch_size=1 "
            "--set training.grad_accum_steps=6 (the same 6 sequences a step)",
        ),
        (
            ["training.micro_batch_size=1"],
            "To use less memory, run again with: --set parallel.activation_checkpointing=true",
        ),
        (  # nothing left to trade at this batch
            ["training.micro_batch_size=1", "parallel.activation_checkpointing=true"],
            "To use less memory, train on shorter rows (data.max_length) or on more GPUs",
        ),
    ],
    ids=["smaller-micro-batch", "recompute", "last-resorts"],
)
def test_out_of_memory_advice_follows_the_recipe(tmp_path, sets, advice):
    extra = [a for s in sets for a in ("--set", s)]
    fault = {"WMTP_FAULT": "rank=0,step=1,kind=oom"}
    done = wmtp(str(TINY), *extra, runs=tmp_path, env=fault)
    assert_clean_failure(done, 2, "in step 1", "The run stopped; it wrote no checkpoint.", advice)


def test_a_model_too_big_for_the_memory_says_so_while_building(tmp_path):
    """A real allocator failure while the weights are made (the process may map 6 GiB, the model
    needs about 13): no step ran, so the advice is more GPUs, not a smaller micro-batch."""
    import resource

    def limited():
        resource.setrlimit(resource.RLIMIT_AS, (6 << 30, 6 << 30))

    done = wmtp(str(TINY), "--set", "model.policy.dim=8192", runs=tmp_path, preexec_fn=limited)
    assert_clean_failure(
        done,
        2,
        "out of memory on the CPU while building the model and its optimizer (DefaultCPUAllocator",
        "The run stopped; it wrote no checkpoint. To use less memory, train on more GPUs",
    )


@needs_cuda("the GPU allocator's failure and figures need a GPU")
def test_running_out_of_gpu_memory_gives_the_gpus_figures(tmp_path):
    fault = {"WMTP_FAULT": "rank=0,step=1,kind=oom"}
    done = wmtp(str(TINY), "--set", "parallel.device='cuda'", runs=tmp_path, env=fault)
    assert_clean_failure(
        done,
        2,
        "out of memory on the GPU cuda",
        "GiB allocated at the peak, of its",
        "in step 1 (CUDA out of memory",
        "To use less memory, run again with: --set training.micro_batch_size=1",
    )


def test_a_compile_failure_names_the_setting_and_the_log_keeps_its_trace(tmp_path):
    """A real torch.compile failure (Inductor finds no C++ compiler on the CPU): one message
    naming ``parallel.compile`` and the way round it, exit 2; run.log keeps Inductor's trace."""
    no_compiler = {"CXX": "/bin/false", "CC": "/bin/false"}
    done = wmtp(str(TINY), "--set", "parallel.compile=true", runs=tmp_path, env=no_compiler)
    assert_clean_failure(
        done,
        2,
        "torch.compile of the transformer blocks failed at step 1 (parallel.compile = true): "
        "InductorError: InvalidCxxCompiler",
        "train without compiling: --set parallel.compile=false",
    )
    log = next((tmp_path / "tiny").glob("2*/run.log")).read_text()
    assert "caused by:" in log and "Traceback (most recent call last)" in log


def test_max_bad_steps_skips_a_bad_step_and_goes_on(tmp_path):
    fault = {"WMTP_FAULT": "rank=0,step=3,kind=nan"}
    run = train(tmp_path, "--set", "training.max_bad_steps=1", env=fault)
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert {"step": 3, "skipped": 1.0, "bad_steps": 1.0} in records
    assert {r["step"] for r in records if "loss" in r} == {1, 2, 4, 5, 6}


def test_force_applies_a_new_learning_rate_and_logs_it(partial_run, tmp_path):
    run = partial_run(4)
    done = wmtp("--resume", str(run), "--set", "training.lr=0.0005", "--force", runs=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "applied from the new recipe: training.lr 0.003 -> 0.0005" in done.stderr
    assert "(peak 0.0005, cosine, warm-up 1)" in done.stderr
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    after = [r["lr"] for r in records if r["step"] > 4 and "lr" in r]
    assert after and all(lr <= 0.0005 for lr in after)  # the cosine decay of the new peak


def test_a_forced_change_holds_for_the_resumes_after_it(partial_run, tmp_path):
    """After `--resume --force` with a new learning rate and a crash, `--resume` alone goes on
    with the recipe the newest checkpoint trained with (the new rate), neither refused as a
    change nor back to the run's first recipe."""
    run = partial_run(2)
    crash = {"WMTP_FAULT": "rank=0,step=5,kind=raise"}  # after the checkpoint of step 4
    forced = ("--set", "training.lr=0.0005", "--force")
    assert wmtp("--resume", str(run), *forced, runs=tmp_path, env=crash).returncode != 0
    assert "lr = 0.0005" in (run / "checkpoints" / "step-4" / "recipe.toml").read_text()
    done = wmtp("--resume", str(run), runs=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "(peak 0.0005, cosine, warm-up 1)" in done.stderr
    assert [s for s, _ in losses_of(run)] == list(range(1, 7))


def test_data_edited_since_the_checkpoint_is_refused_on_resume_unless_forced(tmp_path):
    """The checkpoint records each data file's sha256: a resume after an edit would train on
    other rows than the interrupted run, so it is refused, naming the file; --force goes on
    with the data as it is now, saying so."""
    from tests.data.data_rows import problem_rows, write_dataset

    data = write_dataset(tmp_path / "train.jsonl", problem_rows(8, 2, 1))
    mine = ("--set", f"data={{kind='jsonl', path='{data}', max_length=1024}}")
    crash = {"WMTP_FAULT": "rank=0,step=3,kind=raise"}  # after the checkpoint of step 2
    assert wmtp(str(TINY), *mine, runs=tmp_path, env=crash).returncode != 0
    run = max((tmp_path / "tiny").glob("2*"))
    assert [p.name for p in step_dirs(run)] == ["step-2"]
    with open(data, "a") as f:
        f.write(data.read_text().splitlines()[0] + "\n")
    done = wmtp("--resume", str(run), runs=tmp_path)
    assert_clean_failure(
        done, 2, f"cannot resume {run}: its data changed since the checkpoint", str(data)
    )
    assert "edited since step-2" in done.stderr and "pass --force" in done.stderr
    forced = wmtp("--resume", str(run), "--force", runs=tmp_path)
    assert forced.returncode == 0, forced.stderr[-3000:]
    assert "resuming with --force on data changed since the checkpoint" in forced.stderr


def test_force_refuses_what_a_resume_cannot_apply(partial_run, tmp_path):
    run = partial_run(4)
    done = wmtp("--resume", str(run), "--set", "model.policy.dim=128", "--force", runs=tmp_path)
    assert_clean_failure(done, 2, "even with --force", "model.policy.dim: the checkpoint holds")


# --- signals ------------------------------------------------------------------------------------


CONSTANT = "training.schedule={kind='constant', warmup_steps=1}"
"""Signal tests run long and stop early: a learning rate that does not depend on max_steps."""


def _start(runs: Path, *extra: str, env: dict | None = None) -> subprocess.Popen:
    long_run = (*RUN, CONSTANT, "training.max_steps=400", f"experiment.runs_dir='{runs}'")
    sets = [a for s in long_run for a in ("--set", s)]
    return subprocess.Popen(
        [sys.executable, "-m", "wmtp.cli", "run", str(TINY), *sets, *extra],
        cwd=REPO,
        env={**os.environ, "OMP_NUM_THREADS": "1", **(env or {})},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )


def _wait_for_step(runs: Path, proc: subprocess.Popen, step: int) -> Path:
    deadline = time.monotonic() + 240
    while True:
        assert proc.poll() is None, proc.stderr.read()
        assert time.monotonic() < deadline, f"step {step} never came"
        for metrics in runs.glob("tiny/2*/metrics.jsonl"):
            text = metrics.read_text()
            if f'"step": {step}.' in text or f'"step": {step},' in text:
                return metrics.parent
        time.sleep(0.05)


@pytest.mark.parametrize(("sig", "code"), [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_a_signal_stops_after_the_step_with_a_checkpoint_and_resumes_exactly(tmp_path, sig, code):
    runs = tmp_path / "runs"
    proc = _start(runs)
    run = _wait_for_step(runs, proc, 3)
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == code, err[-3000:]
    assert "Traceback" not in err and f"stopped: {signal.Signals(sig).name} after step" in err
    last = step_dirs(run)[-1]
    assert last.name in err and f"wmtp run --resume {run}" in err
    stopped_at = int(last.name.split("-")[1])
    assert [s for s, _ in losses_of(run)] == list(range(1, stopped_at + 1))  # nothing lost
    assert (runs / "tiny" / "latest").resolve() == run
    # the resumed run continues where it stopped and matches an uninterrupted one
    limit = ("--set", f"training.max_steps={stopped_at + 2}")
    done = wmtp("--resume", str(run), *limit, "--force", runs=runs)
    assert done.returncode == 0, done.stderr[-3000:]
    reference = train(tmp_path / "reference", "--set", CONSTANT, *limit)
    assert losses_of(run) == losses_of(reference), (stopped_at, err[-1500:], done.stderr[-1500:])


def test_a_signal_while_the_run_is_built_stops_at_once(tmp_path):
    """Before the first step there is nothing to wait for: the first SIGINT stops the build at
    once, says what the run directory keeps (no checkpoint: not `latest`), and run.log says so."""
    runs = tmp_path / "runs"
    proc = _start(runs)
    _read_until(proc, "model.policy: trains")  # building: the handlers are in place
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    (run,) = runs.glob("tiny/2*")
    said = f"stopped: SIGINT before the first step: nothing was trained; {run} keeps its recipe"
    assert proc.returncode == 130 and said in err and "Traceback" not in err, err[-2000:]
    assert not (run / "checkpoints").exists() and not (runs / "tiny" / "latest").exists()
    assert "stopped: SIGINT before the first step" in (run / "run.log").read_text()


def test_a_second_signal_stops_a_step_that_never_ends(tmp_path):
    """The first SIGINT asks for a stop after the step in progress; when that step hangs (a
    fault: step 2 waits, as for a peer that is gone), the second ends the process there and
    then, without a checkpoint."""
    proc = _start(tmp_path / "runs", env={"WMTP_FAULT": "rank=0,step=2,kind=hang"})
    _wait_for_step(tmp_path / "runs", proc, 1)
    proc.send_signal(signal.SIGINT)
    _read_until(proc, "SIGINT: stopping after this step")
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130 and "SIGINT again: stopping now" in err, err[-2000:]
    assert not list((tmp_path / "runs").glob("tiny/2*/checkpoints/step-*"))
    (log,) = (tmp_path / "runs").glob("tiny/2*/run.log")  # how the run ended, there too
    assert "stopped: SIGINT again: stopping now, without a checkpoint" in log.read_text()


def test_a_run_in_training_is_not_resumed_twice(tmp_path):
    """A second `wmtp run --resume` of a run that trains now (here: hung at step 5) is refused
    before it loads anything, naming the process that trains it; once that process is gone,
    however it ended, the run resumes (the kernel released its lock)."""
    runs = tmp_path / "runs"
    proc = _start(runs, env={"WMTP_FAULT": "rank=0,step=5,kind=hang"})
    run = _wait_for_step(runs, proc, 4)
    while not (run / "checkpoints" / "step-4").is_dir():
        time.sleep(0.05)
    before = sorted(p.name for p in (run / "checkpoints").iterdir())
    second = wmtp("--resume", str(run), runs=runs)
    assert_clean_failure(
        second, 2, f"cannot resume {run}: it is being trained now (pid {proc.pid} on"
    )
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == before
    assert "cannot resume" not in (run / "run.log").read_text()  # the first run's log
    proc.send_signal(signal.SIGINT)  # a stop after the hung step, which never ends
    _read_until(proc, "SIGINT: stopping after this step")
    proc.send_signal(signal.SIGINT)  # so: now
    proc.communicate(timeout=60)
    assert proc.returncode == 130
    done = wmtp("--resume", str(run), "--set", "training.max_steps=6", "--force", runs=runs)
    assert done.returncode == 0, done.stderr[-3000:]
    assert [s for s, _ in losses_of(run)] == list(range(1, 7))


def test_a_run_directory_removed_while_the_run_trains_is_said_so(tmp_path):
    """The run directory deleted part way (a clean-up script, a wrong `rm -rf`): the next write
    finds it gone. One message says so and that nothing is left to resume (not "continue with
    --resume", not "keeps its log"), exit 2; a library thread that failed on the way
    (TensorBoard's event writer) is one warning line, never a traceback."""
    proc = _start(tmp_path, "--set", "training.checkpoint_every=100")
    run = _wait_for_step(tmp_path, proc, 3)
    shutil.rmtree(run)
    _, err = proc.communicate(timeout=120)
    flat = " ".join(err.split())
    assert proc.returncode == 2, err[-3000:]
    assert f"the run directory {run} was removed while the run trained" in flat, err[-3000:]
    assert "nothing of it is left to resume" in flat
    assert "Traceback" not in err and "--resume" not in flat and "keeps its log" not in flat
    assert not run.exists() and not (run.parent / "latest").exists()


def _read_until(proc: subprocess.Popen, text: str) -> None:
    for line in proc.stderr:
        if text in line:
            return
    raise AssertionError(f"{text!r} never printed (exit {proc.wait()})")


# --- a failed start -----------------------------------------------------------------------------


def test_a_failed_start_on_the_recipe_leaves_no_run_directory_and_does_not_take_latest(tmp_path):
    """A start that fails on the recipe (flex attention cannot train on the CPU): the located
    message alone, no run directory of it left; `latest` still names the run with a checkpoint."""
    good = train(tmp_path, "--set", "training.max_steps=2")
    done = wmtp(str(TINY), "--set", "model.policy.attention='flex'", runs=tmp_path)
    assert_clean_failure(done, 2, "flex has no backward on the CPU")
    assert "keeps its log" not in done.stderr
    assert sorted((tmp_path / "tiny").glob("2*")) == [good]
    assert (tmp_path / "tiny" / "latest").resolve() == good  # still the run with a checkpoint


@pytest.mark.filterwarnings("ignore:torch.distributed is disabled")
def test_a_failure_inside_a_distributed_checkpoint_is_told_in_its_own_words(tmp_path):
    """DCP keeps each rank's failure as (exception, traceback) inside a CheckpointException
    whose own text is a traceback: the message gives the failure's words, and torch's short
    write ("unexpected pos") is said as what it is."""
    import torch
    import torch.distributed.checkpoint as dcp

    from wmtp.train.io_errors import describe_write_error

    blocked = tmp_path / "blocked"
    blocked.write_text("a file where DCP makes its folder")
    try:
        dcp.save({"w": torch.zeros(4)}, checkpoint_id=str(blocked / "state"))
    except BaseException as exc:  # DCP's CheckpointException is a BaseException
        said = describe_write_error(exc, tmp_path)
    assert said.startswith("[Errno 20] Not a directory") and "Traceback" not in said, said
    short = RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 704 vs 598")
    assert "the file system took fewer bytes than were written" in describe_write_error(
        short, tmp_path
    )


def test_a_stop_during_the_last_step_finishes_the_run_with_its_held_out_loss(tmp_path):
    """SIGTERM during the last step (``eval_every`` not dividing ``max_steps``): the run ends as
    an uninterrupted one does, its last held-out loss and checkpoint included, exit 0 (it
    stopped there, said to resume, and the resume had nothing to train: the loss never came)."""
    sets = ("--set", "training.max_steps=4", "--set", "training.eval_every=3")
    runs = tmp_path / "runs"
    done = wmtp(str(TINY), *sets, runs=runs, env={"WMTP_FAULT": "rank=0,step=4,kind=sigterm"})
    assert done.returncode == 0, done.stderr[-3000:]
    assert "SIGTERM during the last step: finishing the run" in done.stderr, done.stderr[-3000:]
    (run,) = runs.glob("tiny/2*")
    reference = train(tmp_path / "reference", *sets)

    def figures(folder: Path) -> list[dict]:
        lines = (folder / "metrics.jsonl").read_text().splitlines()
        kept = ("step", "loss", "eval/loss", "grad_norm")
        return [{k: v for k, v in json.loads(line).items() if k in kept} for line in lines]

    assert [r["step"] for r in figures(run) if "eval/loss" in r] == [3, 4]
    assert figures(run) == figures(reference)
    assert step_dirs(run)[-1].name == "step-4"
