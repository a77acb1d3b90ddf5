"""What a run leaves when it fails: its log in the run directory, and one record per failed rank.

- :class:`RunLog`: rank 0's log lines go to ``<run>/run.log`` as well as the console. When a run
  fails before its first checkpoint, the log says why and where it is, and the run directory is
  not made ``latest`` (only a run with a checkpoint is: ``Trainer.save``). A new run whose start
  failed on the user's input leaves no run directory at all: its error says all that its log
  would (``wmtp.train.runner``). A library's background thread that fails meanwhile
  (TensorBoard's event writer, on a full disk) is one warning on the console, its trace in
  ``run.log``: the run's own error says what it stopped.
- :func:`exit_without_peers`: a failing rank of a multi-process run writes what happened to
  ``$WMTP_FAILURES_DIR/rank<r>.json`` (set by ``wmtp run --nproc-per-node``, whose launcher
  summarises them: ``wmtp.train.launcher``) and exits at once, without waiting for peers that
  are blocked in a collective. Started by torchrun directly, it prints its message instead.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import threading
import time
import traceback
from pathlib import Path
from typing import Any

from wmtp.errors import Interrupted, WmtpError

LOG_FILE = "run.log"
FAILURES_ENV = "WMTP_FAILURES_DIR"
TRAINING_SUFFIX, STOPPED_SUFFIX = ".training", ".stopped"
"""``rank<r>.training`` in that folder: rank r trains, a signal stops it at a step boundary;
``rank<r>.stopped``: it did, its checkpoint written (the launcher compares the two)."""
RUN_DIR_FILE = "run_dir"
"""In that folder: the run directory rank 0 writes (the launcher names its newest checkpoint
after a rank crashed or was killed)."""
SECONDARY_MARKS = (
    "Connection closed by peer",
    "Connection reset by peer",
    "Broken pipe",
    "recvBytes",
    "NCCL communicator was aborted",
    "Watchdog caught collective operation timeout",
    "Timed out",
)
"""Words of the errors a rank gets when a peer is gone: the failure of another rank, not its own."""

log = logging.getLogger(__name__)


class RunLog:
    """``<run>/run.log`` on rank 0 while the run lasts (a context manager)."""

    def __init__(self) -> None:
        self.handler: logging.Handler | None = None
        self._thread_hook = threading.excepthook
        self._closing = threading.Lock()
        """Held while a failed thread writes to the log, and while the log closes: a thread that
        fails as the run ends writes to an open log or, once it is closed, says it as Python
        does (a closed file handler would open its file again, in a run directory maybe gone)."""

    def __enter__(self) -> RunLog:
        return self

    def attach(self, run_dir: Path, ctx: Any) -> None:
        if not ctx.is_main:
            return
        folder = os.environ.get(FAILURES_ENV)
        if folder:
            (Path(folder) / RUN_DIR_FILE).write_text(str(run_dir))
        self.handler = logging.FileHandler(run_dir / LOG_FILE)
        self.handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
        self.handler.setLevel(logging.INFO)
        logging.getLogger().addHandler(self.handler)
        threading.excepthook = self._thread_failed

    def _thread_failed(self, failure: threading.ExceptHookArgs) -> None:
        """A background thread's exception: one line on the console and in the log, its trace in
        the log only (the default hook prints the trace on stderr)."""
        with self._closing:
            if self.handler is not None:
                self._log_thread_failure(self.handler, failure)
                return
        self._thread_hook(failure)  # the log closed meanwhile: as Python says it

    @staticmethod
    def _log_thread_failure(handler: logging.Handler, failure: threading.ExceptHookArgs) -> None:
        if failure.exc_type is SystemExit:
            return
        name = failure.thread.name if failure.thread is not None else "a thread"
        log.warning(
            "a background thread%s (%s) failed: %s",
            _library_of(failure.exc_traceback), name, failure.exc_value,
        )  # fmt: skip
        trace = traceback.format_exception(
            failure.exc_type, failure.exc_value, failure.exc_traceback
        )
        handler.handle(_record(logging.INFO, "".join(trace)))

    def ended(self, message: str) -> None:
        """Record how the run ended, a clean stop or the end (the console says it its own way)."""
        if self.handler is not None:
            self.handler.handle(_record(logging.INFO, message))

    def failed(self, exc: BaseException, run_dir: Path | None) -> None:
        """Record why the run ended; a run directory without a checkpoint says it was not made
        ``latest`` and where its log is."""
        if self.handler is None or run_dir is None:
            return
        if isinstance(exc, Interrupted):  # said on the console; a stop is no failure
            self.ended(f"stopped: {exc.render()}")
            return
        message = (
            exc.render() if isinstance(exc, WmtpError) else "".join(traceback.format_exception(exc))
        )
        cause = exc.__cause__
        if isinstance(exc, WmtpError) and cause is not None and not isinstance(cause, WmtpError):
            # a library's own failure behind the message (torch.compile's): the log keeps its trace
            message += "\ncaused by:\n" + "".join(traceback.format_exception(cause))
        self.handler.handle(_record(logging.ERROR, message))
        if run_dir.is_dir() and not (run_dir / "checkpoints").is_dir():
            log.warning(
                "the run directory %s keeps its log (%s); it has no checkpoint, so "
                "%s/latest still names the last run that has one",
                run_dir, LOG_FILE, run_dir.parent,
            )  # fmt: skip

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Stop writing ``run.log`` (again: nothing): as the run ends, or before a failed start
        removes its run directory."""
        threading.excepthook = self._thread_hook
        with self._closing:
            handler, self.handler = self.handler, None
        if handler is not None:
            logging.getLogger().removeHandler(handler)
            handler.close()


