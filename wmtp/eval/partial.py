"""What an interrupted evaluation keeps: each problem's samples and verdicts, once all of them are
judged, appended to ``<benchmark folder>/.partial-<key>/rank<r>.jsonl``.

The key is a hash of everything that decides a problem's samples and verdicts (the model, the
benchmark and its source, the prompt layout, the decoding settings and seed, the sandbox's
limits), so only an evaluation that would write the same samples takes them up again. Run
again after a Ctrl-C, a kill or a crash, it reads every rank's file (at any number of ranks),
decodes only the problems not in them, and writes results equal to an uninterrupted run's
(each sample's random stream depends only on the seed, its problem and its index). A line cut
short by a kill is skipped. Each rank closes its file once it has stopped checking (a finished
share, or a stop): nothing lands after, so a stop counts exactly what is kept. Rank 0 removes the
folder once the results are written. Torch-free.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from wmtp.eval.judges import Verdict

PREFIX = ".partial-"


@dataclass
class PartialResults:
    """The problems finished so far by every rank of an evaluation that wrote into ``folder``."""

    folder: Path
    rank: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)
    _closed: bool = field(default=False, repr=False)

    @classmethod
    def of(cls, benchmark_folder: Path, key: dict[str, Any], rank: int = 0) -> PartialResults:
        digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:12]
        return cls(Path(benchmark_folder) / f"{PREFIX}{digest}", rank)

    def finished(self) -> dict[str, tuple[list[dict], list[Verdict]]]:
        """Task id -> its samples and verdicts, from every rank's file."""
        found = {}
        for path in sorted(self.folder.glob("rank*.jsonl")):
            for line in path.read_text(encoding="utf-8").splitlines():
                try:
                    row = json.loads(line)
                    verdicts = [Verdict(**v) for v in row["verdicts"]]
                    found[row["task_id"]] = (row["samples"], verdicts)
                except (ValueError, KeyError, TypeError):  # a line a kill cut short
                    continue
        return found

    def others(self) -> dict[Path, int]:
        """The partial results beside these, of evaluations with other settings (or of another
        content of the benchmark file): folder -> problems finished there. None is taken up
        here; each stays for the command that stopped."""
        siblings = sorted(self.folder.parent.glob(f"{PREFIX}*"))
        found = {s: len(PartialResults(s).finished()) for s in siblings if s != self.folder}
        return {folder: done for folder, done in found.items() if done}

    def record(self, task_id: str, samples: list[dict], verdicts: list[Verdict]) -> None:
        """Append one finished problem (called from the checking threads)."""
        row = {
            "task_id": task_id,
            "samples": samples,
            "verdicts": [
                {"status": v.status, "detail": v.detail, "duration_s": v.duration_s}
                for v in verdicts
            ],
        }
        line = json.dumps(row, ensure_ascii=False) + "\n"
        with self._lock:
            if self._closed:  # its check ended after the stop was counted: not kept
                return
            self.folder.mkdir(parents=True, exist_ok=True)
            with (self.folder / f"rank{self.rank}.jsonl").open("a", encoding="utf-8") as out:
                out.write(line)

    def close(self) -> None:
        """Record nothing more: what this rank keeps is final. A check that a second Ctrl-C
        stopped waiting for still ends in its thread, later; its problem is decoded again."""
        with self._lock:
            self._closed = True

    def remove(self) -> None:
        shutil.rmtree(self.folder, ignore_errors=True)


__all__ = ["PREFIX", "PartialResults"]
