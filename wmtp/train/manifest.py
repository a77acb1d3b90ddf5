"""A checkpoint's manifest: every file it holds with its size and SHA-256, written last.

A trainer checkpoint (``checkpoints/step-N/``) is written under a temporary name; once every
rank's files are in it, rank 0 writes ``manifest.json`` and only then renames the directory. A
checkpoint therefore proves itself: :func:`verify` finds a missing, truncated or altered file (a
torn write, a full disk, a flipped byte) before anything is loaded from it, and names the file.
Torch-free: ``wmtp run --resume`` verifies before torch loads, and ``wmtp eval`` (through
``wmtp.models.locate``) verifies the files it reads.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from wmtp.atomic import write_text
from wmtp.errors import CheckpointError

MANIFEST = "manifest.json"
VERSION = 1
_CHUNK = 1 << 22


def sha256_of(path: Path) -> str:
    """The file's SHA-256 (read in 4 MiB blocks; hashlib releases the GIL, so threads overlap)."""
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while block := f.read(_CHUNK):
            digest.update(block)
    return digest.hexdigest()


def _files(directory: Path) -> list[Path]:
    return sorted(p for p in directory.rglob("*") if p.is_file() and p.name != MANIFEST)


def _hashed(directory: Path, names: list[str]) -> dict[str, str]:
    workers = min(8, os.cpu_count() or 1, max(len(names), 1))
    with ThreadPoolExecutor(workers) as pool:
        digests = pool.map(lambda name: sha256_of(directory / name), names)
        return dict(zip(names, digests, strict=True))


def write_manifest(directory: str | Path) -> Path:
    """Record every file under ``directory`` (sizes and hashes); the manifest is written last,
    through a temporary name, so its presence means every file before it was complete."""
    directory = Path(directory)
    names = [str(p.relative_to(directory)) for p in _files(directory)]
    digests = _hashed(directory, names)
    files = {n: {"bytes": (directory / n).stat().st_size, "sha256": digests[n]} for n in names}
    target = directory / MANIFEST
    return write_text(target, json.dumps({"version": VERSION, "files": files}, indent=1) + "\n")


def verify(directory: str | Path, only: Iterable[str] | None = None) -> None:
    """Check ``directory`` against its manifest: every file (or the ``only`` ones) present with
    its size and hash. A CheckpointError names the first file that is not as written."""
    directory = Path(directory)
    files = _read(directory)
    names = list(files) if only is None else [n for n in only if n in files]
    missing = [n for n in names if not (directory / n).is_file()]
    if missing:
        raise damaged(directory, missing[0], "is missing")
    for name in names:
        size, want = (directory / name).stat().st_size, files[name]["bytes"]
        if size != want:
            raise damaged(directory, name, f"has {size:,} bytes, the manifest says {want:,}")
    digests = _hashed(directory, names)
    for name in names:
        if digests[name] != files[name]["sha256"]:
            raise damaged(directory, name, "does not match its checksum (altered after writing)")


def listed(directory: str | Path) -> list[str]:
    """The files the manifest of ``directory`` records (relative names)."""
    return list(_read(Path(directory)))


def has_manifest(directory: str | Path) -> bool:
    return (Path(directory) / MANIFEST).is_file()


def damaged(directory: Path, name: str, why: str) -> CheckpointError:
    return CheckpointError(f"checkpoint {directory} is damaged: {name} {why}")


def _read(directory: Path) -> dict[str, dict]:
    path = directory / MANIFEST
    if not path.is_file():
        raise CheckpointError(
            f"checkpoint {directory} has no {MANIFEST}: it was not completed (a crash while it was "
            "written) or comes from a wmtp that did not write one"
        )
    try:
        data = json.loads(path.read_text())
        return dict(data["files"])
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise damaged(directory, MANIFEST, f"cannot be read ({exc})") from None


__all__ = ["MANIFEST", "has_manifest", "listed", "verify", "write_manifest"]
