"""What a model card says about the run behind a checkpoint: training steps and tokens, and the
latest ``wmtp eval`` results of that checkpoint. Every reader is tolerant: a missing, torn or
unfamiliar file leaves its part out of the card, never fails the export.

Evaluation results are looked for where ``wmtp eval`` writes them, newest layout first:
``<run>/eval/step-N/<benchmark>/summary.json`` (one per benchmark), then ``<run>/eval/summary.json``
when the checkpoint it names is this one; for a model directory (an export, say)
``<dir>/eval/<benchmark>/summary.json``, then ``<dir>/eval/summary.json``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

METRICS_FILE = "metrics.jsonl"


@dataclass(frozen=True)
class TrainingSummary:
    """Steps and input tokens (padding left out, all ranks) up to the exported checkpoint."""

    steps: int
    tokens: int | None
    """Summed over the logged steps when every step was logged, else estimated."""
    tokens_exact: bool
    logged_steps: int


@dataclass(frozen=True)
class EvalResult:
    benchmark: str
    pass_at_k: dict[str, float]
    file: Path
    details: dict = field(default_factory=dict)
    """Problems, samples per problem, settings, as the summary gives them."""


def training_summary(run: Path | None, step: int | None) -> TrainingSummary | None:
    """From ``<run>/metrics.jsonl``: the records up to ``step`` (a repeated step after a resume
    counts once, its last record)."""
    if run is None or step is None:
        return None
    by_step = {
        r["step"]: r
        for r in _json_lines(run / METRICS_FILE)
        if isinstance(r.get("step"), int) and r["step"] <= step and "tokens" in r
    }
    if not by_step:
        return TrainingSummary(step, None, False, 0)
    tokens = [int(r["tokens"]) for r in by_step.values()]
    exact = set(by_step) == set(range(1, step + 1))
    total = sum(tokens) if exact else round(sum(tokens) / len(tokens) * step)
    return TrainingSummary(step, total, exact, len(by_step))


def eval_results(weights: Path, run: Path | None, step: int | None) -> list[EvalResult]:
    """The latest evaluation of the checkpoint ``weights`` (see the module docstring)."""
    per_benchmark = run / "eval" / f"step-{step}" if run is not None else weights / "eval"
    if run is None or step is not None:
        files = sorted(per_benchmark.glob("*/summary.json"))
        found = [r for f in files for r in _results(f, default_name=f.parent.name)]
        if found:
            return found
    summary = (run or weights) / "eval" / "summary.json"
    data = _json(summary)
    if data is None or (run is not None and not _names(data.get("model"), weights)):
        return []
    return _results(summary)


def _names(model, weights: Path) -> bool:
    """Whether a summary's ``model`` is the checkpoint ``weights``."""
    if not isinstance(model, str):
        return False
    return Path(model).resolve() == weights.resolve() or model.endswith(
        f"{weights.parent.name}/{weights.name}"
    )


def _results(file: Path, default_name: str | None = None) -> list[EvalResult]:
    data = _json(file)
    if not isinstance(data, dict):
        return []
    entries = data.get("benchmarks")
    if not isinstance(entries, dict):
        entries = {data.get("benchmark", default_name): data}
    out = []
    for name, entry in entries.items():
        if isinstance(entry, dict) and isinstance(entry.get("pass_at_k"), dict) and name:
            details = {k: entry[k] for k in ("problems", "samples_per_problem") if k in entry}
            settings = entry.get("settings")
            if isinstance(settings, dict):
                details.update({k: settings[k] for k in ("temperature", "dtype") if k in settings})
            out.append(EvalResult(str(name), dict(entry["pass_at_k"]), file, details))
    return out


def _json(file: Path):
    try:
        return json.loads(file.read_text())
    except (OSError, json.JSONDecodeError, UnicodeDecodeError):
        return None


def _json_lines(file: Path) -> list[dict]:
    try:
        lines = file.read_text().splitlines()
    except (OSError, UnicodeDecodeError):
        return []
    records = []
    for line in lines:
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue  # a torn last line of a run still writing
        if isinstance(record, dict):
            records.append(record)
    return records


__all__ = ["EvalResult", "TrainingSummary", "eval_results", "training_summary"]
