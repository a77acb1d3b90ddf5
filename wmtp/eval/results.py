"""What ``wmtp eval`` writes for one benchmark of one checkpoint, and how it is read back.

Results of a run's checkpoint go to ``<run>/eval/step-N/<benchmark>/`` (so evaluating another
checkpoint never replaces them), those of any other model to ``<eval dir>/<benchmark>/``:

- ``samples.jsonl``: every sample: task id, ``seen`` (whether its problem trained the model),
  completion, status (passed / failed / timeout / memory), why it failed, finish reason, tokens,
  seconds in the sandbox;
- ``problems.jsonl``: per problem: ``seen``, samples, passed, pass@k per k, status counts;
- an earlier evaluation of the same folder is never overwritten: its three files move to
  ``previous/<its creation time>/`` inside the folder first (``read_eval_dir`` reads only the
  newest);
- ``summary.json``: per group of problems (``unseen``, and ``seen`` when scored): problems,
  samples per problem, pass@k per k and its standard error across problems
  (:func:`wmtp.eval.passk.pass_at_k_stderr`), status counts; then the split (how many problems
  were unseen / seen, which were scored), the training data behind the model, the decoding
  settings, the sandbox's isolation, generation speed and wall times.

Torch-free.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import re
from collections import Counter
from pathlib import Path
from typing import Any

from wmtp.atomic import write_lines, write_text
from wmtp.errors import DataError
from wmtp.eval.judges import Verdict
from wmtp.eval.passk import mean_pass_at_k, pass_at_k, pass_at_k_stderr

SAMPLES, PROBLEMS, SUMMARY = "samples.jsonl", "problems.jsonl", "summary.json"
PREVIOUS = "previous"
"""The sub-folder that keeps the earlier evaluations of a benchmark folder."""

log = logging.getLogger(__name__)
STEP_DIR = re.compile(r"^step-(\d+)$")

Verdicts = dict[str, list[Verdict]]
"""Task id -> the verdicts of its samples, in sample order."""


def write_jsonl(path: Path, rows: list[dict]) -> None:
    """``rows`` one per line, replacing ``path`` whole (``wmtp.atomic``)."""
    write_lines(path, (json.dumps(row, ensure_ascii=False) + "\n" for row in rows))


def write_json(path: Path, value: dict) -> None:
    """``value`` as JSON, replacing ``path`` whole."""
    write_text(path, json.dumps(value, indent=2) + "\n")


def group_result(verdicts: Verdicts, ks: list[int]) -> dict[str, Any]:
    """One group's entry of ``summary.json``: pass@k and its standard error per k, counts."""
    counts = [(len(vs), sum(v.passed for v in vs)) for vs in verdicts.values()]
    ks = sorted(set(ks))
    return {
        "problems": len(counts),
        "samples_per_problem": min(n for n, _ in counts),
        "pass_at_k": {str(k): mean_pass_at_k(counts, k) for k in ks},
        "pass_at_k_stderr": {str(k): pass_at_k_stderr(counts, k) for k in ks},
        "statuses": dict(Counter(v.status for vs in verdicts.values() for v in vs)),
    }


def problem_rows(verdicts: Verdicts, seen: set[str], ks: list[int]) -> list[dict]:
    """``problems.jsonl``: a row per problem."""
    rows = []
    for task, task_verdicts in verdicts.items():
        n, passed = len(task_verdicts), sum(v.passed for v in task_verdicts)
        rows.append(
            {
                "task_id": task,
                "seen": task in seen,
                "samples": n,
                "passed": passed,
                "pass_at_k": {str(k): pass_at_k(n, passed, k) for k in sorted(set(ks))},
                "statuses": dict(Counter(v.status for v in task_verdicts)),
            }
        )
    return rows


def sample_rows(samples: dict[str, list[dict]], verdicts: Verdicts, seen: set[str]) -> list[dict]:
    """``samples.jsonl``: a row per sample. ``samples[task][i]`` holds its ``completion`` (and
    optionally ``finish_reason``, ``n_tokens``)."""
    rows = []
    for task, task_samples in samples.items():
        for index, (sample, verdict) in enumerate(zip(task_samples, verdicts[task], strict=True)):
            rows.append(
                {
                    "task_id": task,
                    "sample": index,
                    "seen": task in seen,
                    "completion": sample["completion"],
                    "status": verdict.status,
                    "detail": verdict.detail,
                    "finish_reason": sample.get("finish_reason", ""),
                    "n_tokens": sample.get("n_tokens", 0),
                    "duration_s": round(verdict.duration_s, 4),
                }
            )
    return rows


