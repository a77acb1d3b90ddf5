"""``wmtp report``: figures and a markdown report that compare runs.

Writes into the output folder one PNG per question (``wmtp.eval.questions``: next-token
cross-entropy on the same footing, each head's cross-entropy, the weighting's statistics, pass@k
by checkpoint, training speed, the critic's ranking) and ``report.md``: a headline table (run,
pipeline, heads trained, tokens seen, final held-out cross-entropy, pass@k ± standard error on
unseen problems at the step it picked), the figures, and per run the details (settings, losses
per head, every evaluation). pass@k comes from each run's newest evaluated checkpoint, or from
``step`` when given; the table says which. Under the table, a warning where the held-out
cross-entropies were measured on different held-out data, or the headline pass@k come from
evaluations that decoded differently or scored other unseen problems. A benchmark evaluated on
several sources (the built-in HumanEval and a local ``humaneval=FILE``, two files, a file edited
in place) is told apart by source (``humaneval (FILE)``: its own column, panel and row), and a
note says so; sources are told apart by the digest of the file each evaluation read, not by the
path that named it (``wmtp.eval.run_data.SourceIndex``). A note says where evaluations written
before digests were recorded are told apart by path instead.

The folder is written whole (``wmtp.output_folder``, as :data:`REPORT`): a new or empty folder, or
an earlier report, which a new one replaces unless a user added or edited files in it since; one
report writes it at a time, and one that fails or is stopped leaves the folder as it was.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from wmtp.errors import RunError
from wmtp.eval.figures import draw
from wmtp.eval.questions import (
    QUESTIONS,
    Shown,
    ce_series,
    evaluated_ks,
    evaluation_differences,
    heads_logged,
    heldout_differences,
    pipeline_of,
    step_size_differences,
    trains_policy,
)
from wmtp.eval.run_data import (
    RunRecord,
    benchmark_name,
    read_runs,
    shown_source,
    source_labels,
    sources_by_name,
    undigested,
)
from wmtp.eval.table import percent, problems_cell
from wmtp.output_folder import Product, check_output, staged_output

HEADLINE_KS = ("1", "10")

REPORT = Product("report", "wmtp_report.json", RunError, replacing_needs_force=False)
"""What ``wmtp report`` writes: an earlier report is replaced without ``--force`` (it is made from
the runs again at will), and only while it holds just what it wrote."""


@dataclass(frozen=True)
class Report:
    """What ``write_report`` wrote and which evaluation step each run's headline uses."""

    files: list[Path]
    steps: dict[str, int | None]
    """Run label -> the evaluated step in the headline (None: not evaluated there)."""
    said: dict[str, str]
    """Run label -> where its headline pass@k comes from, in words."""


def display_labels(runs: list[RunRecord]) -> list[str]:
    """The experiment name where it is unique among ``runs``, else ``experiment/run id``."""
    experiments = [run.label.split("/")[0] for run in runs]
    labels = [
        e if experiments.count(e) == 1 else run.label
        for e, run in zip(experiments, runs, strict=True)
    ]
    return [
        f"{label} ({i + 1})" if labels.count(label) > 1 else label for i, label in enumerate(labels)
    ]


def picked_step(run: RunRecord, step: int | None) -> int | None:
    """The evaluated step the headline shows: ``step`` (None where the run has no evaluation
    there), else the run's newest."""
    if step is not None:
        return step if step in run.evals else None
    return max(run.evals, default=None)


def step_words(run: RunRecord, picked: int | None, wanted: int | None) -> str:
    """Where a run's headline pass@k comes from: ``from step 120 (newest evaluated)``, ..."""
    if not trains_policy(run):
        return "none (no policy trained)"
    if picked is not None:
        return f"from step {picked}" + (" (newest evaluated)" if wanted is None else "")
    if wanted is not None and run.evals:
        return f"not evaluated at step {wanted} (evaluated: {', '.join(map(str, run.evals))})"
    return "not evaluated" + (f" at step {wanted}" if wanted is not None else "")


