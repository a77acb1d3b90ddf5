"""``execute``: run one Python program in the sandbox and tell what it did.

Every call gets its own folder and a fresh process tree, started through the launcher (see
:mod:`wmtp.sandbox.rlimits`) under the isolation :func:`~wmtp.sandbox.policy.require` allows, with
a wall-clock timeout and an output cap. The whole tree is gone when ``execute`` returns.
"""

from __future__ import annotations

import contextlib
import json
import os
import select
import shutil
import signal
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from wmtp.sandbox import bwrap, rlimits
from wmtp.sandbox.policy import IsolationKind, require
from wmtp.sandbox.users import become_subreaper, kill_uid, runner, uid_slot

Status = Literal["passed", "failed", "timeout", "memory"]
DEFAULT_MAX_OUTPUT_BYTES = 64 * 1024
DEFAULT_FILE_SIZE_MB = 16
DEFAULT_MAX_PROCESSES = 64


@dataclass(frozen=True)
class SandboxResult:
    """What one sandboxed run did."""

    status: Status
    """"passed", "failed", "timeout" (wall clock or CPU limit) or "memory" (address-space limit)."""
    stdout: str
    """Captured standard output, capped at ``max_output_bytes`` (head and tail kept)."""
    stderr: str
    """Captured standard error, capped the same way."""
    duration_s: float
    """Wall-clock seconds from start until the whole process tree was gone."""
    returncode: int
    """The launcher's exit code (128 + n when the program died of signal n)."""
    isolation: IsolationKind
    started: bool = True
    """Whether the program's process came to exist (bubblewrap reported it: see ``execute``); a
    sandbox that could not start it can be retried, a program that ran never is."""

    @property
    def passed(self) -> bool:
        return self.status == "passed"


def execute(
    program: str,
    *,
    timeout_s: float = 10.0,
    memory_mb: int = 1024,
    stdin: str = "",
    files: dict[str, str] | None = None,
    max_output_bytes: int = DEFAULT_MAX_OUTPUT_BYTES,
    file_size_mb: int = DEFAULT_FILE_SIZE_MB,
    max_processes: int = DEFAULT_MAX_PROCESSES,
    isolation_kind: str | None = None,
) -> SandboxResult:
    """Run ``program`` (Python source) in the sandbox; "passed" when it exits with status 0.

    ``timeout_s`` bounds the wall clock (and CPU time), ``memory_mb`` the address space. The whole
    process tree is gone when this returns. ``files`` (name -> text) are written into the
    sandbox's folder beside ``program.py``. ``isolation_kind`` overrides ``$WMTP_SANDBOX``;
    :class:`~wmtp.errors.SandboxError` when no isolation may run it (nothing has run then).
    """
    assert timeout_s > 0 and memory_mb > 0, (timeout_s, memory_mb)
    kind = require(isolation_kind).kind
    assert kind != "none", kind
    control = Path(tempfile.mkdtemp(prefix="wmtp-sandbox-"))
    try:
        with uid_slot() as uid:  # held until the program's processes are gone
            if uid is not None:
                become_subreaper()
            workdir = _prepare(control, program, stdin, files or {}, uid)
            # bubblewrap writes {"child-pid": N} here once the program's process exists: a
            # pipe, so nothing the program does can take that line back.
            status_r, status_w = os.pipe() if kind == "bwrap" else (None, None)
            argv, exec_it = _program_argv(kind, workdir, status_w)
            limits = rlimits.limits(timeout_s, memory_mb, file_size_mb, max_processes)
            cfg = json.dumps({"limits": limits, "exec": exec_it, "argv": argv, "uid": uid})
            start = time.monotonic()
            returncode, timed_out = _run_launcher(control, workdir, cfg, timeout_s, uid, status_w)
            duration = time.monotonic() - start
        started = status_r is None or _reported_child(status_r)
        stdout = _read_capped(control / "stdout", max_output_bytes)
        stderr = _read_capped(control / "stderr", max_output_bytes)
    finally:
        shutil.rmtree(control, ignore_errors=True)
    status = _status(returncode, timed_out, stderr)
    return SandboxResult(status, stdout, stderr, duration, returncode, kind, started)


def _program_argv(
    kind: IsolationKind, workdir: Path, status_fd: int | None
) -> tuple[list[str], bool]:
    """The argv the launcher runs, and whether it execs it (bwrap) or forks it (rlimits)."""
    python = [runner().python, "-I", "program.py"]
    if kind == "rlimits":
        return python, False
    return bwrap.argv(workdir, python, status_fd), True


def _reported_child(status_r: int) -> bool:
    """Whether bubblewrap's status pipe (read to its end, then closed) names the child."""
    chunks = []
    with open(status_r, "rb") as pipe:  # every writer is gone: the call's processes were killed
        while chunk := pipe.read(65536):
            chunks.append(chunk)
    return b'"child-pid"' in b"".join(chunks)


