"""Places a user cannot write: said before any work, located, exit 2, no traceback, nothing
changed. Each through the real CLI, as a user the file system really refuses
(``tests.unprivileged``: ``nobody`` when the tests run as root)."""

from __future__ import annotations

import errno
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from tests.data.data_rows import problem_rows, write_dataset
from tests.train.train_helpers import REPO, TINY
from tests.unprivileged import read_only
from wmtp.commands._common import command
from wmtp.errors import StorageError
from wmtp.folders import refused_write

SHORT = (
    "training.micro_batch_size=2",
    "training.eval_every=0",
    "training.max_steps=4",
    "training.schedule.warmup_steps=1",
    "training.checkpoint_every=2",
)


def sets(*values: str) -> list[str]:
    return [a for v in values for a in ("--set", v)]


def refused(done: subprocess.CompletedProcess, *expected: str) -> str:
    """The one-line message of a clean refusal (exit 2, no traceback) holding ``expected``."""
    flat = " ".join(done.stderr.split())
    assert done.returncode == 2, done.stderr[-3000:]
    assert "Traceback" not in done.stderr, done.stderr[-3000:]
    for text in expected:
        assert text in flat, (text, flat)
    return flat


def snapshot(folder: Path) -> dict[str, tuple[int, int]]:
    return {
        str(p.relative_to(folder)): (p.stat().st_size, p.stat().st_mtime_ns)
        for p in sorted(folder.rglob("*"))
    }


def test_a_run_into_a_folder_it_cannot_write_is_refused_where_the_recipe_sets_it(other_user):
    runs = read_only(other_user.place / "runs")
    done = other_user.wmtp("run", str(TINY), *sets(f"experiment.runs_dir='{runs}'"))
    refused(done, "experiment.runs_dir", f"{runs} is not writable by this user")
    assert list(runs.iterdir()) == []


def test_humaneval_not_built_in_a_folder_it_cannot_write_is_refused_before_building(other_user):
    cache = read_only(other_user.place / "cache")
    runs = other_user.place / "runs"
    done = other_user.wmtp(
        "run", str(TINY), *sets(f"experiment.runs_dir='{runs}'", f"data.cache_dir='{cache}'")
    )
    refused(done, "data.cache_dir", "HumanEval is not built there yet, and cannot be")
    assert list(cache.iterdir()) == [] and not runs.exists()


def test_index_of_a_dataset_in_a_read_only_folder_is_refused_before_reading_it(other_user):
    data = other_user.place / "data"
    data.mkdir()
    write_dataset(data / "train.jsonl", problem_rows(2, 1, 1))
    read_only(data)
    done = other_user.wmtp("data", "index", str(data))
    refused(done, "train.jsonl: its metadata cannot be written beside it", "not writable")
    assert [p.name for p in data.iterdir()] == ["train.jsonl"]


@pytest.mark.slow
def test_a_run_it_cannot_write_is_neither_resumed_nor_exported_into_nor_evaluated_into(
    other_user,
):
    """Someone else's run (or one on a read-only mount): `--resume` refuses before loading
    anything and changes nothing; an export or evaluation into a folder this user cannot
    write is refused before the model loads."""
    runs = other_user.place / "runs"
    trained = subprocess.run(
        [sys.executable, "-m", "wmtp.cli", "run", str(TINY),
         *sets(*SHORT, f"experiment.runs_dir='{runs}'")],
        cwd=REPO, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert trained.returncode == 0, trained.stderr[-3000:]
    run = (runs / "tiny" / "latest").resolve()
    shutil.rmtree(run / "checkpoints" / "step-4")  # a crash after step 2: work to resume
    read_only(run)
    before = snapshot(run)

    done = other_user.wmtp("run", "--resume", str(run))
    refused(done, f"cannot resume {run}: this user cannot write", "nothing in it was changed")
    for name in ("the run directory itself", "checkpoints", "run.log", "metrics.jsonl"):
        assert name in " ".join(done.stderr.split())

    out = read_only(other_user.place / "out")
    done = other_user.wmtp("export", str(run), "--to", "hf", "--out", str(out / "hf"))
    refused(done, f"--out {out / 'hf'}: {out} is not writable by this user")
    # into a folder of its own, the same user exports it: the weights are as readable as the
    # recipe beside them (safetensors alone would have made them its writer's only)
    mine = other_user.place / "home" / "hf"
    done = other_user.wmtp("export", str(run), "--to", "hf", "--out", str(mine))
    assert done.returncode == 0, done.stderr[-3000:]
    assert (mine / "model.safetensors").is_file()
    done = other_user.wmtp("eval", str(run), "--out", str(out / "eval"), "--sandbox", "rlimits")
    refused(done, f"--out {out / 'eval'}: {out} is not writable by this user")
    assert snapshot(run) == before and list(out.iterdir()) == []


def test_a_write_the_file_system_refuses_is_a_message_not_a_traceback():
    """What no check foresaw (a folder made read-only mid-command): the CLI says which file and
    why, exit 2; any other OSError stays a bug with its traceback."""
    app = typer.Typer()

    @command(app, "write")
    def write(code: int) -> None:
        """Fail as a write would."""
        try:
            raise OSError(code, "refused", "/data/out/model.safetensors")
        except OSError as exc:
            raise RuntimeError("while saving") from exc

    @command(app, "other")
    def other() -> None:
        """Another command."""

    for code, words in ((errno.EACCES, "permission denied"), (errno.EROFS, "read-only")):
        result = CliRunner().invoke(app, ["write", str(code)])
        flat = " ".join(result.output.split())
        assert result.exit_code == 2 and "Traceback" not in result.output, result.output
        assert f"cannot write /data/out/model.safetensors: {words}" in flat
    result = CliRunner().invoke(app, ["write", str(errno.EBADF)])
    assert result.exit_code == 1 and isinstance(result.exception, RuntimeError)
    assert isinstance(refused_write(PermissionError(errno.EACCES, "x")), StorageError)
    assert refused_write(ValueError("x")) is None


def test_weights_files_get_the_mode_the_umask_gives_any_new_file(tmp_path):
    """Every writer of .safetensors (checkpoints, exports, LoRA adapters) goes through
    safetensors_file.save: the file's mode is the umask's, under two umasks."""
    import os

    import torch

    from wmtp.models import safetensors_file

    before = os.umask(0o022)
    try:
        for mask in (0o022, 0o027):
            os.umask(mask)
            path = safetensors_file.save({"w": torch.zeros(2)}, tmp_path / f"m{mask:o}.safetensors")
            plain = tmp_path / f"plain{mask:o}.json"
            plain.write_text("{}")
            assert safetensors_file.umask() == mask
            assert path.stat().st_mode & 0o777 == plain.stat().st_mode & 0o777 == 0o666 & ~mask
    finally:
        os.umask(before)
