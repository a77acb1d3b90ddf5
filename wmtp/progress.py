"""Progress bars that also speak where nobody watches a terminal.

rich draws a bar in place on a terminal; written to a file (``> eval.log``, ``nohup``, a CI or
batch job's log) it draws nothing until the work ends. :class:`Bar` is rich's ``Progress`` that,
off a terminal, also prints each task's state as a plain line every :data:`PLAIN_EVERY_S`
seconds and when it finishes: hours of generation or training leave a sign of life in the log.
``WMTP_PROGRESS_EVERY_S`` sets another interval. Left by an exception (a stop signal, an error),
every task not finished is said as ``(stopped)`` where it stood, on a terminal or off it.
"""

from __future__ import annotations

import os
import time
from typing import Any

from rich.progress import Progress, TaskID

PLAIN_EVERY_S = 30.0
"""How often, at most, a task's plain progress line is printed off a terminal."""


class Bar(Progress):
    """rich's ``Progress``; off a terminal, a plain line per task now and then (see the module
    docstring)."""

    def __init__(self, *columns: Any, **kwargs: Any) -> None:
        super().__init__(*columns, **kwargs)
        self._plain = not self.disable and not self.console.is_terminal
        self._every = _interval()
        self._said: dict[TaskID, float] = {}

    def __exit__(self, exc_type, exc, traceback) -> None:
        if exc_type is not None:
            self._stopped()
        super().__exit__(exc_type, exc, traceback)

    def _stopped(self) -> None:
        """Every unfinished task marked as stopped (its last state is shown, and must not read
        as work that went on or ended), with its plain line off a terminal."""
        for task in self.tasks:
            if not task.finished:
                super().update(task.id, description=f"{task.description} (stopped)")
                self._said[task.id] = float("-inf")  # said now, whatever the interval
                self._say(task.id)

    def add_task(self, description: str, *args: Any, **kwargs: Any) -> TaskID:
        task = super().add_task(description, *args, **kwargs)
        self._said[task] = time.monotonic()
        return task

    def update(self, task_id: TaskID, **kwargs: Any) -> None:
        super().update(task_id, **kwargs)
        self._say(task_id)

    def advance(self, task_id: TaskID, advance: float = 1) -> None:
        super().advance(task_id, advance)
        self._say(task_id)

    def _say(self, task_id: TaskID) -> None:
        if not self._plain or task_id not in self._said:
            return
        task, now = self._tasks[task_id], time.monotonic()
        if not task.finished and now - self._said[task_id] < self._every:
            return
        self._said[task_id] = now
        total = f"/{task.total:,.0f}" if task.total is not None else ""
        share = f" ({task.percentage:.0f}%)" if task.total else ""
        self.console.print(
            f"{task.description}: {task.completed:,.0f}{total}{share}, {task.elapsed or 0:.0f} s",
            highlight=False,
        )
        if task.finished:
            del self._said[task_id]


def _interval() -> float:
    try:
        return max(0.0, float(os.environ.get("WMTP_PROGRESS_EVERY_S", PLAIN_EVERY_S)))
    except ValueError:
        return PLAIN_EVERY_S


__all__ = ["PLAIN_EVERY_S", "Bar"]
