"""HumanEval-style checks: a solution against tests that define ``check(candidate)``, one at a time
(``check``) or many on a pool sized to the cores (``check_many``)."""

from __future__ import annotations

import os
import secrets
from dataclasses import dataclass, replace

from wmtp.sandbox.execution import SandboxResult, execute
from wmtp.sandbox.policy import require

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

    from rich.progress import Progress

    kind = require(isolation_kind, purpose=description).kind  # once, before the pool starts
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
