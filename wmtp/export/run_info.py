"""What a model card says about the run behind a checkpoint: training steps and tokens, and the
latest ``wmtp eval`` results of that checkpoint. Every reader is tolerant: a missing, torn or
unfamiliar file leaves its part out of the card, never fails the export.

Evaluation results are read where ``wmtp eval`` writes them (``wmtp.eval.results``):
``<run>/eval/step-N/<benchmark>/summary.json`` for a run's checkpoint, ``<dir>/eval/<benchmark>/``
for a model directory (an export, say); the card shows pass@k on the problems the model did not
train on, with its standard error across problems.
"""

from __future__ import annotations

import dataclasses
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


@dataclass(frozen=True)
class Lineage:
    """The run and training step an export's weights come from, through any earlier export, and
    that run's training facts (``None`` where unknown: a model wmtp did not train)."""

    run: Path | None
    step: int | None
    training: TrainingSummary | None
    bases: dict = field(default_factory=dict)
    """The base model the run's LoRA adapters trained over, with its identity, as the run
    recorded it (``wmtp.train.run_dir.read_bases``): an export that keeps them apart is read
    over that base, wherever it is then (:func:`recorded_base`)."""

    def made_from(self, weights: Path) -> dict:
        """What the export's marker records (``wmtp.output_folder.made_from``): the folder it
        read, the run and step it traces back to, that run's steps and tokens, which an export of
        this export shows when the run is gone, and its LoRA base's identity."""
        training = dataclasses.asdict(self.training) if self.training else None
        run = str(self.run) if self.run else None
        made = {"checkpoint": str(weights), "run": run, "step": self.step, "training": training}
        return made | ({"bases": self.bases} if self.bases else {})


def lineage(weights: Path, run: Path | None, step: int | None) -> Lineage:
    """Of a checkpoint ``weights`` (its ``run`` and ``step``, ``None`` for a model directory); an
    earlier export (a model directory too) gives what its marker records it was made from."""
    from wmtp.export import EXPORT
    from wmtp.output_folder import made_from

    earlier = made_from(weights, EXPORT)
    if run is None and isinstance(earlier.get("run"), str):
        run = Path(earlier["run"])
    recorded = _recorded_training(earlier.get("training"))
    training = recorded or training_summary(run, step)
    return Lineage(run, step, training, _recorded_bases(weights))


def recorded_base(weights: Path, key: str) -> dict | None:
    """The identity (``wmtp.models.descriptions.base_identity``) of the base model that the LoRA
    adapters in ``weights`` trained over as ``key`` (``model.<role>.path``): recorded by their
    run for its checkpoint (``inputs.json``), carried in an export's marker. None where none was
    recorded (a run of an older wmtp, adapters copied elsewhere) or it cannot be compared."""
    from wmtp.models.descriptions import recorded_identity

    entry = _recorded_bases(weights).get(key)
    return recorded_identity(entry.get("identity")) if isinstance(entry, dict) else None


def _recorded_bases(weights: Path) -> dict:
    """``model.<role>.path`` -> the base recorded for ``weights``: an export's marker's, else the
    run's of a checkpoint in it (``<run>/checkpoints/step-N``)."""
    from wmtp.export import EXPORT
    from wmtp.models.locate import CHECKPOINTS
    from wmtp.output_folder import made_from
    from wmtp.train.run_dir import read_bases

    earlier = made_from(weights, EXPORT)
    if earlier:
        bases = earlier.get("bases")
        return bases if isinstance(bases, dict) else {}
    if weights.parent.name == CHECKPOINTS:
        return read_bases(weights.parent.parent)
    return {}


def _recorded_training(record) -> TrainingSummary | None:
    """The training facts an earlier export recorded; ``None`` for none, or another wmtp's."""
    fields = {f.name for f in dataclasses.fields(TrainingSummary)}
    if not isinstance(record, dict) or set(record) != fields:
        return None
    numbers = (record["steps"], record["logged_steps"], record["tokens"] or 0)
    if not all(isinstance(n, int) for n in numbers):
        return None
    return TrainingSummary(**record)


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
    if "tokens_seen" in by_step.get(step, {}):  # the trainer's own running count
        return TrainingSummary(step, int(by_step[step]["tokens_seen"]), True, len(by_step))
    tokens = [int(r["tokens"]) for r in by_step.values()]
    exact = set(by_step) == set(range(1, step + 1))
    total = sum(tokens) if exact else round(sum(tokens) / len(tokens) * step)
    return TrainingSummary(step, total, exact, len(by_step))


def eval_results(weights: Path, run: Path | None, step: int | None) -> list[EvalResult]:
    """The evaluation of the checkpoint ``weights`` (see the module docstring), unseen problems."""
    from wmtp.errors import DataError
    from wmtp.eval.results import SUMMARY, read_summary

    folder = run / "eval" / f"step-{step}" if run is not None else weights / "eval"
    found = []
    for path in sorted(folder.glob(f"*/{SUMMARY}")) if folder.is_dir() else []:
        try:
            unseen = read_summary(path)["results"].get("unseen")
        except (DataError, OSError):
            continue  # a torn or foreign file: left out of the card
        if isinstance(unseen, dict) and isinstance(unseen.get("pass_at_k"), dict):
            found.append(_result(path, unseen))
    return found


def _result(path: Path, unseen: dict) -> EvalResult:
    stderr = unseen.get("pass_at_k_stderr", {})
    details = {"unseen problems": unseen.get("problems"), "n": unseen.get("samples_per_problem")}
    errors = ", ".join(f"pass@{k} {100 * v:.1f}%" for k, v in stderr.items() if v is not None)
    if errors:  # one problem has no spread to measure
        details["± s.e."] = errors
    return EvalResult(path.parent.name, dict(unseen["pass_at_k"]), path, details)


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


__all__ = [
    "EvalResult",
    "Lineage",
    "TrainingSummary",
    "eval_results",
    "lineage",
    "recorded_base",
    "training_summary",
]
