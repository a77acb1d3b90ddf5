"""Hooks for the whole suite."""

from __future__ import annotations

import os

# One compute thread a process, set before any test imports torch, and inherited by every
# subprocess a test starts. The suite runs in two workers on two cores (the README's ``-n 2``);
# torch's default of a thread per core left each worker's OpenMP threads spinning against the
# other's, which made the suite about a quarter slower. A value set outside wins.
os.environ.setdefault("OMP_NUM_THREADS", "1")


def pytest_collection_modifyitems(config, items) -> None:
    """Test files marked ``minutes(N)`` run first, the longest first; the rest keep their order.

    Under ``-n 2`` each file runs whole in one worker, which takes the next file when it is done
    (``--no-loadscope-reorder`` keeps this order). A file of minutes taken last would leave the
    other worker idle for its minutes; taken first, the short files fill in beside it."""
    minutes: dict = {}
    for item in items:
        mark = item.get_closest_marker("minutes")
        minutes[item.path] = max(minutes.get(item.path, 0), mark.args[0] if mark else 0)
    items.sort(key=lambda item: -minutes[item.path])  # stable: a file's tests stay together
