"""The export's output folder: written under a temporary name beside it and renamed when whole. A
failed export leaves nothing: not the temporary folder, nor parent folders it created. SIGINT and
SIGTERM stop it the same way (an ``Interrupted`` error, exit 128 + the signal); a process killed
outright (SIGKILL, the OOM killer) leaves its temporary folder, which the next export to the same
folder on this machine removes.

Every export ends with ``wmtp_export.json`` (``MARKER``), the list of what it wrote, each file's
size and time beside it. That list is what lets ``--force`` replace an earlier export whose
files are as it wrote them, and only that: a folder without it (a trained run, a working
directory, someone's notes), or an export a user has since added files to or edited (its card,
say), is refused even with ``--force``, since replacing it would lose what a user wrote.
"""

from __future__ import annotations

import contextlib
import glob
import json
import os
import shutil
import signal
import socket
from collections.abc import Callable, Iterator
from pathlib import Path

from wmtp.errors import ExportError, Interrupted
from wmtp.stopping import signals_raise

MARKER = "wmtp_export.json"
WRITTEN_BY = "wmtp export"


def check_output(out: Path, *, force: bool, source: Path) -> Path:
    """The absolute output folder, or an ExportError saying why it cannot be written; every
    check runs before any conversion work.

    ``--out`` may be a new path, an empty folder, or (with ``force``) an earlier export. A
    symbolic link is refused rather than followed: replacing the link would leave what it pointed
    to untouched and the link gone (a ``latest`` link would no longer follow its runs), while
    replacing its target would write somewhere the user did not name."""
    out = Path(out).expanduser().absolute()
    here = Path.cwd().resolve()
    if out.resolve() == here or out.resolve() in here.parents:
        raise ExportError(
            f"--out {out}: holds the working directory, which the export would replace under "
            "your shell; give a folder inside it"
        )
    _check_parents(out)
    refusal = _refusal(out)
    if refusal is not None:
        raise ExportError(f"--out {out}: {refusal}")
    if _holds_files(out):
        if not force:
            raise ExportError(
                f"--out {out}: holds an earlier export; choose another folder, or add --force "
                "to replace it"
            )
        if source.resolve() == out.resolve() or out.resolve() in source.resolve().parents:
            raise ExportError(
                f"--out {out}: holds the source {source}; replacing it would delete the source"
            )
    return out


def _check_parents(out: Path) -> None:
    """The nearest existing folder above ``out`` must be a folder this user can write in: the
    export is written beside ``out`` and renamed into place, and creates missing parents."""
    from wmtp.folders import blocking_file, why_unwritable

    parent = blocking_file(out.parent)
    if parent is not None:
        kind = "a broken symbolic link" if not parent.exists() else "not a folder"
        raise ExportError(f"--out {out}: {parent} is {kind}, so no folder can be made in it")
    reason = why_unwritable(out.parent)
    if reason is not None:
        raise ExportError(f"--out {out}: {reason}, so the export cannot be written there")


def _refusal(out: Path) -> str | None:
    """Why ``out`` may not be replaced even with ``--force`` (``None``: it is missing, an empty
    folder, or an earlier export holding nothing else)."""
    if out.is_symlink():
        return f"is a symbolic link (to {os.readlink(out)}); give the folder itself, or a new path"
    if not out.exists():
        return None
    if not out.is_dir():
        return "exists and is not a folder"
    if not _holds_files(out):
        return None
    written = written_by_export(out)
    if written is None:
        return (
            f"is not empty and holds no {MARKER} (the list of files an export writes), so it is "
            "no earlier export and even --force will not replace it: choose a new or empty folder"
        )
    others = sorted(set(_entries(out)) - written - {MARKER})
    if others:
        return (
            f"holds an earlier export and files it did not write ({_listed(others)}); replacing "
            "it would delete them: move them out, or choose another folder"
        )
    changed = _changed_since_written(out)
    if changed:
        return (
            f"holds an earlier export whose files changed after it wrote them ({_listed(changed)}"
            "; or the folder was copied without their times); replacing it would lose the "
            "changes: move them out, delete the folder yourself, or choose another folder"
        )
    return None


def _listed(names: list[str]) -> str:
    return ", ".join(names[:5]) + (f" and {len(names) - 5} more" if len(names) > 5 else "")


