"""Folders a command writes into, checked before the work that fills them, and what the file
system said when a write was refused anyway. Torch-free."""

from __future__ import annotations

import errno
import os
from pathlib import Path

from wmtp.errors import RunError, StorageError, linked_exceptions

REFUSALS = {
    errno.EACCES: "permission denied",
    errno.EPERM: "operation not permitted",
    errno.EROFS: "read-only file system",
    errno.ENOSPC: "no space left on device",
    errno.EDQUOT: "disk quota exceeded",
}
"""The errors by which a file system refuses a write: the machine's state, not a bug of ours."""


def blocking_file(folder: str | Path) -> Path | None:
    """What keeps ``folder`` from being a folder: itself or the nearest of its parents that
    exists (a symlink to nothing counts), when that is not a directory; None when ``folder`` is
    one or can be made."""
    folder = Path(folder).expanduser().absolute()
    existing = next((p for p in (folder, *folder.parents) if p.exists() or p.is_symlink()), None)
    return existing if existing is not None and not existing.is_dir() else None


def why_unwritable(folder: str | Path) -> str | None:
    """Why files cannot be written in ``folder`` (made first where it is missing): a file where
    it or a parent must be a folder, or the nearest existing folder not writable by this user
    or on a read-only file system; None when they can."""
    blocking = blocking_file(folder)
    if blocking is not None and not blocking.exists():
        return f"{blocking} is a broken symbolic link (to {os.readlink(blocking)})"
    if blocking is not None:
        return f"{blocking} is a file, not a folder"
    folder = Path(folder).expanduser().absolute()
    existing = next(p for p in (folder, *folder.parents) if p.exists())
    kernel = kernel_file_system(existing)
    if kernel is not None:
        return f"{existing} is on the kernel's {kernel} file system, which holds no folders of ours"
    if not unwritable([existing]):
        return None
    if read_only_file_system(existing):
        return f"{existing} is on a read-only file system"
    return f"{existing} is not writable by this user"


KERNEL_FILE_SYSTEMS = {"proc", "sysfs", "cgroup", "cgroup2", "debugfs", "tracefs",
                       "securityfs", "devpts", "bpf", "configfs", "pstore", "efivarfs"}  # fmt: skip
"""Mounts the kernel fills (``/proc``, ``/sys``): even root makes no folders there."""


def kernel_file_system(path: Path) -> str | None:
    """The type of the kernel's file system that ``path`` (which exists) is on, if it is one
    (:data:`KERNEL_FILE_SYSTEMS`; from ``/proc/self/mountinfo``, the longest mount point over
    it); None elsewhere, or where the mounts cannot be read."""
    try:
        lines = Path("/proc/self/mountinfo").read_text().splitlines()
    except OSError:
        return None
    resolved, best, kind = str(path.resolve()), "", None
    for line in lines:
        fields = line.split()
        if " - " not in line or len(fields) < 5:
            continue
        mount = fields[4].replace("\\040", " ")
        inside = resolved == mount or resolved.startswith(mount.rstrip("/") + "/")
        if inside and len(mount) >= len(best):
            best, kind = mount, line.split(" - ", 1)[1].split()[0]
    return kind if kind in KERNEL_FILE_SYSTEMS else None


def unwritable(paths: list[Path]) -> list[Path]:
    """Those of ``paths`` that exist and that this user cannot write: a folder to make files
    in, a file to append to. The missing ones are left to whoever makes them."""

    def refused(path: Path) -> bool:
        mode = os.W_OK | os.X_OK if path.is_dir() else os.W_OK
        return not os.access(path, mode)

    return [path for path in paths if path.exists() and refused(path)]


def read_only_file_system(path: Path) -> bool:
    """Whether ``path`` (which exists) is on a file system mounted read-only."""
    return bool(os.statvfs(path).f_flag & os.ST_RDONLY)


def check_output_folder(folder: str | Path, what: str) -> None:
    """A ``RunError`` (exit 2) naming ``what`` (the option or key that chose ``folder``) when no
    file can be written in ``folder`` (:func:`why_unwritable`)."""
    reason = why_unwritable(folder)
    if reason is not None:
        raise RunError(f"{what} {folder}: {reason}")


def refused_write(exc: BaseException) -> StorageError | None:
    """A write the file system refused anywhere in ``exc``'s chain (permissions, a read-only or
    full file system: :data:`REFUSALS`), as the located ``StorageError`` the user sees; None for
    anything else, which stays a bug with its traceback."""
    for current in linked_exceptions(exc):
        if isinstance(current, OSError) and current.errno in REFUSALS:
            where = current.filename if current.filename is not None else "a file"
            return StorageError(f"cannot write {where}: {REFUSALS[current.errno]}")
    return None


__all__ = [
    "REFUSALS",
    "blocking_file",
    "check_output_folder",
    "read_only_file_system",
    "refused_write",
    "unwritable",
    "why_unwritable",
]
