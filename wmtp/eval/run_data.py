"""What a run directory recorded: its scalar series, its recipe, its evaluations per checkpoint.

A run directory (``runs/<experiment>/<id>/``) holds TensorBoard event files, ``metrics.jsonl``
(one JSON object a line with a ``step`` and scalar values, nested objects flattened with ``/``),
``recipe.toml`` and ``eval/step-N/<benchmark>/summary.json`` (``wmtp.eval.results``). Both scalar
sources are read and merged; where a tag is in both, ``metrics.jsonl`` wins (it is the one
written without loss of precision). A benchmark's evaluations whose problems came from different
sources (the built-in HumanEval, a local ``humaneval=FILE``, two files, one file edited in place)
are told apart by the digest of the file each read, not by the path that named it
(:func:`read_runs`). Torch-free.
"""

from __future__ import annotations

import json
import math
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from wmtp.errors import DataError, RunError
from wmtp.eval.results import checkpoint_problems, checkpoint_results

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

Series = list[tuple[int, float]]
"""(step, value) pairs sorted by step."""


@dataclass
class RunRecord:
    """Everything ``wmtp report`` plots or tabulates about one run."""

    path: Path
    label: str
    scalars: dict[str, Series] = field(default_factory=dict)
    settings: dict[str, Any] = field(default_factory=dict)
    """A few recipe values worth a line: pipeline, weighting kind, n_future_tokens, ..."""
    evals: dict[int, dict[str, dict[str, Any]]] = field(default_factory=dict)
    """Step -> benchmark -> the ``summary.json`` of that checkpoint's evaluation. The benchmark is
    its name, or ``name (source)`` where :func:`read_runs` found that name on several sources."""
    notes: list[str] = field(default_factory=list)
    """What the report should say about this run's files (an old layout, ...)."""
    heldout_data: dict[str, Any] | None = None
    """The recipe values that decide its held-out rows and their tokens (``heldout_data``);
    None without a recipe. Held-out cross-entropies compare only where these agree."""
    eval_problems: dict[int, dict[str, dict[str, frozenset[str]]]] = field(default_factory=dict)
    """Step -> benchmark -> group (``unseen``, ``seen``) -> the task ids scored there."""
    unfinished: tuple[int, int] | None = None
    """(step, planned steps) where the newest checkpoint is short of the run's plan: it was
    stopped, or is training still (:func:`training_progress`)."""
    checkpointed_tokens: tuple[int, int] | None = None
    """(step, tokens seen) of the newest checkpoint (:func:`checkpointed_tokens`): a run stopped
    by a signal checkpoints a step it may not have logged, so its count is the run's last."""

    @property
    def pipeline(self) -> str | None:
        return self.settings.get("experiment.pipeline")


def _flatten(prefix: str, value: Any, out: dict[str, float]) -> None:
    if isinstance(value, dict):
        for key, inner in value.items():
            _flatten(f"{prefix}/{key}" if prefix else str(key), inner, out)
    elif isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
        out[prefix] = float(value)


def read_metrics_jsonl(path: Path, notes: list[str] | None = None) -> dict[str, Series]:
    """Scalar series of a ``metrics.jsonl``; lines without a ``step`` are skipped (headers). A
    step logged twice (a resume writes the steps after its checkpoint again) keeps its last
    value. Read as a resume reads it (``wmtp.train.metrics.read_records``): a torn last line (a
    crash while it was written) is left out and said in ``notes``; a malformed line before it
    (bytes that are not UTF-8 included) is a ``DataError`` at its line."""
    from wmtp.train.metrics import read_records

    series: dict[str, dict[int, float]] = {}
    rows, torn = read_records(path)
    if torn is not None and notes is not None:
        notes.append(
            f"metrics.jsonl: its last line ({torn}) is torn (the run stopped while writing it) "
            "and is left out"
        )
    for row in rows:
        if not isinstance(row, dict) or not isinstance(row.get("step"), int):
            continue
        values: dict[str, float] = {}
        _flatten("", {k: v for k, v in row.items() if k != "step"}, values)
        for tag, value in values.items():
            series.setdefault(tag, {})[row["step"]] = value
    return {tag: sorted(points.items()) for tag, points in series.items()}


