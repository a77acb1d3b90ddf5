"""Run untrusted Python (generated solutions, candidate training data) without harm to the caller.

- :mod:`~wmtp.sandbox.policy`: which isolation runs code. bubblewrap, or nothing: where it is
  missing or unusable, every call raises :class:`~wmtp.errors.SandboxError` unless the user opted
  in to rlimits only (``WMTP_SANDBOX=rlimits``, ``--sandbox rlimits``, :func:`choose`).
- :mod:`~wmtp.sandbox.bwrap`: the bubblewrap probe and command line (read-only root, private
  ``/tmp``, no network, own PID namespace).
- :mod:`~wmtp.sandbox.rlimits`: the limits every call gets, the launcher that sets them, and what
  the rlimit-only isolation leaves open.
- :mod:`~wmtp.sandbox.users`: the interpreter, and per-call unprivileged uids when we are root.
- :mod:`~wmtp.sandbox.execution`: ``execute`` one program; :mod:`~wmtp.sandbox.checks`: HumanEval
  style ``check`` and ``check_many``.

Standard library only: importing it never imports torch.
"""

from __future__ import annotations

from wmtp.sandbox.checks import CheckJob, check, check_many, check_program, default_workers
from wmtp.sandbox.execution import SandboxResult, execute
from wmtp.sandbox.policy import (
    ENV_VAR,
    MODES,
    Isolation,
    choose,
    isolation,
    isolation_line,
    refusal_reason,
    require,
)

__all__ = [
    "ENV_VAR",
    "MODES",
    "CheckJob",
    "Isolation",
    "SandboxResult",
    "check",
    "check_many",
    "check_program",
    "choose",
    "default_workers",
    "execute",
    "isolation",
    "isolation_line",
    "refusal_reason",
    "require",
]