def heads_trained(run: RunRecord) -> str:
    """Heads of the model the run trained: the pipeline's fixed number (ntp, ref_tuning: 1),
    else the recipe's ``n_future_tokens``; ``–`` for a run that trains no policy."""
    info = pipeline_of(run)
    if info is not None and info.trains != "policy":
        return f"– (trains model.{info.trains})" if info.trains else "– (trains nothing)"
    if info is not None and info.heads:
        return str(info.heads)
    heads = run.settings.get("model.policy.n_future_tokens")
    return str(heads) if heads is not None else str(heads_logged(run) or "?")


def tokens_seen(run: RunRecord) -> str:
    """Input tokens trained on: the trainer's running count (``tokens_seen``) at the run's last
    step, logged or checkpointed (a run stopped by a signal checkpoints a step it may not have
    logged); for runs without it, the sum of ``tokens`` when every step was logged, else the
    mean logged step's times the last step (marked ``≈``)."""
    counted = run.scalars.get("tokens_seen", [])
    saved = run.checkpointed_tokens
    if saved is not None and (not counted or saved[0] >= counted[-1][0]):
        return _count(saved[1])
    if counted:
        return _count(counted[-1][1])
    points = run.scalars.get("tokens", [])
    if not points:
        return "–"
    last = points[-1][0]
    if [s for s, _ in points] == list(range(1, last + 1)):
        return _count(sum(v for _, v in points))
    return "≈" + _count(sum(v for _, v in points) / len(points) * last)


def _count(n: float) -> str:
    for unit, size in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if n >= size:
            return f"{n / size:.3g}{unit}"
    return f"{n:.0f}"


def final_heldout_ce(run: RunRecord) -> str:
    points = ce_series(run, 1, "heldout")
    return f"{points[-1][1]:.3f} (step {points[-1][0]})" if points else "–"


def _pass_cell(run: RunRecord, step: int | None, benchmark: str, k: str) -> str:
    if not trains_policy(run):
        return "– (no policy)"
    result = run.evals.get(step, {}).get(benchmark, {}).get("results", {}).get("unseen")
    if step is None or result is None:
        return "not evaluated"
    if k not in result["pass_at_k"]:
        return "–"
    return percent(result["pass_at_k"][k], result.get("pass_at_k_stderr", {}).get(k))


def _evaluated_cell(run: RunRecord, step: int | None, wanted: int | None) -> str:
    if step is None:
        return step_words(run, None, wanted) if wanted is not None and run.evals else "–"
    parts = []
    for name, summary in run.evals[step].items():
        unseen = summary["results"].get("unseen", {})
        decoding = summary.get("decoding", {})
        parts.append(
            f"{name}: {unseen.get('problems', 0)} unseen problems, n = "
            f"{decoding.get('n_samples', '?')}, T = {decoding.get('temperature', '?')}"
        )
    newest = " (newest)" if wanted is None and len(run.evals) > 1 else ""
    return f"step {step}{newest}: " + "; ".join(parts)