def read_tensorboard(run_dir: Path) -> dict[str, Series]:
    """Scalar series of the run's TensorBoard event files (``tb/``): never of a folder below
    it, which is not this run's (an experiment's folder holds its runs')."""
    from wmtp.train.metrics import TB_FOLDER

    files = sorted((run_dir / TB_FOLDER).glob("events.out.tfevents.*"))
    if not files:
        return {}
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    series: dict[str, dict[int, float]] = {}
    for file in files:
        accumulator = EventAccumulator(str(file), size_guidance={"scalars": 0})
        accumulator.Reload()
        for tag in accumulator.Tags().get("scalars", []):
            points = series.setdefault(tag, {})
            for event in accumulator.Scalars(tag):
                if math.isfinite(event.value):
                    points[event.step] = float(event.value)
    return {tag: sorted(points.items()) for tag, points in series.items()}


SETTING_KEYS = (
    ("experiment", "pipeline"),
    ("experiment", "seed"),
    ("weighting", "kind"),
    ("model", "policy", "n_future_tokens"),
    ("training", "lr"),
    ("training", "max_steps"),
    ("data", "kind"),
    ("data", "path"),
    ("data", "split", "heldout_fraction"),
)


def read_recipe(recipe_path: Path) -> dict[str, Any]:
    try:
        return tomllib.loads(recipe_path.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as exc:
        raise DataError(f"{recipe_path}: not valid TOML: {exc}") from None


HELDOUT_DATA_KEYS = ("kind", "path", "template", "max_length", "truncate", "split")
"""``[data]`` keys that decide the held-out rows and their tokens (not ``packing``,
``sampling``, ``pairs``, ``n_samples``: they choose training rows; not the built-in dataset's
``cache_dir``: its builder splits with a fixed seed wherever it is)."""


def heldout_data(recipe: dict[str, Any]) -> dict[str, Any] | None:
    """What decides a run's held-out rows and their tokens, by dotted key: the dataset, its
    template and length limit, the split, the tokenizer, and ``experiment.seed`` where it draws
    the split (a JSONL file split by ``heldout_fraction``). None without a ``[data]`` table."""
    data = recipe.get("data")
    if not isinstance(data, dict):
        return None
    found = {f"data.{key}": data.get(key) for key in HELDOUT_DATA_KEYS}
    found["tokenizer"] = recipe.get("tokenizer")
    split = data.get("split") if isinstance(data.get("split"), dict) else {}
    if data.get("kind") == "jsonl" and not split.get("heldout_path"):
        experiment = recipe.get("experiment")
        found["experiment.seed"] = experiment.get("seed") if isinstance(experiment, dict) else None
    return found


def read_settings(recipe_path: Path) -> dict[str, Any]:
    """The ``SETTING_KEYS`` of a resolved recipe, by dotted key (missing keys are left out)."""
    return settings_of(read_recipe(recipe_path))


def settings_of(recipe: dict[str, Any]) -> dict[str, Any]:
    settings = {}
    for keys in SETTING_KEYS:
        value: Any = recipe
        for key in keys:
            value = value.get(key) if isinstance(value, dict) else None
        if value is not None:
            settings[".".join(keys)] = value
    return settings


def run_label(run_dir: Path) -> str:
    """``<experiment>/<run id>``: the last two parts of a ``runs/<experiment>/<id>`` path."""
    return f"{run_dir.parent.name}/{run_dir.name}" if run_dir.parent.name else run_dir.name


def read_run(run_dir: str | Path) -> RunRecord:
    """Read one run directory; a ``RunError`` when it holds nothing ``wmtp report`` can use."""
    path = Path(run_dir)
    if not path.is_dir():
        raise RunError(f"{path}: not a run directory")
    record = RunRecord(path=path, label=run_label(path.resolve()))
    record.scalars = read_tensorboard(path)
    if (path / "metrics.jsonl").is_file():
        record.scalars.update(read_metrics_jsonl(path / "metrics.jsonl", record.notes))
    if (path / "recipe.toml").exists():
        if not (path / "recipe.toml").is_file():
            raise RunError(f"{path / 'recipe.toml'}: a folder, not the recipe the run ran with")
        recipe = read_recipe(path / "recipe.toml")
        record.settings, record.heldout_data = settings_of(recipe), heldout_data(recipe)
    record.evals = checkpoint_results(path)
    record.eval_problems = checkpoint_problems(path, record.evals)
    state = newest_trainer_state(path)
    progress = training_progress(state)
    if progress is not None and progress[0] < progress[1]:
        record.unfinished = progress
    record.checkpointed_tokens = checkpointed_tokens(state)
    if (path / "eval" / "summary.json").is_file():
        record.notes.append(
            "eval/summary.json is an older wmtp's layout and is not read: evaluate again "
            "(results now go to eval/step-N/<benchmark>/)"
        )
    if not record.scalars and not record.evals:
        raise RunError(f"{path}: {_nothing_to_report(path)}")
    return record


def newest_trainer_state(run_dir: Path) -> dict[str, Any]:
    """The ``trainer.json`` of the run's newest checkpoint; empty without a checkpoint, or where
    it does not read."""
    from wmtp.models.locate import TRAINER_STATE, step_dirs

    checkpoints = step_dirs(run_dir)
    try:
        state = json.loads((checkpoints[-1] / TRAINER_STATE).read_text()) if checkpoints else {}
    except (OSError, ValueError):
        return {}
    return state if isinstance(state, dict) else {}


def training_progress(state: dict[str, Any]) -> tuple[int, int] | None:
    """(step, planned steps) of a checkpoint's ``trainer.json`` (:func:`newest_trainer_state`);
    None without one, or one of an older wmtp, which recorded no plan."""
    return _ints(state, "step", "max_steps")


def checkpointed_tokens(state: dict[str, Any]) -> tuple[int, int] | None:
    """(step, tokens seen) of a checkpoint's ``trainer.json``: the trainer's running count of
    input tokens (the ``tokens_seen`` it logs) at the checkpoint's step."""
    return _ints(state, "step", "tokens_seen")


def _ints(state: dict[str, Any], *keys: str) -> tuple[int, int] | None:
    values = tuple(state.get(key) for key in keys)
    ok = all(isinstance(v, int) and not isinstance(v, bool) for v in values)
    return values if ok else None  # type: ignore[return-value]


def _nothing_to_report(path: Path) -> str:
    """Why ``path`` is no run to report on: a folder of runs (``runs/<experiment>``), naming one
    to give instead, or a folder without a run's records."""
    from wmtp.models.locate import CHECKPOINTS

    if path.parent.name == CHECKPOINTS:
        return (
            f"a checkpoint of the run {path.parent.parent}, not a run: give the run (its "
            "evaluated steps are all reported; --step N picks the one the headline shows)"
        )
    runs = sorted(p for p in path.iterdir() if (p / "recipe.toml").is_file() and not p.is_symlink())
    if not runs:
        return "no metrics.jsonl, TensorBoard events or eval/step-N/ results to report on"
    newest = path / "latest" if (path / "latest").is_dir() else runs[-1]
    count = f"{len(runs)} run" + ("s" if len(runs) > 1 else "")
    return f"a folder of {count}, not a run: name one, such as {newest}"


BUILT_IN = "built-in"
"""The source of an evaluation of a benchmark's built-in copy (HumanEval's, no ``=PATH``)."""


def benchmark_source(summary: dict[str, Any]) -> str:
    """Where an evaluation's problems came from, as the user named it: the file its
    ``evaluation.benchmarks`` entry named (``humaneval=PATH``, the path as given), or
    :data:`BUILT_IN`. Shown, never compared: :func:`source_digest` tells sources apart."""
    settings = summary.get("settings")
    source = settings.get("source") if isinstance(settings, dict) else None
    return str(source) if source else BUILT_IN


def source_digest(summary: dict[str, Any]) -> str | None:
    """The SHA-256 of the benchmark file an evaluation read, as it recorded it; None where it
    recorded none (an older wmtp's evaluation)."""
    settings = summary.get("settings")
    digest = settings.get("source_sha256") if isinstance(settings, dict) else None
    return str(digest) if digest else None


def benchmark_name(key: str, summary: dict[str, Any]) -> str:
    """The benchmark's name of an evaluation keyed ``key`` in ``RunRecord.evals``."""
    return str(summary.get("benchmark") or key)


def evaluations(runs: list[RunRecord]) -> Iterator[tuple[str, dict[str, Any]]]:
    """(benchmark name, summary) of every evaluation of ``runs``."""
    for run in runs:
        for benchmarks in run.evals.values():
            for key, summary in benchmarks.items():
                yield benchmark_name(key, summary), summary


@dataclass(frozen=True)
class SourceIndex:
    """Which source of problems each evaluation of ``runs`` read, by content: the digest of the
    benchmark file it recorded, whatever path named the file (relative or absolute, a link, a
    copy); a file edited in place is another source. An evaluation that recorded no digest (an
    older wmtp's) takes the one digest that evaluations naming the same path recorded, where
    they agree; else it is told apart by that path alone, as older reports did."""

    digests: dict[tuple[str, str], set[str]]
    """(benchmark name, path as given) -> the digests recorded by evaluations that named it."""

    @classmethod
    def of(cls, runs: list[RunRecord]) -> SourceIndex:
        digests: dict[tuple[str, str], set[str]] = {}
        for name, summary in evaluations(runs):
            digest = source_digest(summary)
            if digest:
                digests.setdefault((name, benchmark_source(summary)), set()).add(digest)
        return cls(digests)

    def identity(self, name: str, summary: dict[str, Any]) -> str:
        """``sha256:<hex>`` of the evaluation's source, else ``path:<path as given>``."""
        digest = source_digest(summary)
        if digest is None:
            agreed = self.digests.get((name, benchmark_source(summary)), set())
            digest = next(iter(agreed)) if len(agreed) == 1 else None
        return f"sha256:{digest}" if digest else f"path:{benchmark_source(summary)}"


def sources_by_name(runs: list[RunRecord]) -> dict[str, dict[str, set[str]]]:
    """Benchmark name -> its sources in ``runs`` (:meth:`SourceIndex.identity`) -> the paths as
    given that named each."""
    index = SourceIndex.of(runs)
    found: dict[str, dict[str, set[str]]] = {}
    for name, summary in evaluations(runs):
        paths = found.setdefault(name, {}).setdefault(index.identity(name, summary), set())
        paths.add(benchmark_source(summary))
    return found


def source_labels(sources: dict[str, set[str]]) -> dict[str, str]:
    """How the report names each of one benchmark's ``sources`` (identity -> paths): the paths
    that named it (``a.jsonl = /data/a.jsonl``: one file), and where one of them also named
    another source (a file edited in place), its digest's first digits or ``no digest``."""
    labels = {}
    for identity, paths in sources.items():
        label = " = ".join(sorted(paths))
        if any(paths & other for i, other in sources.items() if i != identity):
            kind, _, value = identity.partition(":")
            label += f" @ sha256 {value[:8]}" if kind == "sha256" else " @ no digest"
        labels[identity] = label
    return labels


def undigested(runs: list[RunRecord]) -> dict[str, int]:
    """Benchmark name -> its evaluations in ``runs`` that recorded no digest of their file."""
    found: dict[str, int] = {}
    for name, summary in evaluations(runs):
        if source_digest(summary) is None:
            found[name] = found.get(name, 0) + 1
    return found


def read_runs(run_dirs: list[str | Path]) -> list[RunRecord]:
    """Every run of ``run_dirs`` (:func:`read_run`). A benchmark name evaluated on more than one
    source across them (:class:`SourceIndex`: a local ``humaneval=FILE`` at one step, the
    built-in HumanEval at another) is keyed ``name (source)`` in each run's ``evals``
    (:func:`source_labels`): every source its own curve, column and row, never one line
    through another file's problems."""
    _refuse_repeated(run_dirs)
    runs = [read_run(path) for path in run_dirs]
    index = SourceIndex.of(runs)
    labels = {
        name: source_labels(sources)
        for name, sources in sources_by_name(runs).items()
        if len(sources) > 1
    }
    for run in runs:
        _key_by_source(run, index, labels)
    return runs


def _refuse_repeated(run_dirs: list[str | Path]) -> None:
    """A ``RunError`` where two of ``run_dirs`` are one run (``latest`` and its id, a link): it
    would be drawn twice, as two runs."""
    seen: dict[Path, str | Path] = {}
    for given in run_dirs:
        key = Path(given).resolve()
        if key in seen:
            raise RunError(f"{seen[key]} and {given} are the same run, given twice: name it once")
        seen[key] = given


def shown_source(key: str, summary: dict[str, Any]) -> str:
    """The source of the evaluation keyed ``key`` in ``RunRecord.evals``, as the report names
    it: the label :func:`read_runs` keyed it by, else the path as given (or ``built-in``)."""
    name = benchmark_name(key, summary)
    if key.startswith(f"{name} (") and key.endswith(")"):
        return key[len(name) + 2 : -1]
    return benchmark_source(summary)


def _key_by_source(run: RunRecord, index: SourceIndex, labels: dict[str, dict[str, str]]) -> None:
    """Key the evaluations (and their scored problems) of the names in ``labels`` by source."""
    for step, benchmarks in list(run.evals.items()):
        keys = {}
        for key, summary in benchmarks.items():
            name = benchmark_name(key, summary)
            own = labels.get(name)
            keys[key] = f"{name} ({own[index.identity(name, summary)]})" if own else key
        run.evals[step] = {keys[key]: summary for key, summary in benchmarks.items()}
        problems = run.eval_problems.get(step, {})
        run.eval_problems[step] = {keys.get(key, key): ids for key, ids in problems.items()}


__all__ = [
    "BUILT_IN",
    "RunRecord",
    "Series",
    "SourceIndex",
    "benchmark_name",
    "benchmark_source",
    "evaluations",
    "read_metrics_jsonl",
    "read_run",
    "read_runs",
    "shown_source",
    "source_digest",
    "source_labels",
    "sources_by_name",
    "undigested",
]
