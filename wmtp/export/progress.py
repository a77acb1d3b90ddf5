"""Progress of an export on large models: a line saying what it reads and builds (minutes for a
large model on the CPU), then a rich bar over the bytes of the tensors written."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator


class TensorProgress:
    """``advance(nbytes)`` per tensor prepared, ``describe(text)`` per file written."""

    def __init__(self, progress=None, task=None):
        self._progress, self._task = progress, task

    def advance(self, nbytes: int) -> None:
        if self._progress is not None:
            self._progress.advance(self._task, nbytes)

    def describe(self, text: str) -> None:
        if self._progress is not None:
            self._progress.update(self._task, description=text, refresh=True)


@contextlib.contextmanager
def stage(text: str, enabled: bool, console=None) -> Iterator[None]:
    """A spinner saying ``text`` while a step with nothing to count runs (nothing when not
    ``enabled``, or off a terminal)."""
    if not enabled:
        yield
        return
    from rich.console import Console

    with (console or Console(stderr=True)).status(text):
        yield


@contextlib.contextmanager
def tensor_progress(total_bytes: int, enabled: bool, console=None) -> Iterator[TensorProgress]:
    """A bar of ``total_bytes`` (nothing shown when not ``enabled``)."""
    if not enabled:
        yield TensorProgress()
        return
    from rich.progress import (
        BarColumn,
        DownloadColumn,
        Progress,
        TextColumn,
        TimeRemainingColumn,
    )

    columns = (TextColumn("{task.description}"), BarColumn(), DownloadColumn())
    with Progress(*columns, TimeRemainingColumn(), console=console, transient=True) as progress:
        yield TensorProgress(progress, progress.add_task("export", total=total_bytes))


__all__ = ["TensorProgress", "stage", "tensor_progress"]
