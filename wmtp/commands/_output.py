"""Printing shared by every command, with no Typer import (``wmtp validate`` runs without it)."""

from __future__ import annotations

import functools
import json
import logging
import sys
from typing import Any

from wmtp.errors import WmtpError

USER_ERROR_EXIT = 2


@functools.cache
def console(stderr: bool = False) -> Any:
    """A rich console, made on first use: commands printing plain text never import rich."""
    from rich.console import Console

    return Console(stderr=stderr)


def err_console() -> Any:
    return console(stderr=True)


def report_error(exc: WmtpError, *, fmt: str = "text") -> None:
    """Print a user error: its located message as text, or as JSON on stdout for ``--format json``."""
    if fmt == "json":
        print(json.dumps(exc.to_json(), indent=2))
    else:
        from rich.markup import escape

        # escape: messages hold TOML table names like [model.critic]; soft_wrap: keep paths whole
        message = escape(exc.render())
        color = "red" if exc.label == "error" else "yellow"
        err_console().print(
            f"[bold {color}]{exc.label}:[/] {message}", highlight=False, soft_wrap=True
        )


class _Said(logging.Formatter):
    """The console's log lines: the message, with ``warning:`` before a warning (the error that
    ends a command is said once, by its boundary: ``report_error``)."""

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        return f"warning: {text}" if record.levelno >= logging.WARNING else text


class _ToStderr(logging.StreamHandler):
    """Writes to ``sys.stderr`` as it is at each record, not as it was when made: a command run in
    a notebook or under a test harness that swaps stderr for a while logs where stderr is now."""

    def __init__(self) -> None:
        super().__init__(sys.stderr)

    @property
    def stream(self):  # type: ignore[override]
        return sys.stderr

    @stream.setter
    def stream(self, _value) -> None:
        pass


def console_log(level: int = logging.WARNING) -> None:
    """Log records of ``level`` and above to stderr, warnings said as such; called again (``wmtp
    run`` lowers it to INFO on rank 0), it replaces the handler it set before."""
    root = logging.getLogger()
    for handler in [h for h in root.handlers if isinstance(h.formatter, _Said)]:
        root.removeHandler(handler)
    handler = _ToStderr()
    handler.setFormatter(_Said())
    root.addHandler(handler)
    root.setLevel(level)
