"""A command's output folder, written whole: ``wmtp export``'s model and ``wmtp report``'s figures.

The folder is written under a temporary name beside it and renamed when whole, so a reader never
sees half of it and a failed command leaves nothing: not the temporary folder, nor parent folders
it created. SIGINT and SIGTERM stop it the same way (an ``Interrupted`` error, exit 128 + the
signal); a process killed outright (SIGKILL, the OOM killer) leaves its temporary folder, which
the next writer of the same folder on this machine removes. One command writes a folder at a time:
the writer holds a lock beside it (``wmtp.locks``), and a second is refused, exit 2, saying who
holds it.

Every such folder ends with its marker (``wmtp_export.json``, ``wmtp_report.json``): the list of
what the command wrote, each file's size and time beside it. That list is what lets a later run of
the command replace the folder (an export only with ``--force``), and only then: a folder without
it (a trained run, a working directory, someone's notes), or one a user has since added files to
or edited (an export's card, a report's notes), is refused even with ``--force``, since replacing
it would lose what a user wrote.
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
from dataclasses import dataclass
from pathlib import Path

from wmtp.errors import Interrupted, WmtpError
from wmtp.stopping import signals_deferred, signals_raise


@dataclass(frozen=True)
class Product:
    """What one command writes as a folder."""

    noun: str
    """What the folder holds, as the messages say it: ``export``, ``report``."""
    marker: str
    """The file that lists what the command wrote (written last)."""
    error: type[WmtpError]
    """The error every refusal raises (exit 2)."""
    replacing_needs_force: bool
    """Whether an earlier folder of this product is replaced only with ``--force``."""

    @property
    def written_by(self) -> str:
        return f"wmtp {self.noun}"


def check_output(out: Path, product: Product, *, force: bool, source: Path | None = None) -> Path:
    """The absolute output folder, or ``product.error`` saying why it cannot be written; every
    check runs before any work that fills it.

    ``--out`` may be a new path, an empty folder, or an earlier folder of ``product`` (with
    ``force`` where it needs it). A symbolic link is refused rather than followed: replacing the
    link would leave what it pointed to untouched and the link gone (a ``latest`` link would no
    longer follow its runs), while replacing its target would write somewhere the user did not
    name. ``source``: what the command reads, which the output must not hold."""
    out = Path(out).expanduser().absolute()
    here = Path.cwd().resolve()
    if out.resolve() == here or out.resolve() in here.parents:
        raise product.error(
            f"--out {out}: holds the working directory, which the {product.noun} would replace "
            "under your shell; give a folder inside it"
        )
    _check_parents(out, product)
    refusal = _refusal(out, product)
    if refusal is not None:
        raise product.error(f"--out {out}: {refusal}")
    if _holds_files(out):
        if product.replacing_needs_force and not force:
            raise product.error(
                f"--out {out}: holds an earlier {product.noun}; choose another folder, or add "
                "--force to replace it"
            )
        if source is not None and (
            source.resolve() == out.resolve() or out.resolve() in source.resolve().parents
        ):
            raise product.error(
                f"--out {out}: holds the source {source}; replacing it would delete the source"
            )
    return out


def _check_parents(out: Path, product: Product) -> None:
    """The nearest existing folder above ``out`` must be a folder this user can write in: the
    folder is written beside ``out`` and renamed into place, and missing parents are made."""
    from wmtp.folders import blocking_file, why_unwritable

    parent = blocking_file(out.parent)
    if parent is not None:
        kind = "a broken symbolic link" if not parent.exists() else "not a folder"
        raise product.error(f"--out {out}: {parent} is {kind}, so no folder can be made in it")
    reason = why_unwritable(out.parent)
    if reason is not None:
        raise product.error(f"--out {out}: {reason}, so the {product.noun} cannot be written there")


def _refusal(out: Path, product: Product) -> str | None:
    """Why ``out`` may not be replaced even with ``--force`` (``None``: it is missing, an empty
    folder, or an earlier folder of ``product`` holding nothing else)."""
    if out.is_symlink():
        return f"is a symbolic link (to {os.readlink(out)}); give the folder itself, or a new path"
    if not out.exists():
        return None
    if not out.is_dir():
        return "exists and is not a folder"
    if not _holds_files(out):
        return None
    written = written_by(out, product)
    if written is None:
        kept = "even --force will not replace it" if product.replacing_needs_force else "kept"
        return (
            f"is not empty and holds no {product.marker} (the list of files {product.written_by}"
            f" writes), so it is no earlier {product.noun} and {kept}: choose a new or empty "
            "folder"
        )
    others = sorted(set(_entries(out)) - written - {product.marker})
    if others:
        return (
            f"holds an earlier {product.noun} and files it did not write ({_listed(others)}); "
            "replacing it would delete them: move them out, or choose another folder"
        )
    changed = _changed_since_written(out, product)
    if changed:
        return (
            f"holds an earlier {product.noun} whose files changed after it wrote them "
            f"({_listed(changed)}; or the folder was copied without their times); replacing it "
            "would lose the changes: move them out, delete the folder yourself, or choose another "
            "folder"
        )
    return None


def _listed(names: list[str]) -> str:
    return ", ".join(names[:5]) + (f" and {len(names) - 5} more" if len(names) > 5 else "")


def _stamp(path: Path) -> list[int]:
    """What an edit changes: the file's size and modification time (ns)."""
    st = path.stat()
    return [st.st_size, st.st_mtime_ns]


