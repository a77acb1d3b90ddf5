"""Standard output and error that outlive their reader.

``wmtp run recipe.toml | head -2``, ``wmtp eval RUN | grep pass``, ``wmtp list | head -1``: the
reader leaves while wmtp still writes. Python then raises ``BrokenPipeError`` from whatever
wrote (a progress bar, a log line), and rich turns it into exit 1: a training run would stop in
the middle of its data preparation or between checkpoints, and an evaluation would lose its
generations. Output is what the reader wanted; the work is what the user wanted. So
:func:`outlive_readers` (the console script's first step) wraps both streams: the first write
that finds its reader gone points that descriptor at ``/dev/null``, and the command carries on
and ends with its own exit code, every later line dropped. A terminal that closes sends SIGHUP,
which is another matter (``nohup``).
"""

from __future__ import annotations

import os
import sys
from typing import Any, TextIO


class ReaderProof:
    """A text stream whose writes never fail for want of a reader (see the module docstring);
    everything else is the wrapped stream's."""

    def __init__(self, stream: TextIO) -> None:
        self._stream = stream
        self.reader_gone = False

    def write(self, text: str) -> int:
        try:
            return self._stream.write(text)
        except BrokenPipeError:
            self._drop_the_rest()
            return len(text)

    def flush(self) -> None:
        try:
            self._stream.flush()
        except BrokenPipeError:
            self._drop_the_rest()

    def _drop_the_rest(self) -> None:
        """This stream's descriptor now writes to ``/dev/null``: what the stream still buffers
        goes there at its next flush, and so does every later write, this process's and its
        children's."""
        self.reader_gone = True
        devnull = os.open(os.devnull, os.O_WRONLY)
        try:
            os.dup2(devnull, self._stream.fileno())
        finally:
            os.close(devnull)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._stream, name)


def outlive_readers() -> None:
    """``sys.stdout`` and ``sys.stderr`` wrapped in :class:`ReaderProof` (once; a stream that
    is missing or has no descriptor stays as it is)."""
    for name in ("stdout", "stderr"):
        stream = getattr(sys, name)
        if stream is None or isinstance(stream, ReaderProof):
            continue
        try:
            stream.fileno()
        except (AttributeError, OSError, ValueError):
            continue
        setattr(sys, name, ReaderProof(stream))


__all__ = ["ReaderProof", "outlive_readers"]
