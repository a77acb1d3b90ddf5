"""``wmtp run`` through the CLI: dry run, refused resume with the differing keys, user errors."""

from __future__ import annotations

import json
import os
import shutil

import pytest
from typer.testing import CliRunner

from tests.train.train_helpers import REPO, TINY
from wmtp.cli import app
from wmtp.commands._common import torchrun_command

runner = CliRunner()


@pytest.fixture(autouse=True)
def _in_repo(monkeypatch):
    monkeypatch.chdir(REPO)


def test_dry_run_builds_everything_and_writes_the_run_dir(tmp_path):
    result = runner.invoke(
        app, ["run", str(TINY), "--dry-run", "--set", f"experiment.runs_dir='{tmp_path}'"]
    )
    assert result.exit_code == 0, result.output
    (run_dir,) = (tmp_path / "tiny").glob("2*")
    assert "dry run" in result.output
    assert (run_dir / "recipe.toml").is_file()
    assert json.loads((run_dir / "fingerprint.json").read_text())["world_size"] == 1
    assert not (run_dir / "checkpoints").exists()
    assert not (tmp_path / "tiny" / "latest").exists()  # a dry run never becomes latest


def test_a_dry_run_with_no_row_to_train_fails_as_the_run_would_naming_the_data(tmp_path):
    """Every HumanEval row is longer than 64 bytes: nothing trains, and the dry run says so."""
    result = runner.invoke(
        app,
        ["run", str(TINY), "--dry-run", "--set", f"experiment.runs_dir='{tmp_path}'",
         "--set", "data.max_length=64"],
    )  # fmt: skip
    assert result.exit_code == 2, result.output
    flat = " ".join(result.output.split())
    assert "train.jsonl: no training rows are left" in flat and "Traceback" not in flat


def test_resume_with_other_numerics_is_refused_listing_the_keys(tmp_path):
    base = [
        "--set", f"experiment.runs_dir='{tmp_path}'",
        "--set", "training.max_steps=1", "--set", "training.micro_batch_size=1",
        "--set", "training.eval_every=0", "--set", "training.schedule.warmup_steps=0",
    ]  # fmt: skip
    assert runner.invoke(app, ["run", str(TINY), *base]).exit_code == 0
    run_dir = (tmp_path / "tiny" / "latest").resolve()
    changed = [*base, "--set", "training.lr=0.1", "--set", "training.weight_decay=0.5"]
    result = runner.invoke(app, ["run", str(TINY), "--resume", str(run_dir), *changed])
    assert result.exit_code == 2
    assert "training.lr: 0.003 -> 0.1 (numerics)" in result.output
    assert "training.weight_decay" in result.output and "--force" in result.output
    assert "Traceback" not in result.output


def test_a_resume_takes_new_evaluation_settings_without_force(tmp_path):
    """Training never reads ``[evaluation]``: a resume that changes it (more samples for the
    evaluation after training) goes on without ``--force``, and the run's checkpoints then hold
    the new settings, which ``wmtp eval RUN`` reads."""
    from wmtp.recipe import load_recipe

    base = [
        "--set", f"experiment.runs_dir='{tmp_path}'", "--set", "training.micro_batch_size=1",
        "--set", "training.eval_every=0", "--set", "training.schedule.warmup_steps=0",
        "--set", "training.checkpoint_every=1", "--set", "training.max_steps=2",
    ]  # fmt: skip
    first = runner.invoke(app, ["run", str(TINY), *base])
    assert first.exit_code == 0, first.output
    run_dir = (tmp_path / "tiny" / "latest").resolve()
    shutil.rmtree(run_dir / "checkpoints" / "step-2")  # a crash after step 1: work to resume
    changed = ["--set", "evaluation.n_samples=3"]
    result = runner.invoke(app, ["run", str(TINY), "--resume", str(run_dir), *base, *changed])
    assert result.exit_code == 0, result.output
    assert "--force" not in result.output
    saved = load_recipe(run_dir / "checkpoints" / "step-2" / "recipe.toml").recipe
    assert saved.evaluation.n_samples == 3


