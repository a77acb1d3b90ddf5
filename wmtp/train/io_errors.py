"""What went wrong when a run wrote a file, in words: a full disk, a quota, or another I/O error.

Libraries report a full disk in many shapes: an ``OSError`` with ``errno.ENOSPC``, a torch
serialisation error ("unexpected pos 704 vs 598") whose cause is that, a DCP
``CheckpointException`` wrapping per-rank failures. :func:`describe_write_error` looks through
the whole chain and the free space on the file system, so checkpoints, metrics and TensorBoard
all say the same thing: what failed, where, and how much room is left.
"""

from __future__ import annotations

import errno
import shutil
from pathlib import Path

from wmtp.errors import linked_exceptions

FULL = {errno.ENOSPC: "no space left on device", errno.EDQUOT: "disk quota exceeded"}
NEARLY_FULL_BYTES = 1 << 20
"""Less free space than this, after a failed write, is taken for a full disk."""


def describe_write_error(exc: BaseException, where: Path) -> str:
    """``"no space left on device (12 KiB free on /runs)"`` or the error's own words."""
    free = free_bytes(where)
    room = f"{_size(free)} free on the file system of {where}" if free is not None else ""
    reason = _full_disk(exc)
    if reason is None and free is not None and free < NEARLY_FULL_BYTES:
        reason = "no space left on device"
    if reason is None:
        from wmtp.folders import refused_write

        refused = refused_write(exc)  # permissions, a read-only file system: in plain words
        if refused is not None:
            return refused.render()  # the free space says nothing of these
        reason = _own_words(exc)
    return f"{reason} ({room})" if room else reason


SHORT_WRITE = "unexpected pos"
"""torch's zip writer's words when the file system took fewer bytes than it wrote."""


def _own_words(exc: BaseException) -> str:
    """The failure's message: that of the first exception in the chain that wraps no other
    rank's (a DCP ``CheckpointException``'s own text is a traceback), on one line."""
    failure = next((e for e in linked_exceptions(exc) if getattr(e, "failures", None) is None), exc)
    text = " ".join(str(failure).split())
    if SHORT_WRITE in text:
        return (
            f"the file system took fewer bytes than were written ({text[-60:]}), as a full disk "
            "or a quota does"
        )
    return text[:300] or type(failure).__name__


def free_bytes(where: Path) -> int | None:
    """Free bytes on the file system holding ``where`` (or its nearest existing parent)."""
    path = Path(where)
    while not path.exists() and path != path.parent:
        path = path.parent
    try:
        return shutil.disk_usage(path).free
    except OSError:
        return None


def _full_disk(exc: BaseException) -> str | None:
    """The full-disk reason anywhere in ``exc``'s chain (causes, contexts, DCP's per-rank
    failures), else None."""
    for current in linked_exceptions(exc):
        if isinstance(current, OSError) and current.errno in FULL:
            return FULL[current.errno]
        if "No space left on device" in str(current):
            return FULL[errno.ENOSPC]
    return None


def _size(n: int) -> str:
    for unit in ("bytes", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:,} {unit}" if unit == "bytes" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"


__all__ = ["describe_write_error", "free_bytes"]
