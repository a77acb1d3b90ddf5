"""Metrics: ``metrics.jsonl`` (one JSON object per logged step), TensorBoard, a rich progress bar.

Only rank 0 writes. Every record has ``step``; the trainer logs ``loss``, ``loss/head{k}``,
``acc/head{k}``, ``tokens/head{k}``, ``lr``, ``grad_norm``, ``tokens`` (input tokens of the step,
all ranks, padding left out), ``tokens_per_s`` (of those), ``target_tokens_per_s`` (trained targets:
prompts are masked), ``step_time_s``, ``data_time_s`` (of it, building the batches), and on a GPU
``mfu`` (input tokens x training FLOPs per token over the devices' bf16 peak) and
``peak_memory_gb`` (this rank's, since the model was built), plus whatever a pipeline adds.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

METRICS_FILE = "metrics.jsonl"


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
        self.file = (run_dir / METRICS_FILE).open("a", buffering=1)
        try:
            from torch.utils.tensorboard import SummaryWriter

            self.tb = SummaryWriter(str(run_dir / "tb"))
        except ImportError:  # tensorboard is a dependency; keep training if it is broken
            self.tb = None
        if console:
            self.progress = Progress(
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
        self.file.write(json.dumps({"step": step, **clean}) + "\n")
        if self.tb is not None:
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
            self.tb.close()
        if self.file is not None:
            self.file.close()


def read_metrics(run_dir: Path) -> list[dict]:
    """Every record of a run's metrics.jsonl, in order."""
    path = Path(run_dir) / METRICS_FILE
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
