"""``wmtp report``: plots and a markdown table that compare runs side by side.

Writes into the output folder:

- ``loss_per_head.png``: one panel per head (and per family of per-head loss tags, e.g. training
  and held-out), a line per run;
- ``loss.png``: every loss tag that is not per head (total loss, eval loss, ...);
- ``weights.png``: the token-weight statistics (mean, std, min, max, clipped fractions) and
  Rho-1's kept fractions, where runs logged them;
- ``pass_at_k.png``: pass@k per benchmark, runs as grouped bars;
- ``report.md``: one row per run with its key settings, last losses and pass@k.

Figures are drawn on ``matplotlib.figure.Figure`` with the Agg canvas (no pyplot, no display).
"""

from __future__ import annotations

import math
import re
from pathlib import Path

from wmtp.eval.run_data import RunRecord, Series, read_run

HEAD_PATTERN = re.compile(r"head[_/\-]?(\d+)")


def _is_loss(tag: str) -> bool:
    return "loss" in tag.lower()


def _is_weight_stat(tag: str) -> bool:
    """Token-weight statistics (``weight/mean``, ``weight/clipped_max``, ...) and Rho-1's
    selection figures (``rho1/kept_fraction_head1``, ...)."""
    lowered = tag.lower()
    if _is_loss(tag) or "decay" in lowered:
        return False
    return "weight" in lowered or lowered.startswith("rho1/")


def per_head_loss_tags(runs: list[RunRecord]) -> dict[str, dict[int, str]]:
    """Family (the tag with its head number as ``*``) -> head -> tag, over all runs."""
    families: dict[str, dict[int, str]] = {}
    for tag in sorted({t for run in runs for t in run.scalars}):
        match = HEAD_PATTERN.search(tag)
        if match and _is_loss(tag):
            family = tag[: match.start(1)] + "*" + tag[match.end(1) :]
            families.setdefault(family, {})[int(match.group(1))] = tag
    return families


def _tags(runs: list[RunRecord], keep) -> list[str]:
    return sorted({t for run in runs for t in run.scalars if keep(t)})


def _grid(n_panels: int, n_cols: int):
    from matplotlib.figure import Figure

    n_cols = max(1, min(n_cols, n_panels))
    n_rows = math.ceil(n_panels / n_cols)
    figure = Figure(figsize=(4.2 * n_cols, 3.2 * n_rows), layout="constrained")
    axes = figure.subplots(n_rows, n_cols, squeeze=False).ravel()
    for extra in axes[n_panels:]:
        extra.set_visible(False)
    return figure, axes[:n_panels]


def _plot_series(ax, runs: list[RunRecord], tag: str, title: str) -> None:
    for index, run in enumerate(runs):
        points: Series = run.scalars.get(tag, [])
        if points:
            steps, values = zip(*points, strict=True)
            marker = "o" if len(points) <= 20 else None  # a lone eval point stays visible
            ax.plot(steps, values, color=_colour(index), linewidth=1.2, marker=marker, markersize=3)
    ax.set_title(title, fontsize=9)
    ax.set_xlabel("step", fontsize=8)
    ax.tick_params(labelsize=7)
    ax.grid(alpha=0.3)


def _colour(run_index: int) -> str:
    """A run keeps its colour in every panel, whether or not earlier runs logged that tag."""
    return f"C{run_index % 10}"


def _legend(figure, runs: list[RunRecord], n_cols: int) -> None:
    from matplotlib.patches import Patch

    handles = [Patch(color=_colour(i), label=run.label) for i, run in enumerate(runs)]
    figure.legend(handles=handles, loc="outside lower center", fontsize=8, ncols=max(1, n_cols - 1))


def plot_loss_per_head(runs: list[RunRecord], path: Path) -> bool:
    """One panel per (family, head); returns False (and writes nothing) when no run has any."""
    families = per_head_loss_tags(runs)
    panels = [(tag, f"{tag}") for heads in families.values() for _, tag in sorted(heads.items())]
    if not panels:
        return False
    n_heads = max(len(heads) for heads in families.values())
    figure, axes = _grid(len(panels), n_heads)
    for ax, (tag, title) in zip(axes, panels, strict=True):
        _plot_series(ax, runs, tag, title)
    _legend(figure, runs, min(n_heads, len(panels)))
    figure.savefig(path, dpi=110)
    return True


