"""Metrics: ``metrics.jsonl`` (one JSON object per logged step), TensorBoard, a rich progress bar.

Only rank 0 writes. Every record has ``step``; the trainer logs ``loss``, ``loss/head{k}``,
``acc/head{k}``, ``tokens/head{k}``, ``lr``, ``grad_norm``, ``tokens`` (input tokens of the step,
all ranks, padding left out), ``row_tokens`` (the positions of their rows, padding included),
``tokens_per_s`` (of the input tokens), ``target_tokens_per_s`` (trained targets: prompts are
masked), ``step_time_s``, ``data_time_s`` (of it, the host's time building batches: the next
step's, built while the device finishes this one, and this step's where none was built ahead),
and on a GPU ``mfu`` (input tokens x training FLOPs per token over the devices' bf16 peak) and
``peak_memory_gb`` (this rank's, since the model was built), plus whatever a pipeline adds.
"""

from __future__ import annotations

import contextlib
import json
import math
import time
from pathlib import Path
from typing import Any

from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeRemainingColumn

from wmtp.atomic import write_lines
from wmtp.progress import Bar

METRICS_FILE = "metrics.jsonl"
TB_FOLDER = "tb"
"""In a run directory: the TensorBoard event files of its steps."""


def after_earlier_event_files(tb_dir: Path) -> None:
    """Wait, if need be, until a new TensorBoard event file sorts after the folder's others.

    TensorBoard reads a run's event files in name order, and a name begins with the second it
    was opened (then host, process id). A run resumed in the second its killed start opened its
    file could sort first: TensorBoard would then read the resumed steps before the earlier ones
    (the curve out of step order, and the killed run's steps after the checkpoint, which the
    purge is there to drop, kept). Waiting into the next second (at most one) keeps the files in
    the order they were written."""
    names = (p.name.split(".") for p in tb_dir.glob("events.out.tfevents.*"))
    stamps = [int(parts[3]) for parts in names if len(parts) > 3 and parts[3].isdigit()]
    if stamps and (wait := max(stamps) + 1 - time.time()) > 0:
        time.sleep(wait)


class MetricsLogger:
    """Writes records to metrics.jsonl and TensorBoard and drives the console progress bar."""

    def __init__(
        self,
        run_dir: Path,
        *,
        total_steps: int,
        start_step: int = 0,
        enabled: bool = True,
        console: bool = True,
    ):
        self.enabled = enabled
        self.file = None
        self.tb = None
        self.progress = None
        if not enabled:
            return
        self.path = run_dir / METRICS_FILE
        self.file = self.path.open("a", buffering=1)
        try:
            from torch.utils.tensorboard import SummaryWriter

            # resumed at step S: TensorBoard drops the earlier run's points after S (steps
            # trained again from the checkpoint), as read_metrics keeps a step's last record
            purge = start_step + 1 if start_step else None
            after_earlier_event_files(run_dir / TB_FOLDER)
            self.tb = SummaryWriter(str(run_dir / TB_FOLDER), purge_step=purge)
        except ImportError:  # tensorboard is a dependency; keep training if it is broken
            self.tb = None
        if console:
            self.progress = Bar(
                TextColumn("[bold]train"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("{task.fields[status]}"),
                TimeRemainingColumn(),
            )
            self.task = self.progress.add_task(
                "train", total=total_steps, completed=start_step, status=""
            )
            self.progress.start()

    def log(self, step: int, record: dict[str, Any]) -> None:
        """Write one record (``step`` added) and refresh the progress bar."""
        if not self.enabled:
            return
        clean = {
            k: (float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else v)
            for k, v in record.items()
        }
        with _writing(self.path):
            self.file.write(json.dumps({"step": step, **clean}) + "\n")
        if self.tb is not None:
            with _writing(self.path.parent / TB_FOLDER):
                for key, value in clean.items():
                    if isinstance(value, float) and math.isfinite(value):
                        self.tb.add_scalar(key, value, step)
        if self.progress is not None and "loss" in clean:
            status = f"loss {clean['loss']:.4f}  {clean.get('tokens_per_s', 0):,.0f} tok/s"
            self.progress.update(self.task, completed=step, status=status)

    def advance(self, step: int) -> None:
        if self.progress is not None:
            self.progress.update(self.task, completed=step)

    def close(self) -> None:
        if self.progress is not None:
            self.progress.stop()
        if self.tb is not None:
            with _writing(self.path.parent / TB_FOLDER):
                self.tb.close()
        if self.file is not None:
            with _writing(self.path):
                self.file.close()


@contextlib.contextmanager
def _writing(path: Path):
    """An OSError while writing ``path`` (a full disk) as one RunError saying what and where;
    the checkpoints written so far are complete and the run resumes from the newest."""
    try:
        yield
    except OSError as exc:
        from wmtp.errors import RunError
        from wmtp.train.io_errors import describe_write_error
        from wmtp.train.run_dir import resume_command

        raise RunError(
            f"cannot write {path}: {describe_write_error(exc, path.parent)}; the checkpoints "
            f"written so far are complete: continue with {resume_command(path.parent)}"
        ) from None


def read_metrics(run_dir: Path) -> list[dict]:
    """Every record of a run's metrics.jsonl, in order (:func:`read_records`; none where there
    is no file yet)."""
    path = Path(run_dir) / METRICS_FILE
    return read_records(path)[0] if path.exists() else []


def read_records(path: Path) -> tuple[list[dict], int | None]:
    """Every record of the metrics.jsonl at ``path``, in order, and the line of a torn last line
    left out (a crash while it was written; None where the file is whole). A malformed line
    before the last, bytes that are not UTF-8 included, is a DataError at its file:line. The
    one reader of the file: a resume's and ``wmtp report``'s."""
    from wmtp.errors import DataError

    text = path.read_bytes().decode("utf-8", errors="replace")  # damaged bytes: a bad line
    numbered = [(n, line) for n, line in enumerate(text.splitlines(), start=1) if line.strip()]
    records = []
    for index, (number, line) in enumerate(numbered):
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError as exc:
            if index == len(numbered) - 1:
                return records, number
            raise DataError(f"{path}:{number}: not valid JSON: {exc.msg}") from None
    return records, None


def keep_metrics_until(run_dir: Path, step: int) -> None:
    """Keep the records of ``metrics.jsonl`` up to ``step`` (a resumed run writes the later ones
    again), replacing the file in one rename: a crash meanwhile leaves the old file whole."""
    path = Path(run_dir) / METRICS_FILE
    kept = [m for m in read_metrics(run_dir) if m["step"] <= step]
    write_lines(path, (json.dumps(m) + "\n" for m in kept))