def _table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(c.replace("|", "\\|") for c in row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def headline(shown: list[Shown], steps: dict[str, int | None], wanted: int | None) -> str:
    """The headline table: one row per run."""
    benchmarks = evaluated_ks(shown)
    columns = [(b, k) for b, ks in benchmarks.items() for k in ks if k in HEADLINE_KS]
    columns = columns or [(b, ks[0]) for b, ks in benchmarks.items()] or [("", "k")]
    header = ["run", "pipeline", "heads trained", "tokens seen", "held-out CE (nats/token)"]
    header += [f"{b} pass@{k} (%)".strip() for b, k in columns] + ["evaluated"]
    rows = []
    for s in shown:
        step = steps[s.label]
        row = [s.label, s.run.pipeline or "?", heads_trained(s.run), tokens_seen(s.run)]
        row += [final_heldout_ce(s.run)]
        row += [_pass_cell(s.run, step, b, k) for b, k in columns]
        rows.append([*row, _evaluated_cell(s.run, step, wanted)])
    return _table(header, rows)


HEADLINE_NOTES = (
    "Held-out CE: head 1's cross-entropy on the run's held-out split with every token weighted 1 "
    "(comparable across pipelines when the runs share their data and split), at the last step "
    "it was measured. pass@k: on problems the model never trained on, ± one standard error "
    "across problems. Heads trained: the heads of the trained model (ntp and ref_tuning train "
    "one, whatever model.policy.n_future_tokens says). Tokens seen: input tokens of every "
    "training step (≈: estimated from the logged steps)."
)


def comparability(shown: list[Shown], steps: dict[str, int | None]) -> list[str]:
    """Warnings under the headline table: runs whose steps train different numbers of tokens,
    held-out cross-entropies measured on different data, and headline pass@k of evaluations that decoded differently or scored other problems."""
    warnings = [unfinished_runs(shown), step_size_differences(shown), heldout_differences(shown)]
    for benchmark in evaluated_ks(shown):
        picked = [(s.label, s.run, steps[s.label]) for s in shown if steps[s.label] is not None]
        warnings.append(evaluation_differences(picked, benchmark))
    return [f"**Warning: {w}.**" for w in warnings if w]


def unfinished_runs(shown: list[Shown]) -> str | None:
    """The runs whose newest checkpoint is short of their planned steps (stopped, or training
    still), beside runs that may have finished: their figures are of fewer steps."""
    short = [
        f"{s.label} trained {s.run.unfinished[0]:,} of its {s.run.unfinished[1]:,} steps"
        for s in shown
        if s.run.unfinished is not None
    ]
    if not short:
        return None
    which = "its" if len(short) == 1 else "their"
    return (
        "; ".join(short) + " (stopped, or training still: `wmtp run --resume RUN` continues "
        f"a stopped run), so {which} figures are of fewer steps than planned"
    )


def source_notes(shown: list[Shown]) -> list[str]:
    """A note per benchmark name whose evaluations came from several sources (keyed apart by
    ``read_runs``: by the content of their files): their problems differ, so each source has its
    own column, panel and row. And one per name whose evaluations recorded no digest of their
    file, since the report then goes by the path that named it."""
    runs = [s.run for s in shown]
    several = [
        f"**Note: {name} was evaluated on {len(found)} sources of problems "
        f"({', '.join(sorted(source_labels(found).values()))}), whose pass@k do not compare: "
        f"each is its own column, pass@k panel and row, named {name} (SOURCE), never one curve.**"
        for name, found in sorted(sources_by_name(runs).items())
        if len(found) > 1
    ]
    return several + [undigested_note(name, n) for name, n in sorted(undigested(runs).items())]


def undigested_note(name: str, count: int) -> str:
    """What the report assumed of ``count`` evaluations of ``name`` that recorded no digest."""
    which = "evaluation" if count == 1 else "evaluations"
    return (
        f"**Note: {count} {which} of {name} recorded no digest of the benchmark file (an older "
        "wmtp wrote them): each is taken to hold the problems that the evaluations naming the "
        "same path recorded a digest of, where they agree on one, else told apart by that path "
        "alone, so that one file named by two paths counts as two sources, and a file edited in "
        "place as one. Evaluate them again to compare by content.**"
    )


def run_details(s: Shown) -> str:
    """A run's section: settings, cross-entropy per head, every evaluation, notes."""
    run = s.run
    settings = " · ".join(f"{key} = {value}" for key, value in run.settings.items())
    lines = [f"### {s.label}", "", f"- directory: `{run.path.resolve()}`"]
    lines.append(f"- recipe: {settings or '–'}")
    for where, name in (("train", "training"), ("heldout", "held-out")):
        heads = [ce_series(run, k, where) for k in range(1, heads_logged(run) + 1)]
        values = [f"head {k}: {p[-1][1]:.3f}" for k, p in enumerate(heads, start=1) if p]
        if values:
            lines.append(f"- {name} cross-entropy at its last step: " + ", ".join(values))
    lines += [f"- note: {note}" for note in run.notes]
    if run.evals:
        newest = next(iter(run.evals[max(run.evals)].values()))
        split = newest.get("training", {}).get("split", "?")
        lines.append(f"- split: {split} (its training problems are seen, the others unseen)")
        lines.append(f"- sandbox (newest evaluation): {newest.get('sandbox', '?')}")
        lines += ["", evaluations_table(run)]
    return "\n".join(lines) + "\n"


def evaluations_table(run: RunRecord) -> str:
    """Every evaluation of the run: step, benchmark and its source (the file, or ``built-in``;
    as its column names it where the benchmark has several), group, problems, pass@k,
    decoding."""
    rows = []
    for step, benchmarks in run.evals.items():
        for key, summary in benchmarks.items():
            name, source = benchmark_name(key, summary), shown_source(key, summary)
            decoding = summary.get("decoding", {})
            settings = ", ".join(f"{k} = {v}" for k, v in decoding.items())
            for group, result in summary["results"].items():
                scores = ", ".join(
                    f"pass@{k} {percent(v, result.get('pass_at_k_stderr', {}).get(k))}"
                    for k, v in result["pass_at_k"].items()
                )
                available = summary.get("split", {}).get(group, result["problems"])
                problems = problems_cell(group, result["problems"], available)
                rows.append([str(step), name, source, problems, scores, settings])
    header = ["step", "benchmark", "source", "problems", "pass@k (%) ± s.e.", "decoding"]
    return _table(header, rows)


def write_report(
    run_dirs: list[str | Path], out_dir: str | Path, *, step: int | None = None
) -> Report:
    """Read every run, write the figures and ``report.md`` into ``out_dir``. A ``step`` at which
    no run was evaluated, or an ``out_dir`` the report may not write (:data:`REPORT`), is an error
    before anything is written."""
    out = check_output(Path(out_dir), REPORT, force=False)
    runs = read_runs(run_dirs)
    if step is not None and not any(step in run.evals for run in runs):
        evaluated = "; ".join(
            f"{path}: {', '.join(map(str, run.evals)) or 'none'}"
            for path, run in zip(run_dirs, runs, strict=True)
        )
        raise RunError(f"--step {step}: no run was evaluated at that step (evaluated: {evaluated})")
    shown = [
        Shown(r, label, f"C{i % 10}")
        for i, (r, label) in enumerate(zip(runs, display_labels(runs), strict=True))
    ]
    steps = {s.label: picked_step(s.run, step) for s in shown}
    with staged_output(out, REPORT, force=False) as staging:
        names = [spec.file for spec in _drawn(shown, staging)]
        text = markdown(shown, steps, step, names)
        (staging / "report.md").write_text(text, encoding="utf-8")
    said = {s.label: step_words(s.run, steps[s.label], step) for s in shown}
    return Report([*(out / name for name in names), out / "report.md"], steps, said)


def _drawn(shown: list[Shown], folder: Path):
    """Each question's figure that has something to show, drawn into ``folder``."""
    for question in QUESTIONS:
        spec = question(shown)
        if spec is not None:
            draw(spec, folder / spec.file)
            yield spec


def markdown(shown: list[Shown], steps, wanted: int | None, figures: list[str]) -> str:
    which = f"step {wanted}" if wanted is not None else "each run's newest evaluated step"
    parts = [
        "# wmtp report",
        "",
        f"pass@k from {which}.",
        "",
        headline(shown, steps, wanted),
        HEADLINE_NOTES,
        "",
        *(line for warning in comparability(shown, steps) for line in (warning, "")),
        *(line for note in source_notes(shown) for line in (note, "")),
        "## Figures",
        "",
        *(f"![{Path(name).stem}]({name})" for name in figures),
        "",
        "## Runs",
        "",
        *(run_details(s) for s in shown),
    ]
    return "\n".join(parts) + "\n"


__all__ = ["REPORT", "Report", "display_labels", "headline", "tokens_seen", "write_report"]