def _changed_since_written(folder: Path, product: Product) -> list[str]:
    """The files an earlier command wrote whose size or time differ from its marker's record
    (none for a marker without one: an export of an earlier wmtp)."""
    marker = json.loads((folder / product.marker).read_text())
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


def written_by(folder: Path, product: Product) -> set[str] | None:
    """The paths an earlier ``product`` listed in its marker in ``folder``, or ``None`` if the
    folder is no such product."""
    files = _marker_of(folder, product).get("files")
    if not isinstance(files, list) or not all(isinstance(f, str) for f in files):
        return None
    return set(files)


def made_from(folder: Path, product: Product) -> dict:
    """What ``product`` recorded in ``folder``'s marker as made from (empty where the folder has
    no marker of ``product``, or it recorded nothing)."""
    recorded = _marker_of(folder, product).get("made_from")
    return recorded if isinstance(recorded, dict) else {}


def _marker_of(folder: Path, product: Product) -> dict:
    """``product``'s marker in ``folder`` (empty where there is none, or another's)."""
    try:
        marker = json.loads((folder / product.marker).read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return {}
    if not isinstance(marker, dict) or marker.get("written_by") != product.written_by:
        return {}
    return marker


def _entries(folder: Path) -> list[str]:
    """Every file and folder below ``folder`` as a relative POSIX path (links not followed)."""
    found = []
    for root, dirs, files in os.walk(folder):
        base = Path(root).relative_to(folder)
        found += [(base / name).as_posix() for name in [*dirs, *files]]
    return found


@contextlib.contextmanager
def staged_output(
    out: Path, product: Product, *, force: bool, made_from: dict | None = None
) -> Iterator[Path]:
    """A temporary folder beside ``out`` to write into, while this process holds ``out``'s lock;
    marked and renamed to ``out`` (replacing what ``check_output`` allowed) when the block ends
    without an error, removed otherwise. ``made_from``: what the folder was made from, kept in
    its marker for programs to read (:func:`made_from`)."""
    from wmtp.locks import holding

    created = _missing_parents(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    try:
        with holding(out.parent / f".{out.name}.lock", _being_written(out, product)):
            _remove_stale_staging(out, product)
            tmp = out.parent / f"{_staging_prefix(out, product)}{os.getpid()}"
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir()
            try:
                with signals_raise(_stopped(out, product)):
                    yield tmp
                _write_marker(tmp, product, made_from)
                _readable_as_umask_allows(tmp)
                _replace(tmp, out, product, force=force)
            except BaseException:
                shutil.rmtree(tmp, ignore_errors=True)
                raise
    except BaseException:
        for parent in created:  # deepest first; only the ones this command made, if still empty
            with contextlib.suppress(OSError):
                parent.rmdir()
        raise


def _being_written(out: Path, product: Product) -> Callable[[str], WmtpError]:
    def refused(holder: str) -> WmtpError:
        return product.error(
            f"--out {out}: another {product.written_by} writes this folder now ({holder}); wait "
            "until it ends, or give another --out"
        )

    return refused


def _staging_prefix(out: Path, product: Product) -> str:
    """The temporary name of ``out`` while written, less the writing process's id."""
    return f".{out.name}.{product.noun}-{socket.gethostname()}-"


def _remove_stale_staging(out: Path, product: Product) -> None:
    """Temporary folders of earlier writers of ``out`` on this machine whose process is gone;
    an old ``out`` one of them had swapped out when it died (SIGKILL between two renames) goes
    back in its place if nothing took it, else away."""
    prefix = _staging_prefix(out, product)
    for folder in out.parent.glob(glob.escape(prefix) + "*"):
        pid = folder.name.removeprefix(prefix)
        if pid.isdigit() and not _running(int(pid)):
            shutil.rmtree(folder, ignore_errors=True)
    prefix = _replaced_prefix(out)
    for folder in out.parent.glob(glob.escape(prefix) + "*"):
        pid = folder.name.removeprefix(prefix)
        if not pid.isdigit() or _running(int(pid)):
            continue
        if out.exists():
            shutil.rmtree(folder, ignore_errors=True)
        else:
            folder.rename(out)


def _running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def _stopped(out: Path, product: Product) -> Callable[[int], Interrupted]:
    """The error a stop signal raises while the folder is written: the temporary folder is
    removed on the way out (``wmtp.stopping``)."""

    def error(signum: int) -> Interrupted:
        name = signal.Signals(signum).name
        return Interrupted(
            f"--out {out}: the {product.noun} stopped on {name}; nothing was written", signum
        )

    return error


def _write_marker(folder: Path, product: Product, made_from: dict | None) -> None:
    """The marker: what this command wrote, so that a later run may replace exactly it, and
    what it was made from."""
    files = sorted(_entries(folder))
    stamps = {f: _stamp(folder / f) for f in files if (folder / f).is_file()}
    marker = {"written_by": product.written_by, "files": files, "stamps": stamps}
    if made_from is not None:
        marker["made_from"] = made_from
    (folder / product.marker).write_text(json.dumps(marker, indent=2) + "\n")


def _readable_as_umask_allows(folder: Path) -> None:
    """Files as any new file would be (safetensors writes its files for the owner alone): what
    these commands write is made to be shared."""
    umask = os.umask(0)
    os.umask(umask)
    for path in folder.rglob("*"):
        if path.is_file():
            path.chmod(0o666 & ~umask)


def _missing_parents(out: Path) -> list[Path]:
    return [p for p in out.parents if not p.exists()]


def _replace(tmp: Path, out: Path, product: Product, *, force: bool) -> None:
    """``tmp`` becomes ``out``; an old ``out`` is moved aside first and deleted last. Checked
    again here: the work takes minutes, and another command may have written ``out`` meanwhile
    (it held the lock before this one took it)."""
    refusal = _refusal(out, product)
    if refusal is None and _holds_files(out) and product.replacing_needs_force and not force:
        refusal = (
            f"another {product.written_by} wrote this folder while this one ran; this "
            f"{product.noun} is not kept: run it again with --force to replace that one"
        )
    if refusal is not None:
        raise product.error(f"--out {out}: {refusal}")
    with signals_deferred():  # never the old folder hidden and the new one not in its place
        old = None
        if out.exists():
            old = out.parent / f"{_replaced_prefix(out)}{os.getpid()}"
            out.rename(old)
        try:
            tmp.rename(out)
        except BaseException:
            if old is not None:
                old.rename(out)
            raise
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)


def _replaced_prefix(out: Path) -> str:
    """The name an old ``out`` has while it is swapped out, less the swapping process's id."""
    return f".{out.name}.replaced-{socket.gethostname()}-"


__all__ = ["Product", "check_output", "made_from", "staged_output", "written_by"]
