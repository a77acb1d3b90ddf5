"""Folders one process writes at a time (a training run's directory, an evaluation's results), and
folders kept while other processes read them (a checkpoint that ``keep_last`` would prune).

The writer holds an exclusive ``flock`` on a file in the folder (:func:`holding`), with who it is
written in it; a second writer is refused with that line instead of writing the same files. The
writer removes the file when it is done (while still holding it, so that no one takes a lock on a
file about to go; a lock taken on a file removed meanwhile is let go and taken again on the new
one); a killed writer leaves it, and the kernel lets the lock go when the process ends, however it
ends: a lock is never stale. ``flock`` over NFS is as good as the server's locking
(Linux clients map it onto the server's byte-range locks); ranks on several hosts writing one
shared folder rely on it.

Readers hold a shared lock (:func:`share`) for as long as they read; a remover takes the exclusive
lock without waiting (:func:`unless_shared`) and removes only when it got it, with the lock file
inside what it removes, so a reader that waited for it finds the folder gone.

Torch-free.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import socket
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO

from wmtp.errors import WmtpError

Refusal = Callable[[str], WmtpError]
"""The error a refused writer raises, from the holder's line (``pid N on HOST, since ...``)."""


@contextlib.contextmanager
def holding(lock_path: Path, refused: Refusal) -> Iterator[None]:
    """Hold ``lock_path``'s exclusive lock while the block writes; ``refused(holder)`` is raised,
    without waiting, when another process holds it."""
    with _locked(lock_path, refused) as lock:
        try:
            _say_holder(lock, lock_path)
            yield
        finally:  # removed while held; the kernel lets go of the lock itself at close
            lock_path.unlink(missing_ok=True)


def _say_holder(lock: IO[str], lock_path: Path) -> None:
    """Who holds the lock, in its file (what a refused process shows); a write the file system
    refuses (a full disk) names the lock file."""
    try:
        lock.truncate(0)
        lock.write(f"pid {os.getpid()} on {socket.gethostname()}, since {time.strftime('%c')}\n")
        lock.flush()
    except OSError as exc:
        raise OSError(exc.errno, exc.strerror, str(lock_path)) from exc


def check_free(lock_path: Path, refused: Refusal) -> None:
    """``refused(holder)`` when a process holds ``lock_path``'s lock now. A shared lock, taken and
    let go: the ranks of one launch check at once without tripping each other, before their
    rank 0 takes the lock with :func:`holding`."""
    try:
        lock = open(lock_path, encoding="utf-8")  # noqa: SIM115  # never made here: no file, no writer
    except FileNotFoundError:
        return
    with lock:
        _take(lock, fcntl.LOCK_SH, refused)


def share(lock_path: Path) -> IO[str] | None:
    """A shared lock on ``lock_path`` (made when missing), held while the returned file stays open
    (to the end of the process, when kept): :func:`unless_shared` refuses meanwhile. Waits while a
    remover holds the exclusive lock (one removal). ``None`` when there is no lock to hold: the
    folder is gone, or it is not writable and holds no lock file (another user's run)."""
    while True:
        try:
            lock = open(lock_path, "a+", encoding="utf-8")  # noqa: SIM115  # the caller keeps it
        except FileNotFoundError:
            return None
        except OSError:  # read-only here: a lock file made by a writer can still be shared
            try:
                lock = open(lock_path, encoding="utf-8")  # noqa: SIM115
            except OSError:
                return None
        fcntl.flock(lock, fcntl.LOCK_SH)
        if _same_file(lock, lock_path):
            return lock
        lock.close()  # removed with its folder while we waited
        if not lock_path.parent.is_dir():
            return None


@contextlib.contextmanager
def unless_shared(lock_path: Path) -> Iterator[bool]:
    """The exclusive lock on ``lock_path``, taken without waiting, held through the block: yields
    True when taken (no process shares it: the block may remove what it guards, the lock file
    with it), False when a reader holds it."""
    try:
        lock = open(lock_path, "a+", encoding="utf-8")  # noqa: SIM115  # closed below
    except OSError:  # nowhere to hold a lock: no reader can hold one either
        lock = None
    if lock is None:
        yield True
        return
    with lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            taken = True
        except BlockingIOError:
            taken = False
        yield taken


@contextlib.contextmanager
def _locked(lock_path: Path, refused: Refusal) -> Iterator[IO[str]]:
    """``lock_path`` open and exclusively locked, the file the path names now."""
    while True:
        lock = open(lock_path, "a+", encoding="utf-8")  # noqa: SIM115  # kept open if it is the one
        try:
            _take(lock, fcntl.LOCK_EX, refused)
            if _same_file(lock, lock_path):
                break
        except BaseException:
            lock.close()
            raise
        lock.close()  # removed by the writer before us between our open and our lock: again
    with lock:
        yield lock


def _same_file(lock: IO[str], path: Path) -> bool:
    try:
        named, held = os.stat(path), os.fstat(lock.fileno())
    except FileNotFoundError:
        return False
    return (named.st_dev, named.st_ino) == (held.st_dev, held.st_ino)


def _take(lock: IO[str], kind: int, refused: Refusal) -> None:
    try:
        fcntl.flock(lock, kind | fcntl.LOCK_NB)
    except BlockingIOError:
        lock.seek(0)
        raise refused(lock.read().strip() or "another process") from None


__all__ = ["Refusal", "check_free", "holding", "share", "unless_shared"]
