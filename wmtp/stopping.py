"""SIGINT and SIGTERM as an exception, so that a command stops where it can say what it keeps.

Python's own SIGTERM ends the process where it stands (no ``finally``, no message) and its SIGINT
is a ``KeyboardInterrupt`` that a library's ``except`` may catch. While :func:`signals_raise`
holds, either signal raises the error the command made for it, which the CLI says with exit
code 128 + the signal (``wmtp.errors.Interrupted``). Training has its own, step-aware handlers
(``wmtp.train.guards.StopSignals``). Around every command, :func:`signals_interrupt` makes
SIGTERM a ``KeyboardInterrupt`` as SIGINT is (every clean-up runs, the CLI says which signal);
:func:`signals_deferred` holds both while steps that must end together run.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Callable, Iterator

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


@contextlib.contextmanager
def signals_raise(error: Callable[[int], BaseException]) -> Iterator[None]:
    """While the block runs, SIGINT and SIGTERM raise ``error(signum)``; the handlers before it
    come back after. Only the main thread may set handlers: elsewhere the signals keep theirs."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def stop(signum, _frame):
        raise error(signum)

    previous = {sig: signal.signal(sig, stop) for sig in STOP_SIGNALS}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


@contextlib.contextmanager
def signals_deferred() -> Iterator[None]:
    """While the block runs, SIGINT and SIGTERM wait: a few steps that must end together (two
    renames that swap a folder, results written and their partial copy removed) are never cut
    in between. A signal that came meanwhile is sent again once the handlers before it are
    back, and meets them there."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    came: list[int] = []
    previous = {sig: signal.signal(sig, lambda n, _f: came.append(n)) for sig in STOP_SIGNALS}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        if came:
            signal.raise_signal(came[0])


def signals_interrupt() -> contextlib.AbstractContextManager[None]:
    """For a whole command: SIGINT a ``KeyboardInterrupt``, as Python makes it, and SIGTERM one
    too (:class:`Terminated`, which knows its signal), so that every ``finally`` and clean-up
    for Ctrl-C runs for a scheduler's stop as well, and the CLI says either with 128 + the
    signal. Python's own SIGTERM ends the process where it stands, with no message."""
    return signals_raise(_interrupt)


class Terminated(KeyboardInterrupt):
    """A stop signal raised as Ctrl-C is, knowing which signal it was."""

    def __init__(self, signum: int):
        super().__init__(signum)
        self.signum = signum


def _interrupt(signum: int) -> KeyboardInterrupt:
    return Terminated(signum) if signum != signal.SIGINT else KeyboardInterrupt()


__all__ = ["STOP_SIGNALS", "Terminated", "signals_deferred", "signals_interrupt", "signals_raise"]