def write_results(
    folder: Path,
    samples: dict[str, list[dict]],
    verdicts: Verdicts,
    *,
    groups: dict[str, list[str]],
    ks: list[int],
    info: dict[str, Any],
) -> dict[str, Any]:
    """Write the three files of one benchmark into ``folder``; the summary written.

    ``groups`` maps ``unseen`` / ``seen`` to their task ids; ``info`` is the rest of the summary
    (benchmark, model, step, split, decoding, sandbox, ...).
    """
    folder.mkdir(parents=True, exist_ok=True)
    keep_earlier(folder)
    seen = set(groups.get("seen", ()))
    write_jsonl(folder / SAMPLES, sample_rows(samples, verdicts, seen))
    write_jsonl(folder / PROBLEMS, problem_rows(verdicts, seen, ks))
    results = {
        name: group_result({task: verdicts[task] for task in tasks}, ks)
        for name, tasks in groups.items()
        if tasks
    }
    created = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
    first = {key: info[key] for key in ("benchmark", "model", "step") if key in info}
    summary = {**first, "results": results, **info, "created": created}
    write_json(folder / SUMMARY, summary)
    return summary


def keep_earlier(folder: Path) -> Path | None:
    """Move an earlier evaluation's files in ``folder`` to ``previous/<its creation time>/`` (a
    quick check must not cost an evaluation of hours); where they went, or None. Any of the
    three files there moves, a summary or not (one deleted, or a ``samples.jsonl`` of the
    user's): nothing is written over."""
    earlier = [folder / name for name in (SAMPLES, PROBLEMS, SUMMARY) if (folder / name).exists()]
    if not earlier:
        return None
    created = _created(folder / SUMMARY)
    newest = max(int(path.stat().st_mtime) for path in earlier)
    stamp = re.sub(r"[^0-9A-Za-z]", "", created) or f"mtime-{newest}"
    kept, n = folder / PREVIOUS / stamp, 1
    while kept.exists():
        kept, n = folder / PREVIOUS / f"{stamp}-{n}", n + 1
    kept.mkdir(parents=True)
    for path in earlier:
        path.replace(kept / path.name)
    when = f"created {created}" if created else f"{', '.join(p.name for p in earlier)}, no summary"
    log.warning("%s: the earlier results there (%s) moved to %s", folder, when, kept)
    return kept


def _created(summary: Path) -> str:
    """The ``created`` time a summary records; "" where there is none to read."""
    try:
        return str(json.loads(summary.read_text(encoding="utf-8")).get("created", ""))
    except (OSError, ValueError, AttributeError):
        return ""


# --------------------------------------------------------------------------- reading back


def read_summary(path: Path) -> dict[str, Any]:
    """A benchmark's ``summary.json``; a ``DataError`` naming the file when it is unreadable."""
    try:
        summary = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise DataError(f"{path}: not valid JSON: {exc.msg}") from None
    if not isinstance(summary, dict) or not isinstance(summary.get("results"), dict):
        raise DataError(f"{path}: expected a wmtp eval summary with a 'results' table")
    return summary


def read_eval_dir(eval_dir: Path) -> dict[str, dict[str, Any]]:
    """Benchmark -> summary of every ``<eval_dir>/<benchmark>/summary.json``."""
    found = sorted(eval_dir.glob(f"*/{SUMMARY}")) if eval_dir.is_dir() else []
    return {path.parent.name: read_summary(path) for path in found}


def checkpoint_results(run_dir: Path) -> dict[int, dict[str, dict[str, Any]]]:
    """Step -> benchmark -> summary, for every ``<run>/eval/step-N`` that holds results."""
    root = run_dir / "eval"
    steps = {}
    for folder in root.iterdir() if root.is_dir() else ():
        match = STEP_DIR.match(folder.name)
        if match and (found := read_eval_dir(folder)):
            steps[int(match.group(1))] = found
    return dict(sorted(steps.items()))


def scored_problems(folder: Path) -> dict[str, frozenset[str]]:
    """Group (``unseen``, ``seen``) -> the task ids of ``folder/problems.jsonl``; empty where
    the file is missing or unreadable (the summary still counts them)."""
    groups: dict[str, set[str]] = {}
    try:
        lines = (folder / PROBLEMS).read_text(encoding="utf-8").splitlines()
        rows = [json.loads(line) for line in lines if line.strip()]
    except (OSError, ValueError):
        return {}
    for row in rows:
        if isinstance(row, dict) and isinstance(row.get("task_id"), str):
            group = "seen" if row.get("seen") else "unseen"
            groups.setdefault(group, set()).add(row["task_id"])
    return {group: frozenset(tasks) for group, tasks in groups.items()}


def checkpoint_problems(
    run_dir: Path, evals: dict[int, dict[str, dict[str, Any]]]
) -> dict[int, dict[str, dict[str, frozenset[str]]]]:
    """Step -> benchmark -> group -> task ids, for every evaluation in ``evals``
    (:func:`checkpoint_results`)."""
    root = run_dir / "eval"
    return {
        step: {name: scored_problems(root / f"step-{step}" / name) for name in benchmarks}
        for step, benchmarks in evals.items()
    }


__all__ = [
    "PREVIOUS",
    "PROBLEMS",
    "SAMPLES",
    "SUMMARY",
    "checkpoint_problems",
    "checkpoint_results",
    "group_result",
    "keep_earlier",
    "read_eval_dir",
    "read_summary",
    "write_results",
]