def _stamp(path: Path) -> list[int]:
    """What an edit changes: the file's size and modification time (ns)."""
    st = path.stat()
    return [st.st_size, st.st_mtime_ns]


def _changed_since_written(folder: Path) -> list[str]:
    """The files an earlier export wrote whose size or time differ from its marker's record
    (none for a marker without one: an export of an earlier wmtp)."""
    marker = json.loads((folder / MARKER).read_text())
    stamps = marker.get("stamps") if isinstance(marker, dict) else None
    if not isinstance(stamps, dict):
        return []
    changed = []
    for name, stamp in sorted(stamps.items()):
        path = folder / name
        if path.is_symlink() or not path.is_file() or _stamp(path) != stamp:
            changed.append(name)
    return changed


def _holds_files(folder: Path) -> bool:
    return folder.is_dir() and any(folder.iterdir())


def written_by_export(folder: Path) -> set[str] | None:
    """The paths an earlier export listed in its marker, or ``None`` if the folder is no export."""
    try:
        marker = json.loads((folder / MARKER).read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None
    if not isinstance(marker, dict) or marker.get("written_by") != WRITTEN_BY:
        return None
    files = marker.get("files")
    if not isinstance(files, list) or not all(isinstance(f, str) for f in files):
        return None
    return set(files)


def _entries(folder: Path) -> list[str]:
    """Every file and folder below ``folder`` as a relative POSIX path (links not followed)."""
    found = []
    for root, dirs, files in os.walk(folder):
        base = Path(root).relative_to(folder)
        found += [(base / name).as_posix() for name in [*dirs, *files]]
    return found


@contextlib.contextmanager
def staged_output(out: Path) -> Iterator[Path]:
    """A temporary folder beside ``out`` to write into; marked as an export and renamed to
    ``out`` (replacing what ``check_output`` allowed) when the block ends without an error,
    removed otherwise."""
    created = _missing_parents(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale_staging(out)
    tmp = out.parent / f"{_staging_prefix(out)}{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        with signals_raise(_stopped(out)):
            yield tmp
        _write_marker(tmp)
        _readable_as_umask_allows(tmp)
        _replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        for parent in created:  # deepest first; only the ones this export made, if still empty
            with contextlib.suppress(OSError):
                parent.rmdir()
        raise


def _staging_prefix(out: Path) -> str:
    """The temporary name of ``out`` while written, less the writing process's id."""
    return f".{out.name}.export-{socket.gethostname()}-"


def _remove_stale_staging(out: Path) -> None:
    """Temporary folders of earlier exports to ``out`` on this machine whose process is gone."""
    prefix = _staging_prefix(out)
    for folder in out.parent.glob(glob.escape(prefix) + "*"):
        pid = folder.name.removeprefix(prefix)
        if pid.isdigit() and not _running(int(pid)):
            shutil.rmtree(folder, ignore_errors=True)


def _running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def _stopped(out: Path) -> Callable[[int], Interrupted]:
    """The error a stop signal raises while the export writes: the temporary folder is removed
    on the way out (``wmtp.stopping``)."""

    def error(signum: int) -> Interrupted:
        name = signal.Signals(signum).name
        return Interrupted(
            f"--out {out}: the export stopped on {name}; nothing was written", signum
        )

    return error


def _write_marker(folder: Path) -> None:
    """``MARKER``: what this export wrote, so that a later ``--force`` may replace exactly it."""
    files = sorted(_entries(folder))
    stamps = {f: _stamp(folder / f) for f in files if (folder / f).is_file()}
    marker = {"written_by": WRITTEN_BY, "files": files, "stamps": stamps}
    (folder / MARKER).write_text(json.dumps(marker, indent=2) + "\n")


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
    """``tmp`` becomes ``out``; an old ``out`` is moved aside first and deleted last. Checked
    again here: the conversion takes minutes, and something may have appeared meanwhile."""
    refusal = _refusal(out)
    if refusal is not None:
        raise ExportError(f"--out {out}: {refusal}")
    old = None
    if out.exists():
        old = out.parent / f".{out.name}.replaced-{os.getpid()}"
        out.rename(old)
    tmp.rename(out)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


__all__ = ["MARKER", "check_output", "staged_output", "written_by_export"]
