"""Folders a command writes into, checked before the work that fills them. Torch-free."""

from __future__ import annotations

from pathlib import Path

from wmtp.errors import RunError


def blocking_file(folder: str | Path) -> Path | None:
    """What keeps ``folder`` from being a folder: itself or the nearest of its parents that
    exists (a symlink to nothing counts), when that is not a directory; None when ``folder`` is
    one or can be made."""
    folder = Path(folder).expanduser().absolute()
    existing = next((p for p in (folder, *folder.parents) if p.exists() or p.is_symlink()), None)
    return existing if existing is not None and not existing.is_dir() else None


def check_output_folder(folder: str | Path, what: str) -> None:
    """A ``RunError`` (exit 2) naming ``what`` (the option or key that chose ``folder``) when a
    file stands where ``folder`` or one of its parents must be a folder."""
    blocking = blocking_file(folder)
    if blocking is not None:
        raise RunError(f"{what} {folder}: {blocking} is a file, not a folder")


__all__ = ["blocking_file", "check_output_folder"]
