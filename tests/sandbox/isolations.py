"""What the sandbox tests share: which isolations work here, and a PATH without bubblewrap."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from wmtp.sandbox import bwrap

HAS_BWRAP = bwrap.probe() is None
bwrap_only = pytest.mark.skipif(not HAS_BWRAP, reason="bubblewrap unusable here")
KINDS = [pytest.param("bwrap", marks=bwrap_only), "rlimits"]
"""Both isolations, each test asking for its own explicitly (an opt-in to rlimits)."""

REPO = Path(__file__).resolve().parents[2]


def path_without_bwrap(tmp_path: Path) -> str:
    """A PATH of one empty folder: ``bwrap`` is not found, as where it is not installed (the
    probe looks it up at every call; programs run through absolute paths)."""
    empty = tmp_path / "empty-bin"
    empty.mkdir(parents=True, exist_ok=True)
    return str(empty)


def child_env(path: str, **env: str) -> dict[str, str]:
    """The environment of a subprocess: ours with ``PATH`` replaced, ``WMTP_SANDBOX`` unset, this
    checkout first on ``PYTHONPATH``, then ``env``."""
    out = {k: v for k, v in os.environ.items() if k != "WMTP_SANDBOX"}
    out["PATH"] = path
    out["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))
    return {**out, **env}
