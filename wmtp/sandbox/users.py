"""Who runs a sandboxed program: the interpreter, and (when we are root) a per-call uid.

Root ignores RLIMIT_NPROC and may read and write every file, so a root caller runs each program
as its own unprivileged uid: a slot of a range no account uses, held with a file lock across
processes. The process limit then holds per call (one fork bomb cannot starve the sandboxes
beside it), root-owned files stay out of reach, and at the end every process of that uid is
killed, whatever session or namespace it is in.
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from wmtp.errors import SandboxError

NOBODY_UID = 65534  # probes whether an unprivileged uid can run the interpreter
SANDBOX_UID_BASE = 1_600_000_000  # per-call uids: SANDBOX_UID_BASE + slot, used by no account
UID_SLOTS = 512


@dataclass(frozen=True)
class Runner:
    """Which interpreter runs sandboxed programs, and whether as a per-call uid (when root)."""

    python: str
    drops_root: bool
    note: str
    """How the programs run, for ``isolation()``'s detail ("" for an ordinary user)."""


def as_user(uid: int | None) -> dict:
    """Popen arguments that run the child as ``uid`` (nothing when None)."""
    return {} if uid is None else {"user": uid, "group": uid, "extra_groups": []}


@functools.cache
def runner() -> Runner:
    """``$WMTP_SANDBOX_PYTHON`` or this interpreter; as root, the first one an unprivileged uid
    (probed as ``nobody``) can run.

    An interpreter under a private home (``/root/.pyenv``) is out of an unprivileged uid's reach,
    hence the system one as a second choice. Sandboxed programs need only the standard library.
    """
    explicit = os.environ.get("WMTP_SANDBOX_PYTHON")
    if os.geteuid() != 0:
        return Runner(explicit or sys.executable, False, "")
    candidates = [explicit] if explicit else [sys.executable, "/usr/bin/python3"]
    for python in candidates:
        try:
            probe = subprocess.run(
                [python, "-I", "-c", "import resource"],
                capture_output=True,
                timeout=30,
                **as_user(NOBODY_UID),
            )
        except (OSError, subprocess.TimeoutExpired):
            continue
        if probe.returncode == 0:
            return Runner(python, True, f" as a per-call unprivileged uid with {python}")
    return Runner(
        explicit or sys.executable,
        False,
        " as root (no interpreter that nobody can run: the process limit does not bind root)",
    )


@contextlib.contextmanager
def uid_slot() -> Iterator[int | None]:
    """A uid no other sandbox call uses right now (None when we are not root)."""
    if not runner().drops_root:
        yield None
        return
    slots = Path(tempfile.gettempdir()) / "wmtp-sandbox-slots"
    slots.mkdir(mode=0o700, exist_ok=True)
    for slot in range(UID_SLOTS):
        with open(slots / f"{slot}.lock", "w") as lock:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                continue
            yield SANDBOX_UID_BASE + slot
            return
    raise SandboxError(f"more than {UID_SLOTS} sandboxed programs at once")


def processes_of(uid: int) -> list[int]:
    """PIDs of every process (zombies included) owned by ``uid``."""
    pids = []
    with os.scandir("/proc") as entries:  # os.scandir: a third of pathlib's time, once per call
        for entry in entries:
            if entry.name.isdigit():
                with contextlib.suppress(OSError):
                    if entry.stat().st_uid == uid:
                        pids.append(int(entry.name))
    return pids


def kill_uid(uid: int, limit_s: float = 10.0) -> None:
    """SIGKILL every process of ``uid`` and wait until they are reaped too (zombies still count
    against the uid's process limit, which the slot's next call starts from). Orphans are ours
    to reap (see :func:`become_subreaper`)."""
    deadline = time.monotonic() + limit_s
    while (pids := processes_of(uid)) and time.monotonic() < deadline:
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
            _reap(pid)
        time.sleep(0.01)


def _reap(pid: int) -> None:
    """Collect ``pid`` if it is our (adopted) zombie; nothing otherwise."""
    with contextlib.suppress(ChildProcessError, OSError):
        os.waitpid(pid, os.WNOHANG)


@functools.cache
def become_subreaper() -> bool:
    """Make this process the reaper of its orphaned descendants (Linux ``PR_SET_CHILD_SUBREAPER``).

    bubblewrap's inner process outlives the outer one when a call's processes are killed; as an
    orphan it would go to pid 1, which in some containers reaps late or never, and its zombie
    would count against the slot uid's process limit in the next call. As our orphan, the call
    reaps it itself (``kill_uid``)."""
    import ctypes

    PR_SET_CHILD_SUBREAPER = 36
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(None, use_errno=True)
        return libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) == 0
    return False