def _environment(workdir: Path) -> dict[str, str]:
    return {
        "PATH": "/usr/local/bin:/usr/bin:/bin",
        "LANG": "C.UTF-8",
        "HOME": str(workdir),
        "TMPDIR": str(workdir),
        "PYTHONDONTWRITEBYTECODE": "1",
        "PYTHONHASHSEED": "0",
    }


def _prepare(
    control: Path, program: str, stdin: str, files: dict[str, str], uid: int | None
) -> Path:
    workdir = control / "work"
    workdir.mkdir()
    for name, text in {**files, "program.py": program}.items():
        assert "/" not in name and name not in ("", ".", ".."), name
        (workdir / name).write_text(text, encoding="utf-8")
    (control / "stdin").write_text(stdin, encoding="utf-8")
    if uid is not None:
        for path in workdir.iterdir():
            os.chown(path, uid, uid)
        os.chown(workdir, uid, uid)
        os.chmod(control, 0o711)  # the uid may reach work/ but not list the control files
    return workdir


def _run_launcher(
    control: Path, workdir: Path, cfg: str, timeout_s: float, uid: int | None, status_w: int | None
) -> tuple[int, bool]:
    argv = [runner().python, "-I", "-S", "-c", rlimits.LAUNCHER, cfg]
    with (
        open(control / "stdin", "rb") as fin,
        open(control / "stdout", "wb") as fout,
        open(control / "stderr", "wb") as ferr,
    ):
        # No user/group arguments (the launcher drops root itself): Python then starts the launcher
        # with vfork, which neither copies this process's page tables nor holds the GIL while it
        # does. A fork of a process holding a model (GiBs mapped) stalls every thread for tens of
        # milliseconds per check: decoding, which runs beside the checks, waited on each one.
        proc = subprocess.Popen(
            argv,
            stdin=fin,
            stdout=fout,
            stderr=ferr,
            cwd=workdir,
            env=_environment(workdir),
            start_new_session=True,  # its own process group: one killpg ends the tree
            close_fds=True,
            pass_fds=() if status_w is None else (status_w,),
        )
        if status_w is not None:  # bubblewrap holds it now; its end is the pipe's end
            os.close(status_w)
        timed_out = not _exited_within(proc, timeout_s)
        _kill_group(proc.pid)
        proc.wait()
        if uid is not None:  # the call's own uid: every process of it is ours, setsid or not
            kill_uid(uid)  # (the launcher, the only one that was root, is gone)
        else:
            _wait_group_gone(proc.pid)
    return proc.returncode, timed_out


def _exited_within(proc: subprocess.Popen, timeout_s: float) -> bool:
    """Whether ``proc`` exits within ``timeout_s``, known the moment it does: a pidfd wakes a
    ``select`` at its exit, where ``Popen.wait(timeout)`` polls with sleeps that grow to 50 ms
    (a check lasting 20 ms was seen to end ~50 ms late; its worker slot idled meanwhile)."""
    try:
        pidfd = os.pidfd_open(proc.pid)
    except (AttributeError, OSError):  # not Linux 5.3+: Popen's polling
        try:
            proc.wait(timeout=timeout_s)
            return True
        except subprocess.TimeoutExpired:
            return False
    try:
        readable, _, _ = select.select([pidfd], [], [], timeout_s)
    finally:
        os.close(pidfd)
    return bool(readable)


def _kill_group(pgid: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signal.SIGKILL)


def _wait_group_gone(pgid: int, limit_s: float = 5.0) -> None:
    """Wait (briefly) until no live process of group ``pgid`` is left; SIGKILL is not instant."""
    deadline = time.monotonic() + limit_s
    while _live_group_members(pgid) and time.monotonic() < deadline:
        _kill_group(pgid)
        time.sleep(0.01)


def _live_group_members(pgid: int) -> int:
    count = 0
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError):
            stat = (entry / "stat").read_text()
            fields = stat[stat.rindex(")") + 2 :].split()  # state ppid pgrp ...
            count += fields[2] == str(pgid) and fields[0] not in ("Z", "X")
    return count


def _read_capped(path: Path, cap: int) -> str:
    size = path.stat().st_size
    with open(path, "rb") as f:
        if size <= cap:
            data = f.read()
        else:
            head = f.read(cap // 2)
            f.seek(size - cap // 2)
            cut = f"\n... [{size - 2 * (cap // 2)} bytes cut] ...\n".encode()
            data = head + cut + f.read()
    return data.decode("utf-8", errors="replace")


def _status(returncode: int, timed_out: bool, stderr: str) -> Status:
    signum = returncode - 128 if returncode > 128 else -returncode if returncode < 0 else 0
    if timed_out or signum == signal.SIGXCPU:
        return "timeout"
    if returncode != 0 and ("MemoryError" in stderr or "Cannot allocate memory" in stderr):
        return "memory"
    return "passed" if returncode == 0 else "failed"