def test_user_errors_are_located_messages(tmp_path):
    missing = runner.invoke(app, ["run", "--resume", str(tmp_path)])
    assert missing.exit_code == 2 and "not a run directory" in missing.output
    gone = runner.invoke(app, ["run", "--resume", str(tmp_path / "gone")])
    assert gone.exit_code == 2 and "no such run directory" in gone.output
    typo = runner.invoke(app, ["run", str(TINY), "--set", "training.lrr=1"])
    assert typo.exit_code == 2 and "lrr" in typo.output


def test_a_cuda_device_without_a_gpu_is_located_where_the_recipe_set_it(tmp_path):
    """parallel.device = "cuda" on a machine without a GPU: `wmtp run` says where it was set
    (the --set, or the recipe's line), exit 2, before a run directory is made."""
    import torch

    if torch.cuda.is_available():
        pytest.skip("a machine without a GPU refuses the device")
    runs = f"experiment.runs_dir='{tmp_path}'"
    by_set = runner.invoke(app, ["run", str(TINY), "--set", "parallel.device=cuda", "--set", runs])
    said = "parallel.device: 'cuda', but no CUDA device is visible (set it to 'cpu' or 'auto')"
    assert by_set.exit_code == 2 and f"--set parallel.device=cuda: {said}" in by_set.output
    recipe = tmp_path / "gpu.toml"
    recipe.write_text(TINY.read_text().replace('device = "cpu"', 'device = "cuda"'))
    line = recipe.read_text().splitlines().index('device = "cuda"') + 1
    in_file = runner.invoke(app, ["run", str(recipe), "--set", runs])
    assert in_file.exit_code == 2 and f"gpu.toml:{line}:1: {said}" in in_file.output
    assert not list(tmp_path.glob("*/2*")), "a run directory was made"


def test_nproc_relaunches_through_torchrun_with_the_same_arguments():
    cmd = torchrun_command(
        ["recipes/tiny.toml", "--nproc-per-node", "4", "--set", "training.lr=1"], 4
    )
    assert cmd[1:4] == ["-m", "torch.distributed.run", "--standalone"]
    assert "--nproc-per-node=4" in cmd
    assert cmd[cmd.index("wmtp.cli") + 1 :] == [
        "run",
        "recipes/tiny.toml",
        "--set",
        "training.lr=1",
    ]


