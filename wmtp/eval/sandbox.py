"""Run untrusted Python (generated solutions, candidate training data) without harm to the caller.

Every call gets its own folder and a fresh process tree, started through a small launcher that
sets the resource limits and then either

* ``bwrap``: execs bubblewrap: read-only root, private ``/tmp``, the call's folder as the only
  writable place, no network (loopback included: a new, empty network namespace), its own PID
  namespace (every process started inside dies with it, ``setsid``/double-forked ones included),
  all capabilities dropped, and ``--die-with-parent``; or
* ``rlimits``: the fallback where bubblewrap is missing or cannot run: the launcher forks the
  program in its own process group and the whole group is killed at the end. It cannot catch
  children that leave the group (``setsid``) unless the caller is root (below), nor stop writes or
  network access: ``isolation()`` says so, and ``wmtp validate --env`` reports it.

Both apply rlimits (CPU seconds, address space, file size, number of processes, no core files), a
wall-clock timeout and an output cap. When the caller is root, each call runs as its own
unprivileged uid (a slot of a range no account uses, held with a file lock across processes), so
that root-owned files stay out of reach, the process limit holds per call (one fork bomb cannot
starve the sandboxes beside it), and at the end every process of that uid is killed, whatever
session or namespace it is in.

Set ``WMTP_SANDBOX=rlimits`` (or ``bwrap``) to force an isolation; the default ``auto`` uses
bubblewrap when it works here.
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import json
import math
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from wmtp.errors import WmtpError

Status = Literal["passed", "failed", "timeout", "memory"]
IsolationKind = Literal["bwrap", "rlimits"]

NOBODY_UID = 65534  # probes whether an unprivileged uid can run the interpreter
SANDBOX_UID_BASE = 1_600_000_000  # per-call uids: SANDBOX_UID_BASE + slot, used by no account
UID_SLOTS = 512
INNER_DIR = "/tmp/sandbox"  # where the call's folder appears inside bubblewrap
DEFAULT_MAX_OUTPUT_BYTES = 64 * 1024
DEFAULT_FILE_SIZE_MB = 16
DEFAULT_MAX_PROCESSES = 64
ENV_VAR = "WMTP_SANDBOX"


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

    @property
    def passed(self) -> bool:
        return self.status == "passed"


@dataclass(frozen=True)
class Isolation:
    """Which isolation ``execute`` uses here, and why."""

    kind: IsolationKind
    detail: str


# --------------------------------------------------------------------------- isolation probing


@dataclass(frozen=True)
class _Runner:
    """Which interpreter runs sandboxed programs, and whether as ``nobody`` (when we are root)."""

    python: str
    drops_root: bool
    note: str


def _as_user(uid: int | None) -> dict:
    """Popen arguments that run the child as ``uid`` (nothing when None)."""
    return {} if uid is None else {"user": uid, "group": uid, "extra_groups": []}


@contextlib.contextmanager
def _uid_slot() -> Iterator[int | None]:
    """A uid no other sandbox call uses right now (None when we are not root)."""
    if not _runner().drops_root:
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
    raise WmtpError(f"more than {UID_SLOTS} sandboxed programs at once")


@functools.cache
def _runner() -> _Runner:
    """``$WMTP_SANDBOX_PYTHON`` or this interpreter; as root, the first one an unprivileged uid
    (probed as ``nobody``) can run.

    Root ignores RLIMIT_NPROC, so a root caller drops to a per-call uid; an interpreter under a
    private home (``/root/.pyenv``) is out of its reach, hence the system one as a second choice.
    Sandboxed programs need only the standard library.
    """
    explicit = os.environ.get("WMTP_SANDBOX_PYTHON")
    if os.geteuid() != 0:
        return _Runner(explicit or sys.executable, False, "")
    candidates = [explicit] if explicit else [sys.executable, "/usr/bin/python3"]
    for python in candidates:
        try:
            probe = subprocess.run(
                [python, "-I", "-c", "import resource"],
                capture_output=True,
                timeout=30,
                **_as_user(NOBODY_UID),
            )
        except (OSError, subprocess.TimeoutExpired):
            continue
        if probe.returncode == 0:
            return _Runner(python, True, f" as a per-call unprivileged uid with {python}")
    return _Runner(
        explicit or sys.executable,
        False,
        " as root (no interpreter that nobody can run: the process limit does not bind root)",
    )


@functools.cache
def _probe_bwrap() -> str | None:
    """None when bubblewrap works here with our flags, else the reason it does not."""
    exe = shutil.which("bwrap")
    if exe is None:
        return "bwrap is not installed (Debian package 'bubblewrap')"
    argv = [exe, *_bwrap_flags(), "--", "/bin/true"]
    try:
        uid = NOBODY_UID if _runner().drops_root else None
        proc = subprocess.run(argv, capture_output=True, timeout=20, **_as_user(uid))
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"bwrap cannot start: {exc}"
    if proc.returncode != 0:
        return f"bwrap fails here: {proc.stderr.decode(errors='replace').strip()}"
    return None


def isolation(requested: str | None = None) -> Isolation:
    """The isolation in use: ``requested``, else ``$WMTP_SANDBOX``, else ``auto``."""
    choice = requested or os.environ.get(ENV_VAR, "auto") or "auto"
    if choice not in ("auto", "bwrap", "rlimits"):
        raise WmtpError(f"{ENV_VAR}={choice!r}: expected 'auto', 'bwrap' or 'rlimits'")
    who = _runner().note
    weak = _WEAK_AS_ROOT if _runner().drops_root else _WEAK
    if choice == "rlimits":
        return Isolation("rlimits", f"rlimits + process-group kill{who} (forced); {weak}")
    problem = _probe_bwrap()
    if problem is None:
        return Isolation(
            "bwrap",
            f"bubblewrap{who}: read-only root, private /tmp, no network, own PID namespace",
        )
    if choice == "bwrap":
        raise WmtpError(f"{ENV_VAR}=bwrap but {problem}")
    return Isolation("rlimits", f"rlimits + process-group kill{who} ({problem}); {weak}")


_WEAK = "cannot catch setsid children, cannot block network access, nor writes outside the sandbox folder"
_WEAK_AS_ROOT = "cannot block network access, nor writes where any user may write"


# --------------------------------------------------------------------------- the launcher

# Runs as the sandbox's first process (`python -I -S -c LAUNCHER CONFIG`): sets the limits, then
# execs bubblewrap, or (fallback) forks the program and relays its fate as an exit code, so that
# killing the program's parent never reaches the caller.
_LAUNCHER = r"""
import json, os, resource, sys
cfg = json.loads(sys.argv[1])
for name, value in cfg["limits"].items():
    resource.setrlimit(getattr(resource, name), tuple(value))
