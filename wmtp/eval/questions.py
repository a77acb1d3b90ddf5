"""The questions ``wmtp report`` answers, one figure each, and which series may share a panel.

- ``cross_entropy.png``: is one run better than another at predicting the next token? Head 1's
  cross-entropy with every token weighted 1, on the held-out split and on the training batches:
  the tag each pipeline logs it under comes from its description
  (``PipelineInfo.train_ce`` / ``heldout_ce``: baseline ``loss/head1``, verifiable
  ``loss/head1_unweighted``, Rho-1 ``loss/head1_all_tokens``, held-out ``eval/loss/head1`` for
  all). A critic trains a value model: its pairwise loss is no cross-entropy and stays out.
- ``cross_entropy_per_head.png``: the same for every head (head k predicts token t+k).
- ``token_weights.png``: how the weighting spreads the loss over tokens (weight statistics,
  clipping, Rho-1's kept fraction per head); runs with uniform weights log none.
- ``pass_at_k.png``: pass@k on unseen problems by checkpoint, ± one standard error.
- ``throughput.png``: training tokens/s (and MFU on a GPU).
- ``critic.png``: whether a critic ranks correct solutions above incorrect ones.

A run's own objective (verifiable's weighted loss, Rho-1's kept-token loss, a critic's pairwise
loss) is never drawn beside another run's: it is a different number.
"""

from __future__ import annotations

from dataclasses import dataclass

from wmtp.eval.figures import FigureSpec, Line, Panel
from wmtp.eval.run_data import RunRecord

CE_LABEL = "cross-entropy (nats/token)"


@dataclass(frozen=True)
class Shown:
    """A run as the report shows it: its record, its legend label and its colour."""

    run: RunRecord
    label: str
    colour: str


def pipeline_of(run: RunRecord):
    """The run's ``PipelineInfo``; None without a recipe or for a pipeline not installed here."""
    from wmtp.errors import WmtpError
    from wmtp.pipelines import pipeline_info

    if run.pipeline is None:
        return None
    try:
        return pipeline_info(run.pipeline)
    except WmtpError:
        return None


def ce_tag(run: RunRecord, head: int, where: str) -> str | None:
    """The tag of head ``head``'s cross-entropy (every token weighted 1) on the ``heldout``
    split or the ``train`` batches; None when the run logs none."""
    info = pipeline_of(run)
    template = None if info is None else (info.heldout_ce if where == "heldout" else info.train_ce)
    return template.format(k=head) if template else None


def ce_series(run: RunRecord, head: int, where: str) -> list[tuple[int, float]]:
    tag = ce_tag(run, head, where)
    return run.scalars.get(tag, []) if tag else []


def heads_logged(run: RunRecord) -> int:
    """The heads whose cross-entropy the run logged (training or held-out)."""
    head = 0
    while ce_series(run, head + 1, "train") or ce_series(run, head + 1, "heldout"):
        head += 1
    return head


def _shown_value(value) -> str:
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k} = {_shown_value(v)}" for k, v in value.items()) + "}"
    if isinstance(value, str):
        return f'"{value}"'
    return "–" if value is None else str(value)


def _differences(found: list[tuple[str, dict]]) -> list[str]:
    """``key: value (who, who), value (who)`` for each key whose value is not the same for every
    ``(who, values)`` of ``found``."""
    keys = list(dict.fromkeys(key for _, values in found for key in values))
    lines = []
    for key in keys:
        by_value: dict[str, list[str]] = {}
        for who, values in found:
            by_value.setdefault(_shown_value(values.get(key)), []).append(who)
        if len(by_value) > 1:
            lines.append(
                f"{key}: " + ", ".join(f"{v} ({', '.join(w)})" for v, w in by_value.items())
            )
    return lines


def heldout_differences(runs: list[Shown]) -> str:
    """Empty when every run with a held-out cross-entropy measured it on the same held-out data
    (``RunRecord.heldout_data``), else what differs, run by run."""
    found = [
        (s.label, s.run.heldout_data or {"recipe.toml": "missing"})
        for s in runs
        if ce_series(s.run, 1, "heldout")
    ]
    lines = _differences(found)
    if not lines:
        return ""
    return "held-out cross-entropy NOT comparable, the held-out data differ: " + "; ".join(lines)