PROBE = """
import sys
from wmtp.cli import app
try:
    app(sys.argv[1:])
except SystemExit as exit:
    code = exit.code
print("TORCH", "torch" in sys.modules, "EXIT", code)
"""


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["--set", "training.max_steps='100'"], "expected an integer"),
        (["--set", "model.policy.path='no/such/model'"], "model.policy.path: 'no/such/model'"),
        (["--set", "data={kind='jsonl', path='no/data', max_length=1024}"], "data.path: 'no/data'"),
    ],
)
def test_run_refuses_a_bad_recipe_or_a_missing_input_before_torch_loads(args, expected):
    """What `wmtp validate` reports, `wmtp run` reports as fast: before importing torch."""
    import subprocess
    import sys

    done = subprocess.run(
        [sys.executable, "-c", PROBE, "run", str(TINY), *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.stdout.strip().splitlines()[-1] == "TORCH False EXIT 2", done.stderr
    assert expected in done.stderr and "Traceback" not in done.stderr


def test_run_of_a_recipe_whose_frozen_model_was_never_trained_names_the_recipe_to_run(tmp_path):
    result = runner.invoke(
        app,
        [
            "run",
            str(REPO / "recipes" / "tiny_verifiable.toml"),
            "--set",
            f"model.critic.checkpoint='{tmp_path}/runs/tiny_critic/latest'",
        ],
    )
    assert result.exit_code == 2
    assert "model.critic.checkpoint" in result.output and "tiny_critic" in result.output
    assert "Traceback" not in result.output


def test_a_run_that_could_not_be_placed_is_refused_before_torch_loads(tmp_path):
    """A file or a broken link where runs_dir must be a folder (a run into one spun forever
    before), or a user's folder named `latest` where wmtp
    keeps its link: said before training (training would fail at its first checkpoint, when it
    points `latest` at the new run), and nothing of the user's is touched."""
    import subprocess
    import sys

    (tmp_path / "afile").write_text("mine")
    (tmp_path / "unmounted").symlink_to("/mnt/not-mounted/runs")  # a disk not mounted now
    kept = tmp_path / "runs" / "tiny" / "latest"
    kept.mkdir(parents=True)
    (kept / "notes.txt").write_text("mine")
    cases = {
        "afile": "afile is a file, not a folder",
        "afile/sub": "afile is a file, not a folder",
        "runs": "latest is not the symlink wmtp keeps",
        "unmounted": "unmounted is a broken symbolic link (to /mnt/not-mounted/runs)",
    }
    for runs_dir, expected in cases.items():
        done = subprocess.run(
            [sys.executable, "-c", PROBE, "run", str(TINY), "--set",
             f"experiment.runs_dir='{tmp_path / runs_dir}'"],
            cwd=REPO, capture_output=True, text=True, timeout=120,
        )  # fmt: skip
        assert done.stdout.strip().splitlines()[-1] == "TORCH False EXIT 2", done.stderr
        flat = " ".join(done.stderr.split())
        assert "experiment.runs_dir" in flat and expected in flat, flat
    assert (tmp_path / "afile").read_text() == "mine" and (kept / "notes.txt").read_text() == "mine"
    assert sorted(p.name for p in (tmp_path / "runs" / "tiny").iterdir()) == ["latest"]


def test_a_frozen_model_from_a_run_that_trained_another_role_is_named(tmp_path):
    """model.critic.checkpoint naming a baseline run (a policy): said before torch loads, by
    key and pipeline, not as a list of the state dict's missing keys."""
    import subprocess
    import sys

    from tests.eval.tiny_runs import policy, train

    baseline = train(tmp_path, "baseline", "baseline", policy(), steps=1)
    done = subprocess.run(
        [sys.executable, "-c", PROBE, "run", str(REPO / "recipes" / "tiny_verifiable.toml"),
         "--set", f"model.critic.checkpoint='{baseline}'"],
        cwd=REPO, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.stdout.strip().splitlines()[-1] == "TORCH False EXIT 2", done.stderr
    flat = " ".join(done.stderr.split())
    assert "model.critic.checkpoint" in flat, flat
    assert "a baseline run, which trained model.policy, not a critic" in flat
    # weights copied without the recipe beside them: nothing to check their tokenizer against
    alone = tmp_path / "weights-alone"
    alone.mkdir()
    shutil.copy(baseline / "checkpoints" / "step-1" / "model.safetensors", alone)
    for given, why in ((baseline, "not a critic"), (alone, "no recipe.toml beside the weights")):
        sets = ["--set", f"model.critic.checkpoint='{given}'"]
        for command in (["validate"], ["run", "--dry-run"]):  # the same problem, before torch
            done = subprocess.run(
                [sys.executable, "-c", PROBE, *command, str(REPO / "recipes" / "tiny_verifiable.toml"), *sets],
                cwd=REPO, capture_output=True, text=True, timeout=120,
            )  # fmt: skip
            assert done.stdout.strip().splitlines()[-1] == "TORCH False EXIT 2", done.stderr
            flat = " ".join((done.stdout + done.stderr).split())
            assert f"{sets[1]}: model.critic.checkpoint: '{given}': " in flat and why in flat, flat


def test_a_dataset_folders_own_heldout_file_is_named_when_the_recipe_splits_instead(tmp_path):
    """A folder with train.jsonl and heldout.jsonl, the recipe holding out a fraction of
    train.jsonl's problems (the default): the run says heldout.jsonl is not read and how to use it."""
    import subprocess
    import sys

    from tests.data.data_rows import problem_rows, write_dataset

    folder = tmp_path / "dataset"
    folder.mkdir()
    write_dataset(folder / "train.jsonl", problem_rows(20, correct=2, incorrect=1))
    write_dataset(folder / "heldout.jsonl", problem_rows(3, correct=1, incorrect=0))
    data = (
        f"data={{kind='jsonl', path='{folder}', max_length=1024, split={{heldout_fraction=0.1}}}}"
    )
    done = subprocess.run(
        [sys.executable, "-m", "wmtp.cli", "run", str(TINY), "--dry-run",
         "--set", f"experiment.runs_dir='{tmp_path / 'runs'}'", "--set", data],
        cwd=REPO, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    flat = " ".join((done.stdout + done.stderr).split())
    assert f"data: {folder / 'heldout.jsonl'} is not read" in flat, flat
    assert f"heldout_path = '{folder / 'heldout.jsonl'}', heldout_fraction = 0" in flat, flat


def test_a_cpu_run_past_this_machines_memory_is_warned_before_it_starts(tmp_path):
    """On the CPU the kernel kills a run past the machine's memory without a word: the run
    says so first, as a warning located at the micro-batch (the estimate may overshoot, so it
    is not refused); a dry run builds nothing that size."""
    import subprocess
    import sys

    from wmtp.estimate import estimate, host_memory
    from wmtp.recipe import load_recipe

    per_row = estimate(load_recipe(TINY).recipe).memory.total / 4
    rows = int(2 * host_memory() / per_row)
    done = subprocess.run(
        [sys.executable, "-m", "wmtp.cli", "run", str(TINY), "--dry-run",
         "--set", f"training.micro_batch_size={rows}",
         "--set", f"experiment.runs_dir='{tmp_path}'"],
        cwd=REPO, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    flat = " ".join(done.stderr.split())
    said = f"warning: --set training.micro_batch_size={rows}: training.micro_batch_size: the memory"
    assert said in flat and "the kernel stops the run without a message (exit 137)" in flat
    small = subprocess.run(
        [sys.executable, "-m", "wmtp.cli", "run", str(TINY), "--dry-run",
         "--set", f"experiment.runs_dir='{tmp_path}'"],
        cwd=REPO, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert small.returncode == 0 and "memory estimate" not in small.stderr, small.stderr[-2000:]


def test_held_out_rows_all_left_out_are_said_when_eval_every_asks_for_them(tmp_path):
    """Every held-out row longer than max_length: the run says that eval_every will evaluate
    nothing, beside the data lines that say why."""
    import subprocess
    import sys

    from tests.data.data_rows import problem_rows, write_dataset
    from wmtp.data.examples import Example

    train = write_dataset(tmp_path / "train.jsonl", problem_rows(6, 2, 1))
    long = [Example("Solve problem H.", "z" * 2000, "H", True)]
    heldout = write_dataset(tmp_path / "heldout.jsonl", long)
    data = (
        f"data={{kind='jsonl', path='{train}', max_length=1024, "
        f"split={{heldout_fraction=0, heldout_path='{heldout}'}}}}"
    )
    done = subprocess.run(
        [sys.executable, "-m", "wmtp.cli", "run", str(TINY), "--dry-run", "--set", data,
         "--set", f"experiment.runs_dir='{tmp_path / 'runs'}'"],
        cwd=REPO, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    flat = " ".join(done.stderr.split())
    assert "left out 1 row: held-out, longer than max_length=1024" in flat, flat
    assert "warning: training.eval_every = 60, but no held-out row is left" in flat


@pytest.mark.parametrize("command", ["run", "show"])
def test_extends_given_with_set_is_refused_where_it_was_given(command, tmp_path):
    """``--set extends=...`` was accepted, ignored, and written into the run's recipe.toml and
    every checkpoint's, whose ``extends`` then kept resume, eval and export from loading them."""
    override = f"extends='{REPO / 'recipes' / 'base.toml'}'"
    runs = f"experiment.runs_dir='{tmp_path / 'runs'}'"
    result = runner.invoke(app, [command, str(TINY), "--set", override, "--set", runs])
    flat = " ".join(result.output.split())
    assert result.exit_code == 2, flat
    assert f"--set {override}: extends: extends names the recipes a recipe file builds on" in flat
    assert not (tmp_path / "runs").exists()


def test_outputs_on_a_kernels_file_system_are_refused_before_any_work(tmp_path):
    """A runs_dir or --out on /proc (root included, nothing can make a folder there): located,
    exit 2, before anything starts; not a traceback when the folder is made."""
    run = ["run", str(TINY), "--dry-run", "--set", "experiment.runs_dir='/proc/wmtp-runs'"]
    report = ["report", str(tmp_path), "--out", "/proc/wmtp-report"]
    said = "/proc is on the kernel's proc file system, which holds no folders of ours"
    for args, where in (
        (run, "experiment.runs_dir: '/proc/wmtp-runs': "),
        (report, "--out /proc/wmtp-report: "),
    ):
        result = CliRunner().invoke(app, args)
        flat = " ".join(result.output.split())
        assert result.exit_code == 2 and f"{where}{said}" in flat, flat


def test_validate_checks_a_frozen_critic_run_without_importing_torch(tmp_path):
    """A verifiable recipe over a critic run that fits: validate reads the critic's recipe
    (tokenizer, value head) as the build will, exit 0, and imports no torch to do it."""
    import subprocess
    import sys

    from tests.eval.tiny_runs import critic, policy, recipe, train

    critic_run = train(tmp_path, "critic", "critic", critic(), steps=1)
    body = policy() + critic(critic_run) + '[weighting]\nkind = "td"\n'
    verifiable = recipe(tmp_path, "verifiable", "verifiable", body)
    done = subprocess.run(
        [sys.executable, "-c", PROBE, "validate", str(verifiable)],
        cwd=REPO, capture_output=True, text=True, timeout=120,
        env={**os.environ, "WMTP_NO_CACHE": "1"},
    )  # fmt: skip
    assert done.stdout.strip().splitlines()[-1] == "TORCH False EXIT 0", done.stdout + done.stderr


def test_a_run_given_as_the_recipe_is_said_to_start_a_new_run_and_how_to_continue_it(tmp_path):
    """`wmtp run RUN` (without --resume) trains a new run from RUN's recipe: a user who meant to
    continue RUN is told so at the start, with the command that does; a recipe file is not."""
    import subprocess
    import sys

    def wmtp_run(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, "-m", "wmtp.cli", "run", *args,
             "--set", f"experiment.runs_dir='{tmp_path}'"],
            cwd=REPO, capture_output=True, text=True, timeout=300,
        )  # fmt: skip

    trained = wmtp_run(
        str(TINY), "--set", "training.max_steps=2", "--set", "training.schedule.warmup_steps=1"
    )
    assert trained.returncode == 0, trained.stderr[-3000:]
    assert "warning:" not in trained.stderr, trained.stderr[-2000:]
    latest = tmp_path / "tiny" / "latest"
    again = wmtp_run(str(latest), "--dry-run")
    assert again.returncode == 0, again.stderr[-3000:]
    flat = " ".join(again.stderr.split())
    assert (
        f"warning: {latest} is a run: this starts a new run from its recipe.toml; to continue "
        f"that run instead: wmtp run --resume {latest}"
    ) in flat
    assert len(list((tmp_path / "tiny").glob("2*"))) == 2  # the run itself untouched, a new one
