"""Files replaced whole or not at all.

Every file wmtp writes for later readers (a dataset and its metadata, results, a checkpoint's
weights and manifest, metrics kept on a resume, the ``latest`` link) is written under a temporary
name beside it and renamed over it (:func:`replaced`): a reader, or a process that crashed or was
stopped mid-write, sees the old file or the whole new one. The temporary name is hidden and this
process's (``.NAME.tmp-PID``), so two writers never share one, and it is removed when the write
fails or is interrupted (a Ctrl-C, a full disk): only a kill leaves one behind. No ``fsync``: the
rename protects against a crashed process, not against the machine losing power.

Torch-free.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterable, Iterator
from pathlib import Path


@contextlib.contextmanager
def replaced(target: str | Path) -> Iterator[Path]:
    """A temporary path for the block to write ``target``'s new content to (a file or a symlink);
    renamed over ``target`` when the block ends, removed when it raises."""
    target = Path(target)
    tmp = target.with_name(f".{target.name}.tmp-{os.getpid()}")
    tmp.unlink(missing_ok=True)  # a dead process's of the same pid
    try:
        yield tmp
        os.replace(tmp, target)
    except OSError as exc:  # a write (a full disk) names no file: say which one it was
        if exc.errno is None or exc.filename not in (None, str(tmp)):
            raise
        raise OSError(exc.errno, exc.strerror, str(target)) from exc
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()


def write_text(target: str | Path, text: str) -> Path:
    """``target`` replaced by ``text`` (UTF-8)."""
    return write_lines(target, (text,))


def write_lines(target: str | Path, lines: Iterable[str]) -> Path:
    """``target`` replaced by ``lines`` (UTF-8, each with its own line end), written as they come."""
    with replaced(target) as tmp, tmp.open("w", encoding="utf-8") as out:
        out.writelines(lines)
    return Path(target)


__all__ = ["replaced", "write_lines", "write_text"]