def plot_tags(runs: list[RunRecord], tags: list[str], path: Path) -> bool:
    """A panel per tag, a line per run; False when ``tags`` is empty."""
    if not tags:
        return False
    figure, axes = _grid(len(tags), 3)
    for ax, tag in zip(axes, tags, strict=True):
        _plot_series(ax, runs, tag, tag)
    _legend(figure, runs, min(3, len(tags)))
    figure.savefig(path, dpi=110)
    return True


def pass_at_k_points(runs: list[RunRecord]) -> dict[str, list[str]]:
    """Benchmark -> its k labels (``pass@1``, ...) in increasing k, over all runs."""
    found: dict[str, set[str]] = {}
    for run in runs:
        for bench, result in run.evals.items():
            found.setdefault(bench, set()).update(result.get("pass_at_k", {}))
    return {b: sorted(ks, key=lambda k: int(k)) for b, ks in sorted(found.items())}


def plot_pass_at_k(runs: list[RunRecord], path: Path) -> bool:
    """Grouped bars: a panel per benchmark, a group per k, a bar per run."""
    benchmarks = pass_at_k_points(runs)
    if not benchmarks:
        return False
    figure, axes = _grid(len(benchmarks), 3)
    width = 0.8 / len(runs)
    for ax, (bench, ks) in zip(axes, benchmarks.items(), strict=True):
        for index, run in enumerate(runs):
            scores = run.evals.get(bench, {}).get("pass_at_k", {})
            heights = [100 * scores.get(k, float("nan")) for k in ks]
            xs = [i + (index - (len(runs) - 1) / 2) * width for i in range(len(ks))]
            ax.bar(xs, heights, width=width, color=_colour(index))
        ax.set_xticks(range(len(ks)), [f"pass@{k}" for k in ks], fontsize=8)
        ax.set_ylabel("%", fontsize=8)
        ax.set_title(bench, fontsize=9)
        ax.grid(axis="y", alpha=0.3)
    _legend(figure, runs, min(3, len(benchmarks)))
    figure.savefig(path, dpi=110)
    return True


def _cell(value) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value).replace("|", "\\|")


def markdown_table(runs: list[RunRecord], loss_tags: list[str]) -> str:
    """One row per run: settings, last step, the last value of each loss tag, pass@k (%)."""
    setting_keys = sorted({key for run in runs for key in run.settings})
    benchmarks = pass_at_k_points(runs)
    header = ["run", *setting_keys, "steps", *loss_tags]
    header += [f"{bench} pass@{k}" for bench, ks in benchmarks.items() for k in ks]
    rows = []
    for run in runs:
        last_step = max((points[-1][0] for points in run.scalars.values() if points), default=None)
        row = [run.label, *(run.settings.get(key) for key in setting_keys), last_step]
        row += [run.scalars[tag][-1][1] if run.scalars.get(tag) else None for tag in loss_tags]
        for bench, ks in benchmarks.items():
            scores = run.evals.get(bench, {}).get("pass_at_k", {})
            row += [round(100 * scores[k], 2) if k in scores else None for k in ks]
        rows.append(row)
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(_cell(value) for value in row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def write_report(run_dirs: list[str | Path], out_dir: str | Path) -> list[Path]:
    """Read every run, write the plots and ``report.md`` into ``out_dir``; the files written."""
    runs = [read_run(path) for path in run_dirs]
    _dedupe_labels(runs)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    head_tags = {tag for heads in per_head_loss_tags(runs).values() for tag in heads.values()}
    other_losses = [t for t in _tags(runs, _is_loss) if t not in head_tags]
    written = []
    plots = {
        "loss_per_head.png": lambda p: plot_loss_per_head(runs, p),
        "loss.png": lambda p: plot_tags(runs, other_losses, p),
        "weights.png": lambda p: plot_tags(runs, _tags(runs, _is_weight_stat), p),
        "pass_at_k.png": lambda p: plot_pass_at_k(runs, p),
    }
    for name, draw in plots.items():
        if draw(out / name):
            written.append(out / name)
    table = markdown_table(runs, other_losses + sorted(head_tags))
    title = "# wmtp report\n\n" + "\n".join(f"- `{run.label}`: {run.path}" for run in runs)
    images = "\n".join(f"![{p.stem}]({p.name})" for p in written)
    (out / "report.md").write_text(f"{title}\n\n{table}\n{images}\n", encoding="utf-8")
    return [*written, out / "report.md"]


def _dedupe_labels(runs: list[RunRecord]) -> None:
    seen: dict[str, int] = {}
    for run in runs:
        seen[run.label] = seen.get(run.label, 0) + 1
        if seen[run.label] > 1:
            run.label = f"{run.label} ({seen[run.label]})"


__all__ = ["markdown_table", "write_report"]
