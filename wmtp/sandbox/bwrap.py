"""The bubblewrap isolation: whether ``bwrap`` works here, and the command line that runs a program
inside it.

Inside: a read-only view of ``/``, a private ``/tmp``, the call's folder as the only writable
place, no network (loopback included: a new, empty network namespace), its own PID namespace
(every process started inside dies with it, ``setsid``/double-forked ones included), all
capabilities dropped, and ``--die-with-parent``.
"""

from __future__ import annotations

import functools
import shutil
import subprocess
from pathlib import Path

from wmtp.sandbox.users import NOBODY_UID, as_user, runner

INNER_DIR = "/tmp/sandbox"  # where the call's folder appears inside bubblewrap
INSTALL_HINT = "`apt-get install bubblewrap`, or your distribution's bubblewrap package"

SUMMARY = "read-only root, private /tmp, no network, own PID namespace"
"""What bubblewrap isolates, for ``isolation()``'s detail."""


def flags() -> list[str]:
    """The namespace and mount flags shared by the probe and every call."""
    return [
        "--ro-bind", "/", "/",
        "--dev", "/dev",
        "--proc", "/proc",
        "--tmpfs", "/tmp",
        "--unshare-all",  # net (loopback included), pid, ipc, uts, cgroup, user where possible
        "--die-with-parent",
        "--new-session",
        "--cap-drop", "ALL",
    ]  # fmt: skip


def probe() -> str | None:
    """None when bubblewrap works here with our flags, else the reason it does not.

    ``bwrap`` is looked up on ``PATH`` at every call; what each executable can do is probed once.
    """
    exe = shutil.which("bwrap")
    if exe is None:
        return "bwrap is not installed: not found on PATH"
    return _probe(exe)


@functools.cache
def _probe(exe: str) -> str | None:
    argv = [exe, *flags(), "--", "/bin/true"]
    try:
        uid = NOBODY_UID if runner().drops_root else None
        proc = subprocess.run(argv, capture_output=True, timeout=20, **as_user(uid))
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"{exe} cannot start: {exc}"
    if proc.returncode != 0:
        return f"{exe} fails here: {proc.stderr.decode(errors='replace').strip()}"
    return None


def argv(workdir: Path, program: list[str], status_fd: int | None = None) -> list[str]:
    """The command line that runs ``program`` inside bubblewrap, with ``workdir`` as its folder
    (and bubblewrap's JSON status, the child's pid first, written to ``status_fd``)."""
    status = [] if status_fd is None else ["--json-status-fd", str(status_fd)]
    return [
        shutil.which("bwrap") or "bwrap",
        *flags(),
        *status,
        "--bind", str(workdir), INNER_DIR,
        "--chdir", INNER_DIR,
        "--setenv", "HOME", INNER_DIR,
        "--setenv", "TMPDIR", "/tmp",
        "--",
        *program,
    ]  # fmt: skip
