"""The export's output folder: refused when it holds something (unless replacing is asked for),
written under a temporary name beside it and renamed when whole. A failed export leaves nothing:
not the temporary folder, nor parent folders it created."""

from __future__ import annotations

import contextlib
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

from wmtp.errors import ExportError


def check_output(out: Path, *, force: bool, source: Path) -> Path:
    """The absolute output folder, or an ExportError saying why it cannot be written."""
    out = Path(out).expanduser().absolute()
    if out.exists() and not out.is_dir():
        raise ExportError(f"--out {out}: exists and is not a directory")
    if out.is_dir() and any(out.iterdir()):
        if not force:
            raise ExportError(
                f"--out {out}: exists and is not empty; choose another folder, or add --force "
                "to replace it"
            )
        if source.resolve() == out.resolve() or out.resolve() in source.resolve().parents:
            raise ExportError(
                f"--out {out}: holds the source {source}; replacing it would delete the source"
            )
    return out


@contextlib.contextmanager
def staged_output(out: Path) -> Iterator[Path]:
    """A temporary folder beside ``out`` to write into; renamed to ``out`` (replacing what is
    there) when the block ends without an error, removed otherwise."""
    created = _missing_parents(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".{out.name}.export-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        yield tmp
        _readable_as_umask_allows(tmp)
        _replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        for parent in created:  # deepest first; only the ones this export made, if still empty
            with contextlib.suppress(OSError):
                parent.rmdir()
        raise


def _readable_as_umask_allows(folder: Path) -> None:
    """Files as any new file would be (safetensors writes its files for the owner alone): an
    export is made to be shared."""
    umask = os.umask(0)
    os.umask(umask)
    for path in folder.rglob("*"):
        if path.is_file():
            path.chmod(0o666 & ~umask)


def _missing_parents(out: Path) -> list[Path]:
    return [p for p in out.parents if not p.exists()]


def _replace(tmp: Path, out: Path) -> None:
    """``tmp`` becomes ``out``; an old ``out`` is moved aside first and deleted last."""
    old = None
    if out.exists():
        old = out.parent / f".{out.name}.replaced-{os.getpid()}"
        out.rename(old)
    tmp.rename(out)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


__all__ = ["check_output", "staged_output"]
