"""A real ``wmtp`` command in a child process with a call of its own changed (:func:`wmtp_with`):
paused there until the test lets it go (what a second command sees while the first is in the
middle of its work), or sent a signal there."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import time
from pathlib import Path

from tests.train.train_helpers import REPO


def wmtp_with(module: str, attr: str, before: str, argv: list) -> str:
    """Python source that runs ``wmtp ARGV`` with ``before`` (statements, which may use
    ``pathlib``, ``os``, ``signal`` and ``time``) run at each call of ``MODULE.ATTR``, before it."""
    body = textwrap.indent(textwrap.dedent(before).strip(), " " * 4)
    return (
        "import importlib, os, pathlib, signal, sys, time\n"
        f"module = importlib.import_module({module!r})\n"
        f"original = getattr(module, {attr!r})\n"
        "def patched(*args, **kwargs):\n"
        f"{body}\n"
        "    return original(*args, **kwargs)\n"
        f"setattr(module, {attr!r}, patched)\n"
        "from wmtp.cli import app\n"
        f"sys.argv = ['wmtp', *{[str(a) for a in argv]!r}]\n"
        "app()\n"
    )


class PausedCommand:
    """``wmtp ARGV`` in a child whose ``MODULE.ATTR`` waits, when first called, for the test's
    :meth:`go`. :meth:`wait_until_paused` returns once the child is waiting there."""

    def __init__(
        self,
        module: str,
        attr: str,
        argv: list,
        signals: Path,
        as_user: tuple[list[str], dict[str, str]] | None = None,
    ):
        """``as_user``: the command prefix and environment of another user
        (``tests.unprivileged.OtherUser.running``); ``signals`` must be a folder it can write."""
        signals.mkdir(parents=True, exist_ok=True)
        self.ready, self.released = signals / "paused", signals / "go"
        before = f"""
            pathlib.Path({str(self.ready)!r}).touch()
            while not pathlib.Path({str(self.released)!r}).exists():
                time.sleep(0.05)
        """
        code = wmtp_with(module, attr, before, argv)
        prefix, env = as_user or ([], None)
        self.child = subprocess.Popen(
            [*prefix, sys.executable, "-c", code], cwd=REPO, env=env, stdout=subprocess.PIPE,
            stderr=subprocess.PIPE, text=True,
        )  # fmt: skip

    @property
    def pid(self) -> int:
        return self.child.pid

    def wait_until_paused(self, timeout: float = 240) -> None:
        deadline = time.monotonic() + timeout
        while not self.ready.exists():
            if self.child.poll() is not None:
                raise AssertionError(f"ended before its pause: {self.child.communicate()}")
            assert time.monotonic() < deadline, "never reached its pause"
            time.sleep(0.05)

    def go(self, timeout: float = 300) -> tuple[int, str]:
        """Let it go on; its exit code and its output (stdout and stderr, one spaced line)."""
        self.released.touch()
        out, err = self.child.communicate(timeout=timeout)
        return self.child.returncode, " ".join((out + err).split())
