"""SIGINT and SIGTERM as an exception, so that a command stops where it can say what it keeps.

Python's own SIGTERM ends the process where it stands (no ``finally``, no message) and its SIGINT
is a ``KeyboardInterrupt`` that a library's ``except`` may catch. While :func:`signals_raise`
holds, either signal raises the error the command made for it, which the CLI says with exit
code 128 + the signal (``wmtp.errors.Interrupted``). Training has its own, step-aware handlers
(``wmtp.train.guards.StopSignals``).
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


__all__ = ["STOP_SIGNALS", "signals_raise"]