def _library_of(trace) -> str:
    """`` of PACKAGE``: the installed package whose code the thread ran (its first frame there),
    or nothing."""
    for frame in traceback.extract_tb(trace):
        _, found, below = frame.filename.partition("-packages/")  # site- or dist-packages
        if found:
            return f" of {below.split('/')[0]}"
    return ""


def _record(level: int, message: str) -> logging.LogRecord:
    return logging.LogRecord(__name__, level, __file__, 0, message, None, None)


def is_secondary(exc: BaseException) -> bool:
    """Whether ``exc`` is how this rank learnt that a peer failed (a lost connection, a
    collective's timeout) rather than a failure of its own."""
    try:
        from torch.distributed import DistError
    except ImportError:  # pragma: no cover - every supported torch has it
        DistError = ()
    text = f"{type(exc).__name__}: {exc}"
    return isinstance(exc, DistError) or any(mark in text for mark in SECONDARY_MARKS)


def failure_record(exc: BaseException, rank: int, failed_start: bool = False) -> dict[str, Any]:
    """What one rank's failure was, for the launcher's summary; ``failed_start``: the user's
    input failed the new run's start (:func:`peer_failed_start`)."""
    user_error = isinstance(exc, WmtpError)
    return {
        "rank": rank,
        "time": time.time(),
        "message": exc.render() if user_error else f"{type(exc).__name__}: {exc}",
        "secondary": is_secondary(exc),
        "traceback": None if user_error else "".join(traceback.format_exception(exc)),
        "exit_code": exc.exit_code if user_error else 1,
        "failed_start": failed_start,
    }


def peer_failed_start(rank: int) -> bool:
    """Whether another rank's record says the user's input failed the new run's start: then the
    stop torchrun sent ``rank`` is that failure's, which the launcher says."""
    folder = os.environ.get(FAILURES_ENV)
    for path in Path(folder).glob("rank*.json") if folder else ():
        try:
            record = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        if record.get("rank") != rank and record.get("failed_start"):
            return True
    return False


def exit_without_peers(exc: BaseException, rank: int, *, failed_start: bool = False) -> None:
    """A failing rank of a multi-process run: its record (or its message) and ``os._exit``.
    ``failed_start``: the user's input failed the new run's start, on this rank or (for an
    ``Interrupted`` one, stopped by torchrun) on a peer.

    Leaving the process group cleanly would wait for peers blocked in a collective (NCCL then
    hangs until its timeout); exiting lets torchrun see the failure and stop every other rank.
    """
    if isinstance(exc, KeyboardInterrupt | SystemExit):  # SIGTERM's: a stopping.Terminated
        signum = getattr(exc, "signum", 2)
        _flush_and_exit(128 + signum if isinstance(exc, KeyboardInterrupt) else 1)
    if isinstance(exc, Interrupted):  # every rank stopped cleanly; rank 0 says so
        if rank == 0 and not failed_start:  # else the launcher says the peer's error
            print(f"stopped: {exc.render()}", file=sys.stderr)
        mark_rank(rank, STOPPED_SUFFIX, str(exc.exit_code))
        _flush_and_exit(exc.exit_code)
    record = failure_record(exc, rank, failed_start)
    folder = os.environ.get(FAILURES_ENV)
    if folder:
        path = Path(folder) / f"rank{rank}.json"
        path.write_text(json.dumps(record, indent=1))
    elif record["traceback"]:
        print(record["traceback"], file=sys.stderr)
    else:
        print(f"error (rank {rank}): {record['message']}", file=sys.stderr)
    _flush_and_exit(record["exit_code"])


def mark_rank(rank: int, suffix: str, text: str = "") -> None:
    """Tell the launcher (``wmtp.train.launcher``) that this rank trains or stopped cleanly
    (``text``: the exit code it stops with)."""
    folder = os.environ.get(FAILURES_ENV)
    if folder:
        (Path(folder) / f"rank{rank}{suffix}").write_text(text)


def _flush_and_exit(code: int) -> None:
    sys.stderr.flush()
    sys.stdout.flush()
    os._exit(code)


__all__ = [
    "FAILURES_ENV",
    "LOG_FILE",
    "RUN_DIR_FILE",
    "STOPPED_SUFFIX",
    "TRAINING_SUFFIX",
    "RunLog",
    "exit_without_peers",
    "failure_record",
    "mark_rank",
    "peer_failed_start",
]
