"""Commands run as a user without the right to write where they are pointed.

Root writes through any permission bit, so as root (CI's containers) the subprocess runs as
``nobody`` (through ``setpriv``); as any other user the permission bits already hold. Its files live
in a folder every user can reach (pytest's ``tmp_path`` sits under a folder only its owner can
enter), removed afterwards.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

NOBODY = 65534
AS_NOBODY = ["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups"]
"""util-linux's setpriv: the interpreter it starts runs as ``nobody`` from its first line."""


def _as_user() -> list[str]:
    """The command prefix that runs as an unprivileged user: none for one already."""
    if os.geteuid() != 0:
        return []
    if shutil.which("setpriv") is None:
        pytest.skip("running as root, and no setpriv to run as another user")
    return AS_NOBODY


@dataclass
class OtherUser:
    """Runs ``wmtp`` as a user who owns nothing but :attr:`home` inside :attr:`place`."""

    place: Path
    """A folder this user can enter and write; make read-only folders under it."""
    cwd: Path

    @property
    def home(self) -> Path:
        return self.place / "home"

    @property
    def running(self) -> tuple[list[str], dict[str, str]]:
        """The command prefix that runs a process as this user, and its environment."""
        env = {**os.environ, "HOME": str(self.home), "OMP_NUM_THREADS": "1"}
        env.pop("WMTP_CACHE_DIR", None)
        return _as_user(), env

    def wmtp(self, *args: str, timeout: float = 300) -> subprocess.CompletedProcess:
        prefix, env = self.running
        return subprocess.run(
            [*prefix, sys.executable, "-m", "wmtp.cli", *args],
            cwd=self.cwd,
            env=env,
            capture_output=True,
            text=True,
            timeout=timeout,
        )


def read_only(path: Path) -> Path:
    """``path`` (a folder, made if missing) and everything in it, unwritable for the user."""
    path.mkdir(parents=True, exist_ok=True)
    for item in [path, *path.rglob("*")]:
        if not item.is_symlink():
            item.chmod(item.stat().st_mode & ~0o222)
    return path


@pytest.fixture
def other_user() -> Iterator[OtherUser]:
    place = Path(tempfile.mkdtemp(prefix="wmtp-other-user-"))
    try:
        place.chmod(0o777)
        user = OtherUser(place, cwd=Path(__file__).resolve().parents[1])
        user.home.mkdir()
        user.home.chmod(0o777)
        probe = user.wmtp("--version", timeout=60)
        if probe.returncode != 0:
            pytest.skip(f"this interpreter cannot run as another user: {probe.stderr[-300:]}")
        yield user
    finally:
        for item in [place, *place.rglob("*")]:  # read-only folders stop rmtree as a non-root
            if item.is_dir() and not item.is_symlink():
                item.chmod(0o777)
        shutil.rmtree(place, ignore_errors=True)
