"""``RunLog``'s hook for a library's background thread that fails during a run (TensorBoard's
event writer on a full disk, or in a run directory removed meanwhile)."""

from __future__ import annotations

import logging
import shutil
import sys
import threading
from pathlib import Path

from wmtp.parallel.dist import DistContext
from wmtp.train.run_log import LOG_FILE, RunLog


def _failure_of_a_thread() -> threading.ExceptHookArgs:
    """What Python hands the hook for a real thread that raised."""
    caught: list[threading.ExceptHookArgs] = []
    before, threading.excepthook = threading.excepthook, caught.append
    try:
        gone = Path("/nonexistent/run/events")
        thread = threading.Thread(target=gone.write_bytes, args=(b"event",))
        thread.start()
        thread.join()
    finally:
        threading.excepthook = before
    return caught[0]


def test_a_thread_failing_during_the_run_is_one_warning_and_its_trace_in_the_log(
    tmp_path, capsys, monkeypatch
):
    # the root logger as a run starts it: no handler left by an earlier test's command (one
    # writing to that test's captured, closed stderr would fail on this test's warning)
    monkeypatch.setattr(logging.getLogger(), "handlers", [])
    failure, before = _failure_of_a_thread(), threading.excepthook
    with RunLog() as run_log:
        run_log.attach(tmp_path, DistContext())
        assert threading.excepthook is not before
        threading.excepthook(failure)
    err = capsys.readouterr().err
    logged = (tmp_path / LOG_FILE).read_text()
    assert "Traceback" not in err
    assert "WARNING a background thread (Thread-" in logged and "FileNotFoundError" in logged
    assert "Traceback" in logged  # the trace, in the log only
    assert threading.excepthook is before  # the hook before the run, once it ends


def test_a_thread_failing_as_the_run_ends_in_a_removed_directory_is_said_as_python_says_it(
    tmp_path, capsys, monkeypatch
):
    """The run ends (its directory removed under it) while a thread fails: the thread had taken
    the run's hook before the run gave Python's back, and runs it after the log closed. The hook
    says the failure as Python would; it never fails itself ("Exception in threading.excepthook"),
    nor opens the log again."""
    monkeypatch.setattr(threading, "excepthook", threading.__excepthook__)  # not pytest's
    run = tmp_path / "run"
    run.mkdir()
    failure = _failure_of_a_thread()
    with RunLog() as run_log:
        run_log.attach(run, DistContext())
        hook = threading.excepthook  # what the failing thread took
    shutil.rmtree(run)
    hook(failure)
    err = capsys.readouterr().err
    assert f"Exception in thread {failure.thread.name}" in err and "FileNotFoundError" in err
    assert not run.exists()
    assert sys.exc_info() == (None, None, None)