if cfg["exec"]:
    os.execv(cfg["argv"][0], cfg["argv"])
pid = os.fork()
if pid == 0:
    os.execv(cfg["argv"][0], cfg["argv"])
_, status = os.waitpid(pid, 0)
os._exit(128 + os.WTERMSIG(status) if os.WIFSIGNALED(status) else os.WEXITSTATUS(status))
"""


def _bwrap_flags() -> list[str]:
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


def _limits(timeout_s: float, memory_mb: int, file_size_mb: int, max_processes: int) -> dict:
    cpu = math.ceil(timeout_s) + 1  # the wall clock normally fires first; this catches the rest
    nproc = max_processes
    if not _runner().drops_root:  # RLIMIT_NPROC counts every process of the user, not just ours
        nproc += _count_own_processes()
    mem = memory_mb * 2**20
    fsize = file_size_mb * 2**20
    return {
        "RLIMIT_CPU": [cpu, cpu + 1],
        "RLIMIT_AS": [mem, mem],
        "RLIMIT_FSIZE": [fsize, fsize],
        "RLIMIT_NPROC": [nproc, nproc],
        "RLIMIT_CORE": [0, 0],
    }


def _count_own_processes() -> int:
    uid = os.getuid()
    count = 0
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError):
                count += entry.stat().st_uid == uid
    return count


def _program_argv(kind: IsolationKind, workdir: Path) -> tuple[list[str], bool]:
    """The argv the launcher runs, and whether it execs it (bwrap) or forks it (fallback)."""
    python = [_runner().python, "-I", "program.py"]
    if kind == "rlimits":
        return python, False
    bwrap = [
        shutil.which("bwrap") or "bwrap",
        *_bwrap_flags(),
        "--bind", str(workdir), INNER_DIR,
        "--chdir", INNER_DIR,
        "--setenv", "HOME", INNER_DIR,
        "--setenv", "TMPDIR", "/tmp",
        "--",
    ]  # fmt: skip
    return bwrap + python, True


def _environment(workdir: Path) -> dict[str, str]:
    return {
        "PATH": "/usr/local/bin:/usr/bin:/bin",
        "LANG": "C.UTF-8",
        "HOME": str(workdir),
        "TMPDIR": str(workdir),
        "PYTHONDONTWRITEBYTECODE": "1",
        "PYTHONHASHSEED": "0",
    }


# --------------------------------------------------------------------------- execute


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
    sandbox's folder beside ``program.py``.
    """
    assert timeout_s > 0 and memory_mb > 0, (timeout_s, memory_mb)
    kind = isolation(isolation_kind).kind
    control = Path(tempfile.mkdtemp(prefix="wmtp-sandbox-"))
    try:
        with _uid_slot() as uid:  # held until the program's processes are gone
            if uid is not None:
                _become_subreaper()
            workdir = _prepare(control, program, stdin, files or {}, uid)
            argv, exec_it = _program_argv(kind, workdir)
            limits = _limits(timeout_s, memory_mb, file_size_mb, max_processes)
            cfg = json.dumps({"limits": limits, "exec": exec_it, "argv": argv})
            start = time.monotonic()
            returncode, timed_out = _run_launcher(control, workdir, cfg, timeout_s, uid)
            duration = time.monotonic() - start
        stdout = _read_capped(control / "stdout", max_output_bytes)
        stderr = _read_capped(control / "stderr", max_output_bytes)
    finally:
        shutil.rmtree(control, ignore_errors=True)
    status = _status(returncode, timed_out, stderr)
    return SandboxResult(status, stdout, stderr, duration, returncode, kind)


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
    control: Path, workdir: Path, cfg: str, timeout_s: float, uid: int | None
) -> tuple[int, bool]:
    argv = [_runner().python, "-I", "-S", "-c", _LAUNCHER, cfg]
    with (
        open(control / "stdin", "rb") as fin,
        open(control / "stdout", "wb") as fout,
        open(control / "stderr", "wb") as ferr,
    ):
        proc = subprocess.Popen(
            argv,
            stdin=fin,
            stdout=fout,
            stderr=ferr,
            cwd=workdir,
            env=_environment(workdir),
            start_new_session=True,  # its own process group: one killpg ends the tree
            close_fds=True,
            **_as_user(uid),
        )
        timed_out = False
        try:
            proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            timed_out = True
        _kill_group(proc.pid)
        proc.wait()
        _wait_group_gone(proc.pid)
        if uid is not None:  # the call's own uid: every process of it is ours, setsid or not
            _kill_uid(uid)
    return proc.returncode, timed_out


