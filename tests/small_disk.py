"""A file system that fills up: a tmpfs of a chosen size, mounted in a user and mount namespace of
its own (``unshare -Urm``) so that no privilege is needed and nothing outside sees it."""

from __future__ import annotations

import functools
import shutil
import subprocess

import pytest


@functools.cache
def namespace_tmpfs_works() -> bool:
    """Whether this machine lets a process mount a tmpfs in a namespace of its own."""
    if not shutil.which("unshare"):
        return False
    probe = subprocess.run(
        ["unshare", "-Urm", "sh", "-c", "mount -t tmpfs -o size=1m tmpfs /mnt"],
        capture_output=True,
    )
    return probe.returncode == 0


needs_small_disk = pytest.mark.skipif(
    not namespace_tmpfs_works(), reason="no mount namespace here for a tmpfs"
)
