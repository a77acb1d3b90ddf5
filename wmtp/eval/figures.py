"""Figures of ``wmtp report``: what to draw (:class:`FigureSpec`, :class:`Panel`, :class:`Line`)
apart from how (:func:`draw`), so a test can read which series share a panel.

Every panel has the optimizer step on its x-axis, a title in words and a y-label with units; its
legend lists only the lines it draws; a series that never changes is drawn flat on an axis that
shows it flat (and says its value), never on a ±5% autoscale that makes noise of a constant;
fractions sit on [0, 1] and pass@k on a percent axis from 0, so a zero score is a visible point
on the axis and "not evaluated" is written in the panel. Drawn on ``matplotlib.figure.Figure``
with the Agg canvas (no pyplot, no display).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

Series = list[tuple[int, float]]

AxisKind = Literal["value", "fraction", "percent"]


@dataclass(frozen=True)
class Line:
    """One series of one run in a panel."""

    run: str
    """The run's label in the legend."""
    colour: str
    points: Series
    what: str = ""
    """What the line is when a run has several in the panel (``max``, ``head 2``)."""
    style: str = "-"
    errors: tuple[float | None, ...] | None = None
    """± one standard error per point (pass@k); None where it is undefined (no bar drawn)."""

    @property
    def label(self) -> str:
        return f"{self.run} · {self.what}" if self.what else self.run


@dataclass(frozen=True)
class Panel:
    """One axes: a title in words, a y-label with units, lines that may share an axis."""

    title: str
    ylabel: str
    lines: tuple[Line, ...]
    axis: AxisKind = "value"
    note: str = ""
    """Text written inside the panel (``not evaluated: ...``)."""
    reference: tuple[float, str] | None = None
    """A dotted horizontal line and its legend entry (``(1.0, "uniform weight")``)."""


@dataclass(frozen=True)
class FigureSpec:
    """One figure: the question it answers (its title) and its panels."""

    file: str
    title: str
    panels: tuple[Panel, ...]
    columns: int = 2
    caption: str = ""
    """A line under the title: what the panels have in common (weights, data, ...)."""


def draw(spec: FigureSpec, path: Path):
    """Draw ``spec`` into the PNG ``path``; the matplotlib ``Figure`` (for tests)."""
    import textwrap

    figure, axes = _grid(len(spec.panels), spec.columns)
    width = int(11 * figure.get_figwidth())  # characters of the title's font a line holds
    lines = [spec.title, *(spec.caption.splitlines() if spec.caption else [])]
    title = "\n".join(textwrap.fill(line, width) for line in lines)
    figure.suptitle(title, fontsize=11)
    for ax, panel in zip(axes, spec.panels, strict=True):
        _draw_panel(ax, panel)
    figure.savefig(path, dpi=100)
    return figure


def _grid(n_panels: int, n_columns: int):
    from matplotlib.figure import Figure

    n_columns = max(1, min(n_columns, n_panels))
    n_rows = math.ceil(n_panels / n_columns)
    figure = Figure(figsize=(5.6 * n_columns, 3.9 * n_rows + 0.6), layout="constrained")
    axes = figure.subplots(n_rows, n_columns, squeeze=False).ravel()
    for extra in axes[n_panels:]:
        extra.remove()
    return figure, axes[:n_panels]


def _draw_panel(ax, panel: Panel) -> None:
    from matplotlib.ticker import MaxNLocator

    for line, offset in zip(panel.lines, _dodges(panel), strict=True):
        _draw_line(ax, line, panel.axis, offset)
    if panel.reference is not None:
        value, label = panel.reference
        ax.axhline(value, color="0.45", linestyle=":", linewidth=1.0, label=label)
    ax.set_title(panel.title, fontsize=10)
    ax.set_xlabel("optimizer step", fontsize=9)
    ax.set_ylabel(panel.ylabel, fontsize=9)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.tick_params(labelsize=8)
    ax.grid(alpha=0.3)
    _set_x_range(ax, panel)
    _set_y_range(ax, panel)
    if panel.lines:
        ax.legend(fontsize=7, loc="best", framealpha=0.85, handlelength=3.2)
    if panel.note:
        ax.text(
            0.5,
            0.5,
            panel.note,
            transform=ax.transAxes,
            ha="center",
            va="center",
            fontsize=9,
            color="0.3",
            wrap=True,
            bbox={"facecolor": "white", "edgecolor": "0.7", "boxstyle": "round"},
        )


def _dodges(panel: Panel) -> list[float]:
    """x offsets that set error bars of runs evaluated at the same step side by side."""
    last = max((step for line in panel.lines for step, _ in line.points), default=1)
    barred = [i for i, line in enumerate(panel.lines) if line.errors is not None]
    centre = (len(barred) - 1) / 2
    return [
        (barred.index(i) - centre) * 0.012 * last if i in barred else 0.0
        for i in range(len(panel.lines))
    ]


def _draw_line(ax, line: Line, axis: AxisKind, offset: float = 0.0) -> None:
    steps = [step + offset for step, _ in line.points]
    scale = 100.0 if axis == "percent" else 1.0
    values = [scale * value for _, value in line.points]
    marker = "o" if len(steps) <= 25 else None  # a lone point stays visible
    common = dict(
        color=line.colour,
        linestyle=line.style,
        marker=marker,
        markersize=4,
        linewidth=1.4,
        label=line.label,
        clip_on=False,
    )
    if line.errors is not None:
        errors = [math.nan if e is None else scale * e for e in line.errors]  # NaN: no bar
        ax.errorbar(steps, values, yerr=errors, capsize=3, **common)
    else:
        ax.plot(steps, values, **common)


def _set_x_range(ax, panel: Panel) -> None:
    """From step 0 to just past the last step: a lone point sits where it belongs."""
    last = max((step for line in panel.lines for step, _ in line.points), default=1)
    ax.set_xlim(0, last * 1.04 + 0.5)


def _set_y_range(ax, panel: Panel) -> None:
    """Fractions on [0, 1], percents from 0 (with the error bars); a constant series on an
    axis that shows it flat, its value written beside it."""
    ax.ticklabel_format(axis="y", useOffset=False, style="plain")
    if panel.axis == "fraction":
        ax.set_ylim(0, 1.02)
    elif panel.axis == "percent":
        tops = [
            100 * (v + (e or 0.0))
            for line in panel.lines
            for (_, v), e in zip(line.points, line.errors or [None] * len(line.points), strict=True)
        ]
        top = min(100.0, max([10.0, *tops]) * 1.15)
        ax.set_ylim(-0.02 * top, top)  # a zero score stands clear of the axis line
    elif (flat := constant_value(panel)) is not None:
        pad = abs(flat) if flat else 1.0
        ax.set_ylim(flat - pad, flat + pad)
        ax.text(
            0.02, 0.56, f"constant: {flat:.4g}", transform=ax.transAxes, fontsize=8, color="0.3"
        )


def constant_value(panel: Panel) -> float | None:
    """The value of a panel whose every line is one constant (two points or more), else None."""
    values = [v for line in panel.lines for _, v in line.points]
    if len(values) < 2 or max(values) - min(values) > 1e-9 * max(1.0, abs(values[0])):
        return None
    return values[0]


__all__ = ["FigureSpec", "Line", "Panel", "constant_value", "draw"]
