"""An export stopped while it writes, in a real ``wmtp export`` process: by SIGINT or SIGTERM
(Ctrl-C, ``kill``, a scheduler's time limit) it says so, exits 128 + the signal and leaves
nothing; by SIGKILL (the OOM killer) it cannot clean up, so the next export to that folder does."""

from __future__ import annotations

import signal
import subprocess
import sys

import pytest

from tests.export.export_helpers import export
from tests.paused import wmtp_with
from tests.train.train_helpers import REPO


def export_stopped_by(sig: signal.Signals, source, out) -> subprocess.CompletedProcess:
    """``wmtp export SOURCE --to hf --out OUT`` sent ``sig`` by itself once its weights are
    written, as it starts on the tokenizer files."""
    before = f"os.kill(os.getpid(), signal.{sig.name})"
    argv = ["export", source, "--to", "hf", "--out", out, "--no-progress"]
    code = wmtp_with("wmtp.export.tokenizer_files", "write_tokenizer", before, argv)
    cmd = [sys.executable, "-c", code]
    return subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_a_stopped_export_says_so_and_leaves_nothing(sig, tiny_run, tmp_path):
    out = tmp_path / "exports" / "tiny"
    done = export_stopped_by(sig, tiny_run, out)
    assert done.returncode == 128 + sig, done.stdout + done.stderr
    said = " ".join((done.stdout + done.stderr).split())
    assert f"stopped: --out {out}: the export stopped on {sig.name}" in said
    assert "Traceback" not in said
    assert list(tmp_path.iterdir()) == []  # no staging folder, nor the parent it made


def test_a_killed_exports_staging_is_removed_by_the_next_export(tiny_run, tmp_path):
    out = tmp_path / "tiny"
    done = export_stopped_by(signal.SIGKILL, tiny_run, out)
    assert done.returncode == -signal.SIGKILL
    staging, lock = sorted(tmp_path.iterdir())  # half written, under its temporary name
    assert lock.name == ".tiny.lock"  # left by the killed export; its lock went with it
    assert staging.name.startswith(".tiny.export-") and (staging / "model.safetensors").is_file()
    result = export(tiny_run, "--to", "hf", "--out", out)
    assert result.exit_code == 0, result.output
    assert [p.name for p in tmp_path.iterdir()] == ["tiny"]
