"""Resource limits (under both isolations) and the launcher that applies them; what the
rlimit-only isolation, which a user must opt in to, leaves open.

Every call starts a small launcher (``python -I -S -c LAUNCHER CONFIG``) as the first process of
its own process group. As root it first becomes the call's unprivileged uid itself (so the caller
starts it with ``vfork``: see ``wmtp.sandbox.execution``). It sets the limits (CPU seconds, address space, file size, number of
processes, no core files), then either execs bubblewrap, or, under ``rlimits``, forks the program
and relays its fate as an exit code, so that a program killing its parent never reaches the
caller. The caller adds a wall-clock timeout, an output cap and, at the end, a kill of the whole
process group (and, as root, of the call's uid).
"""

from __future__ import annotations

import contextlib
import math
import os
from pathlib import Path

from wmtp.sandbox.users import runner

LAUNCHER = r"""
import json, os, resource, sys
cfg = json.loads(sys.argv[1])
if cfg["uid"] is not None:  # root: the call's own uid, no groups, before anything else runs
    os.setgroups([])
    os.setgid(cfg["uid"])
    os.setuid(cfg["uid"])
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


def limits(timeout_s: float, memory_mb: int, file_size_mb: int, max_processes: int) -> dict:
    """The launcher's ``resource.setrlimit`` settings (name -> [soft, hard])."""
    cpu = math.ceil(timeout_s) + 1  # the wall clock normally fires first; this catches the rest
    nproc = max_processes
    if not runner().drops_root:  # RLIMIT_NPROC counts every process of the user, not just ours
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


def summary() -> str:
    """What the rlimit-only isolation does, as run here."""
    kill = "every process of that uid" if runner().drops_root else "its process group"
    return f"rlimits (CPU, memory, file size, processes){runner().note}, {kill} killed at the end"


def weaknesses() -> str:
    """What the rlimit-only isolation does not block, as run here (it depends on who we are)."""
    if runner().drops_root:  # a fresh unprivileged uid per call
        return (
            "rlimits only does not block network access, reading world-readable files, or "
            "writes where any user may write (/tmp, /var/tmp, /dev/shm)"
        )
    who = "root" if os.geteuid() == 0 else "your user"
    return (
        f"rlimits only runs programs as {who} and does not block network access, reading or "
        f"writing any file {who} may (not only in /tmp), signalling {who}'s other processes, or "
        "processes that call setsid escaping the kill at the end"
    )
