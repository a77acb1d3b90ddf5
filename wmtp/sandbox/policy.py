"""Which isolation runs code, and the rule that none runs without one the user accepted.

bubblewrap is the isolation. Where it is missing or cannot run, code does not run at all: every
entry point that executes a program raises :class:`~wmtp.errors.SandboxError`, saying why and how
to fix it. The user may opt in to the weaker rlimit-only isolation with ``WMTP_SANDBOX=rlimits``
(or ``--sandbox rlimits``, which sets it for the process and its children through
:func:`choose`); it then logs once what it does not block. ``WMTP_SANDBOX=bwrap`` insists on
bubblewrap; unset (or empty) means bubblewrap, else refuse.
"""

from __future__ import annotations

import logging
import os
import threading
from dataclasses import dataclass
from typing import Literal

from wmtp.errors import SandboxError
from wmtp.sandbox import bwrap, rlimits
from wmtp.sandbox.users import runner

log = logging.getLogger(__name__)

ENV_VAR = "WMTP_SANDBOX"
MODES = ("bwrap", "rlimits")
"""The values ``WMTP_SANDBOX`` and ``--sandbox`` accept."""

IsolationKind = Literal["bwrap", "rlimits"]
OPT_IN = f"{ENV_VAR}=rlimits in the environment or --sandbox rlimits on the command line"


@dataclass(frozen=True)
class Isolation:
    """Which isolation code would run under here, and why; ``"none"`` when code may not run."""

    kind: Literal["bwrap", "rlimits", "none"]
    detail: str


def choose(mode: str | None) -> None:
    """Choose the isolation (``"bwrap"`` or ``"rlimits"``) for this process and its children:
    what ``--sandbox MODE`` does (sets ``$WMTP_SANDBOX``); None leaves it as it is."""
    if mode is None:
        return
    global _chosen_with
    mode = getattr(mode, "value", mode)  # the CLI's SandboxMode, or a plain string
    os.environ[ENV_VAR] = _checked(mode, f"--sandbox {mode}")
    _chosen_with = f"--sandbox {mode}"


_chosen_with: str | None = None
"""The option that set ``$WMTP_SANDBOX`` in this process (:func:`choose`), for its warning."""


def _checked(mode: str, where: str) -> str:
    if mode not in MODES:
        raise SandboxError(
            f"{where}: expected 'bwrap' or 'rlimits' (or leave {ENV_VAR} unset for bubblewrap)"
        )
    return mode


def requested_mode(requested: str | None = None) -> str | None:
    """``requested``, else ``$WMTP_SANDBOX``; None when neither says (bubblewrap or refuse)."""
    if requested:
        return _checked(requested, f"isolation {requested!r}")
    value = os.environ.get(ENV_VAR, "")
    return _checked(value, f"{ENV_VAR}={value!r}") if value else None


def isolation(requested: str | None = None) -> Isolation:
    """The isolation ``execute`` would use (``requested`` overrides ``$WMTP_SANDBOX``)."""
    mode = requested_mode(requested)
    if mode == "rlimits":
        return Isolation("rlimits", f"{rlimits.summary()} (opted in); {rlimits.weaknesses()}")
    why = _unusable(mode)
    if why is None:
        return Isolation("bwrap", f"bubblewrap{runner().note}: {bwrap.SUMMARY}")
    return Isolation("none", f"{why}; set {ENV_VAR}=rlimits to run with rlimits only")


def refusal_reason(requested: str | None = None) -> str | None:
    """Why no isolation may run code here, in a phrase (``WMTP_SANDBOX=bwrap but bubblewrap
    unusable (bwrap is not installed: not found on PATH)``), for a message that says itself what
    to do; None where code may run (bubblewrap works, or rlimits only was opted in to)."""
    mode = requested_mode(requested)
    return None if mode == "rlimits" else _unusable(mode)


def _unusable(mode: str | None) -> str | None:
    """Why bubblewrap cannot run here, naming what insisted on it; None where it can."""
    problem = bwrap.probe()
    if problem is None:
        return None
    forced = f"{_bwrap_forced_by()} but " if mode == "bwrap" else ""
    return f"{forced}bubblewrap unusable ({problem})"


def _bwrap_forced_by() -> str:
    """What insisted on bubblewrap, as the user said it: ``--sandbox bwrap`` (:func:`choose`)
    in this process, else ``WMTP_SANDBOX=bwrap``."""
    return _chosen_with if _chosen_with == "--sandbox bwrap" else f"{ENV_VAR}=bwrap"


def isolation_line() -> str:
    """The isolation in one line, for ``wmtp validate --env``; never raises."""
    try:
        found = isolation()
    except SandboxError as exc:
        return f"none: {exc}"
    return f"{found.kind}: {found.detail}"


def require(requested: str | None = None, *, purpose: str = "running untrusted code") -> Isolation:
    """The isolation to run code under; :class:`SandboxError` when there is none.

    ``purpose`` names what needed it, for the error. Under ``rlimits`` a warning says once per
    process what that isolation leaves open.
    """
    found = isolation(requested)
    if found.kind == "none":
        raise SandboxError(_refusal(purpose, requested_mode(requested)))
    if found.kind == "rlimits":
        chosen = _chosen_with if _chosen_with == "--sandbox rlimits" else f"{ENV_VAR}=rlimits"
        _warn_once("as the caller asked" if requested else f"as chosen with {chosen}")
    return found


def _refusal(purpose: str, mode: str | None) -> str:
    forced = f" ({_bwrap_forced_by()})" if mode == "bwrap" else ""
    return (
        f"sandbox: {purpose} needs bubblewrap{forced}, which cannot run here: {bwrap.probe()}. "
        f"Install it ({bwrap.INSTALL_HINT}), or accept weaker isolation with {OPT_IN}: "
        f"{rlimits.weaknesses()}."
    )


_warned: list[bool] = []  # one entry once the warning is out
_warned_lock = threading.Lock()


def _warn_once(source: str) -> None:
    """Once per job: a torchrun worker other than rank 0 leaves it to rank 0."""
    with _warned_lock:
        if _warned or os.environ.get("RANK", "0") != "0":
            return
        _warned.append(True)
    log.warning(
        "sandbox: untrusted code runs without bubblewrap, %s: %s.", source, rlimits.weaknesses()
    )