def _kill_group(pgid: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signal.SIGKILL)


def _wait_group_gone(pgid: int, limit_s: float = 5.0) -> None:
    """Wait (briefly) until no live process of group ``pgid`` is left; SIGKILL is not instant."""
    deadline = time.monotonic() + limit_s
    while _live_group_members(pgid) and time.monotonic() < deadline:
        _kill_group(pgid)
        time.sleep(0.01)


def _kill_uid(uid: int, limit_s: float = 10.0) -> None:
    """SIGKILL every process of ``uid`` and wait until they are reaped too (zombies still count
    against the uid's process limit, which the slot's next call starts from). Orphans are ours
    to reap (see :func:`_become_subreaper`)."""
    deadline = time.monotonic() + limit_s
    while (pids := _processes_of(uid)) and time.monotonic() < deadline:
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
            _reap(pid)
        time.sleep(0.01)


def _processes_of(uid: int) -> list[int]:
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError):
            if entry.stat().st_uid == uid:
                pids.append(int(entry.name))
    return pids


@functools.cache
def _become_subreaper() -> bool:
    """Make this process the reaper of its orphaned descendants (Linux ``PR_SET_CHILD_SUBREAPER``).

    bubblewrap's inner process outlives the outer one when a call's processes are killed; as an
    orphan it would go to pid 1, which in some containers reaps late or never, and its zombie
    would count against the slot uid's process limit in the next call. As our orphan, the call
    reaps it itself (``_kill_uid``)."""
    import ctypes

    PR_SET_CHILD_SUBREAPER = 36
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(None, use_errno=True)
        return libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) == 0
    return False


