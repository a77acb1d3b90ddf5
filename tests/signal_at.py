"""Run ``wmtp ARGS`` in this process after arranging for a real stop signal at an exact moment:
``python -m tests.signal_at MODULE:FUNCTION:before|after:SIGNAL[:N] -- ARGS``. The process
sends itself the signal right before or after the N-th call of that function (the first), as a user's Ctrl-C or
a scheduler's SIGTERM arriving then would; wmtp's own handlers meet it. The moments the tests
name are windows too short to hit from outside (between two renames, after the results are
written, once the command has ended)."""

from __future__ import annotations

import functools
import importlib
import itertools
import os
import signal
import sys
import threading


def arrange(spec: str) -> None:
    module_name, function, when, name, *nth = spec.split(":")
    owner = importlib.import_module(module_name)
    original = getattr(owner, function)
    calls, counting = itertools.count(1), threading.Lock()
    at = int(nth[0]) if nth else 1

    @functools.wraps(original)
    def signalled(*args, **kwargs):
        with counting:  # a function called from several threads: each call its own number
            call = next(calls)
        if when == "before" and call == at:
            os.kill(os.getpid(), signal.Signals[name])
        result = original(*args, **kwargs)
        if when == "after" and call == at:
            os.kill(os.getpid(), signal.Signals[name])
        return result

    setattr(owner, function, signalled)


if __name__ == "__main__":
    split = sys.argv.index("--")
    arrange(sys.argv[1])
    sys.argv = ["wmtp", *sys.argv[split + 1 :]]
    from wmtp.cli import main

    main()