def tokens_per_step(run: RunRecord) -> float | None:
    """The median input tokens of the run's logged training steps (all ranks, no padding)."""
    values = sorted(v for _, v in run.scalars.get("tokens", []))
    return values[len(values) // 2] if values else None


def step_size_differences(runs: list[Shown], tolerance: float = 0.10) -> str:
    """Empty when the runs that train the same model (policies; critics) each train about as
    many tokens a step (within ``tolerance`` of the largest), else each run's: curves drawn by
    step then compare different amounts of data. A critic's pairs are not a policy's step."""
    found = []
    for policies in (True, False):
        sizes = [
            (s.label, t)
            for s in runs
            if trains_policy(s.run) == policies and (t := tokens_per_step(s.run)) is not None
        ]
        if len(sizes) > 1 and min(t for _, t in sizes) < (1 - tolerance) * max(t for _, t in sizes):
            found.append(", ".join(f"{label} {t:,.0f}" for label, t in sizes))
    if not found:
        return ""
    return (
        "the runs train different numbers of tokens a step (median input tokens: "
        f"{'; '.join(found)}): curves by step compare different amounts of data; the "
        "headline's tokens seen says how much each trained"
    )


DECODING_KEYS = ("n_samples", "temperature", "top_p", "max_new_tokens")


def evaluation_setup(run: RunRecord, step: int, benchmark: str) -> dict[str, object]:
    """What a pass@k on unseen problems depends on besides the model: the decoding settings
    and the unseen problems scored (their task ids; their count where problems.jsonl is gone)."""
    summary = run.evals.get(step, {}).get(benchmark, {})
    decoding = summary.get("decoding", {})
    setup: dict[str, object] = {key: decoding.get(key) for key in DECODING_KEYS}
    tasks = run.eval_problems.get(step, {}).get(benchmark, {}).get("unseen")
    unseen = summary.get("results", {}).get("unseen", {})
    setup["unseen problems"] = (
        f"{len(tasks)} problems: " + ", ".join(sorted(tasks)) if tasks else unseen.get("problems")
    )
    return setup


def evaluation_differences(evaluated: list[tuple[str, RunRecord, int]], benchmark: str) -> str:
    """Empty when the ``(label, run, step)`` evaluations of ``benchmark`` decoded alike on the
    same unseen problems, else what differs (problem sets named by their size)."""
    found = [
        (f"{label} step {step}", evaluation_setup(run, step, benchmark))
        for label, run, step in evaluated
        if run.evals.get(step, {}).get(benchmark, {}).get("results", {}).get("unseen")
    ]
    lines = _differences(found)
    lines = [
        line if not line.startswith("unseen problems:") else _problem_sets(found) for line in lines
    ]
    if not lines:
        return ""
    return f"{benchmark}: evaluated differently, pass@k NOT comparable: " + "; ".join(lines)


def _problem_sets(found: list[tuple[str, dict]]) -> str:
    """Which evaluations scored which unseen problems: sets numbered, with their size."""
    sets: dict[object, list[str]] = {}
    for who, setup in found:
        sets.setdefault(setup["unseen problems"], []).append(who)
    parts = []
    for i, (problems, who) in enumerate(sets.items(), start=1):
        size = str(problems).split(" ")[0]
        parts.append(f"set {i} of {size} ({', '.join(who)})")
    return "unseen problems differ: " + ", ".join(parts)


def _lines(runs: list[Shown], series_of, **style) -> tuple[Line, ...]:
    """A line per run with data (``series_of(run) -> points``)."""
    found = ((shown, series_of(shown.run)) for shown in runs)
    return tuple(Line(s.label, s.colour, points, **style) for s, points in found if points)


def _keep(panels) -> tuple[Panel, ...]:
    return tuple(p for p in panels if p.lines or p.note)


def cross_entropy(runs: list[Shown]) -> FigureSpec | None:
    panels = _keep(
        Panel(title, CE_LABEL, _lines(runs, lambda run, w=where: ce_series(run, 1, w)))
        for title, where in (
            ("held-out split (every training.eval_every steps)", "heldout"),
            ("training batches", "train"),
        )
    )
    if not panels:
        return None
    left_out = [s.label for s in runs if heads_logged(s.run) == 0]
    caption = "head 1, every target token weighted 1 (verifiable: unweighted; Rho-1: all tokens)"
    if left_out:
        caption += f"; left out (no cross-entropy logged): {', '.join(left_out)}"
    if differ := heldout_differences(runs):
        caption += f"\n{differ}"
    return FigureSpec(
        "cross_entropy.png",
        "Next-token cross-entropy, every run on the same footing",
        panels,
        caption=caption,
    )


def cross_entropy_per_head(runs: list[Shown]) -> FigureSpec | None:
    n_heads = max((heads_logged(s.run) for s in runs), default=0)
    if n_heads < 2:
        return None
    panels = _keep(
        Panel(
            f"head {k} (predicts token t+{k}), {name}",
            CE_LABEL,
            _lines(runs, lambda run, k=k, w=where: ce_series(run, k, w)),
        )
        for where, name in (("heldout", "held-out"), ("train", "training"))
        for k in range(1, n_heads + 1)
    )
    title = "Cross-entropy of each head, every target token weighted 1"
    return FigureSpec("cross_entropy_per_head.png", title, panels, columns=n_heads)


def _tag_lines(runs: list[Shown], tags: list[tuple[str, str, str]]) -> tuple[Line, ...]:
    """Lines of several tags per run: ``(tag, what, line style)``."""
    return tuple(
        line
        for tag, what, style in tags
        for line in _lines(runs, lambda run, t=tag: run.scalars.get(t, []), what=what, style=style)
    )


def token_weights(runs: list[Shown]) -> FigureSpec | None:
    kept = sorted(
        {t for s in runs for t in s.run.scalars if t.startswith("rho1/kept_fraction_head")},
        key=lambda t: int(t.removeprefix("rho1/kept_fraction_head")),
    )
    styles = ["-", "--", ":", "-."]
    weight, uniform = "token weight (1 = uniform)", (1.0, "uniform weight")
    panels = _keep(
        [
            Panel(
                "mean token weight",
                weight,
                _tag_lines(runs, [("weight/mean", "", "-")]),
                reference=uniform,
            ),
            Panel(
                "spread of token weights",
                "standard deviation of token weights",
                _tag_lines(runs, [("weight/std", "", "-")]),
            ),
            Panel(
                "smallest and largest token weight",
                weight,
                _tag_lines(runs, [("weight/max", "max", "-"), ("weight/min", "min", "--")]),
                reference=uniform,
            ),
            Panel(
                "tokens whose weight was clipped",
                "fraction of tokens",
                _tag_lines(
                    runs,
                    [
                        ("weight/clipped_max", "at max_weight", "-"),
                        ("weight/clipped_min", "at min_weight", "--"),
                    ],
                ),
                axis="fraction",
            ),
            Panel(
                "Rho-1: tokens kept per head",
                "fraction of tokens",
                _tag_lines(
                    runs,
                    [
                        (t, f"head {t.removeprefix('rho1/kept_fraction_head')}", styles[i % 4])
                        for i, t in enumerate(kept)
                    ],
                ),
                axis="fraction",
            ),
        ]
    )
    if not panels:
        return None
    caption = "per training step; runs with uniform weights log none and are not drawn"
    return FigureSpec(
        "token_weights.png",
        "How the weighting spreads the loss over tokens",
        panels,
        caption=caption,
    )


def pass_at_k_points(run: RunRecord, benchmark: str, k: str):
    """``(step, pass@k)`` and the standard errors of the run's unseen-problem results (None
    where one problem leaves it undefined: that point gets no error bar, not a zero-width one)."""
    points, errors = [], []
    for step, benchmarks in run.evals.items():
        result = benchmarks.get(benchmark, {}).get("results", {}).get("unseen")
        if result and k in result["pass_at_k"]:
            points.append((step, result["pass_at_k"][k]))
            errors.append(result.get("pass_at_k_stderr", {}).get(k))
    return points, tuple(errors)


def evaluated_ks(runs: list[Shown]) -> dict[str, list[str]]:
    """Benchmark -> its k values (as strings, increasing), over every run's evaluations."""
    found: dict[str, set[str]] = {}
    for shown in runs:
        for benchmarks in shown.run.evals.values():
            for name, summary in benchmarks.items():
                for result in summary.get("results", {}).values():
                    found.setdefault(name, set()).update(result["pass_at_k"])
    return {name: sorted(ks, key=int) for name, ks in sorted(found.items())}


def trains_policy(run: RunRecord) -> bool:
    info = pipeline_of(run)
    return bool(run.evals) or (info is not None and info.trains == "policy")


def _pass_at_k_panel(runs: list[Shown], benchmark: str, k: str) -> Panel:
    lines, missing = [], []
    for shown in runs:
        points, errors = pass_at_k_points(shown.run, benchmark, k)
        if points:
            lines.append(Line(shown.label, shown.colour, points, errors=errors))
        elif trains_policy(shown.run):
            missing.append(shown.label)
    note = f"not evaluated: {', '.join(missing)}" if missing else ""
    title = f"{benchmark}: pass@{k} on unseen problems"
    return Panel(title, f"pass@{k} (% of problems)", tuple(lines), axis="percent", note=note)


def pass_at_k(runs: list[Shown]) -> FigureSpec | None:
    benchmarks = evaluated_ks(runs)
    if not benchmarks:
        return None
    panels = tuple(_pass_at_k_panel(runs, b, k) for b, ks in benchmarks.items() for k in ks)
    caption = (
        "each checkpoint evaluated (wmtp eval); error bars: ± one standard error across problems"
    )
    for benchmark in benchmarks:
        evaluated = [(s.label, s.run, step) for s in runs for step in s.run.evals]
        if differ := evaluation_differences(evaluated, benchmark):
            caption += f"\n{differ}"
    return FigureSpec(
        "pass_at_k.png",
        "pass@k by checkpoint, on problems the model never trained on",
        panels,
        caption=caption,
    )


def throughput(runs: list[Shown]) -> FigureSpec | None:
    panels = _keep(
        [
            Panel(
                "training throughput",
                "tokens/s (input tokens, all ranks)",
                _tag_lines(runs, [("tokens_per_s", "", "-")]),
            ),
            Panel(
                "model FLOPs utilisation",
                "MFU (fraction of bf16 peak)",
                _tag_lines(runs, [("mfu", "", "-")]),
                axis="fraction",
            ),
        ]
    )
    if not panels:
        return None
    return FigureSpec("throughput.png", "Training speed", panels)


def critic(runs: list[Shown]) -> FigureSpec | None:
    panels = _keep(
        [
            Panel(
                "pairs ranked right",
                "fraction of pairs",
                _tag_lines(
                    runs,
                    [
                        ("heldout/pair_accuracy", "held-out", "-"),
                        ("train/pair_accuracy", "training", "--"),
                    ],
                ),
                axis="fraction",
                reference=(0.5, "chance"),
            ),
            Panel(
                "pairwise loss, held-out",
                "loss (nats/pair)",
                _tag_lines(runs, [("heldout/loss_pairwise", "", "-")]),
            ),
        ]
    )
    if not panels:
        return None
    title = "Critic: does it score correct solutions above incorrect ones?"
    return FigureSpec("critic.png", title, panels)


QUESTIONS = (cross_entropy, cross_entropy_per_head, token_weights, pass_at_k, throughput, critic)
"""Every figure of a report, in the order report.md shows them."""


__all__ = [
    "QUESTIONS",
    "Shown",
    "ce_series",
    "ce_tag",
    "evaluated_ks",
    "evaluation_differences",
    "heads_logged",
    "heldout_differences",
]