def _reap(pid: int) -> None:
    """Collect ``pid`` if it is our (adopted) zombie; nothing otherwise."""
    with contextlib.suppress(ChildProcessError, OSError):
        os.waitpid(pid, os.WNOHANG)


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


# --------------------------------------------------------------------------- HumanEval-style check

# The nonce arrives on stdin and stays in a local; the solution runs in its own namespace, so
# "passed" needs the checks to return normally (sys.exit / os._exit inside the solution fail).
_CHECK_HARNESS = r"""
def _wmtp_main():
    import os, sys
    nonce = sys.stdin.readline().strip()
    with open("solution.py", encoding="utf-8") as f:
        code = compile(f.read(), "solution.py", "exec")
    namespace = {"__name__": "solution", "__builtins__": __builtins__}
    exec(code, namespace)
    namespace["check"](namespace[%r])
    sys.stdout.flush()
    os.write(1, ("\n" + nonce + "\n").encode())
_wmtp_main()
"""


def check_program(solution: str, test: str) -> str:
    """The source the check harness runs: the solution, then the tests (``check(candidate)``)."""
    return f"{solution.rstrip()}\n\n\n{test.strip()}\n"


def check(
    solution: str,
    test: str,
    entry_point: str,
    *,
    timeout_s: float = 10.0,
    memory_mb: int = 1024,
    isolation_kind: str | None = None,
    **limits: int,
) -> SandboxResult:
    """Run HumanEval-style ``test`` (defines ``check(candidate)``) against ``solution``.

    "passed" only when ``check(entry_point)`` returned normally: a solution that exits early,
    even with status 0, has failed.
    """
    nonce = secrets.token_hex(16)
    result = execute(
        _CHECK_HARNESS % entry_point,
        timeout_s=timeout_s,
        memory_mb=memory_mb,
        stdin=nonce + "\n",
        files={"solution.py": check_program(solution, test)},
        isolation_kind=isolation_kind,
        **limits,
    )
    return _with_marker_checked(result, nonce)


def _with_marker_checked(result: SandboxResult, nonce: str) -> SandboxResult:
    marker = f"\n{nonce}\n"
    finished = result.stdout.endswith(marker)
    stdout = result.stdout[: -len(marker)] if finished else result.stdout
    status = result.status
    if status == "passed" and not finished:
        status = "failed"
    return SandboxResult(
        status, stdout, result.stderr, result.duration_s, result.returncode, result.isolation
    )


# --------------------------------------------------------------------------- many checks


@dataclass(frozen=True)
class CheckJob:
    """One HumanEval-style check for ``check_many``."""

    solution: str
    test: str
    entry_point: str


def default_workers() -> int:
    """One worker per core this process may use."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        return max(1, os.cpu_count() or 1)


def check_many(
    jobs: list[CheckJob],
    *,
    timeout_s: float = 10.0,
    memory_mb: int = 1024,
    workers: int | None = None,
    progress: bool = True,
    description: str = "checking",
    isolation_kind: str | None = None,
) -> list[SandboxResult]:
    """``check`` every job on a pool sized to the cores; results in the order of ``jobs``.

    Each check is its own sandboxed process tree, so threads suffice to keep the cores busy.
    """
    from concurrent.futures import ThreadPoolExecutor, as_completed

    from rich.progress import Progress

    kind = isolation(isolation_kind).kind  # probe once, before the pool starts
    results: list[SandboxResult | None] = [None] * len(jobs)
    with (
        ThreadPoolExecutor(max_workers=workers or default_workers()) as pool,
        Progress(disable=not progress, transient=False) as bar,
    ):
        task = bar.add_task(description, total=len(jobs))
        futures = {
            pool.submit(
                check,
                job.solution,
                job.test,
                job.entry_point,
                timeout_s=timeout_s,
                memory_mb=memory_mb,
                isolation_kind=kind,
            ): i
            for i, job in enumerate(jobs)
        }
        for future in as_completed(futures):
            results[futures[future]] = future.result()
            bar.advance(task)
    assert all(r is not None for r in results)
    return results  # type: ignore[return-value]
