"""The table ``wmtp eval`` prints: a row per benchmark and group of problems, then the split, the
training data, speculative decoding's acceptance per head and the sandbox's isolation."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def percent(value: float | None, stderr: float | None = None) -> str:
    """``12.50 ± 3.10`` (percent); ``–`` for no value, no ``±`` for no standard error."""
    if value is None:
        return "–"
    return f"{100 * value:.2f}" + (f" ± {100 * stderr:.2f}" if stderr is not None else "")


def problems_cell(group: str, scored: int, available: int) -> str:
    """``8 of 16 unseen``, ``all 148 seen``."""
    count = f"all {available}" if scored == available else f"{scored} of {available}"
    return f"{count} {group}"


def _ks(summaries: dict[str, dict]) -> list[str]:
    found = {
        k
        for s in summaries.values()
        for result in s["results"].values()
        for k in result["pass_at_k"]
    }
    return sorted(found, key=int)


def _rows(name: str, summary: dict[str, Any], ks: list[str]) -> list[list[str]]:
    rows = []
    for group, result in summary["results"].items():
        available = summary.get("split", {}).get(group, result["problems"])
        statuses = ", ".join(f"{s} {n}" for s, n in sorted(result["statuses"].items()))
        scores = [
            percent(result["pass_at_k"].get(k), result.get("pass_at_k_stderr", {}).get(k))
            for k in ks
        ]
        cell = problems_cell(group, result["problems"], available)
        rows.append([name, cell, str(result["samples_per_problem"]), *scores, statuses])
    return rows


def notes(name: str, summary: dict[str, Any]) -> list[str]:
    """The lines under the table for one benchmark: its split and speculative decoding."""
    split, training = summary.get("split", {}), summary.get("training", {})
    lines = [
        f"split ({name}): {split.get('unseen', '?')} problems unseen, {split.get('seen', '?')} "
        f"seen in training, from {training.get('split', 'unknown data')}"
        + _drawn(split)
        + _no_match(name, split, training)
    ]
    generation = summary.get("generation", {})
    if generation.get("seconds"):
        lines.append(f"generation ({name}): " + _generation(generation))
    speculative = generation.get("speculative")
    if speculative and not speculative["acceptance_by_head"]:  # one head: nothing to draft
        lines.append(
            f"speculative decoding ({name}): the model has no head past the first to draft "
            "with, so evaluation.speculative changed nothing (plain decoding)"
        )
    elif speculative:
        heads = ", ".join(
            f"head {k} {100 * rate:.1f}%" for k, rate in speculative["acceptance_by_head"].items()
        )
        lines.append(
            f"speculative decoding ({name}): drafts accepted {heads} "
            f"(all heads {100 * speculative['acceptance_rate']:.1f}%); "
            f"{speculative['tokens_per_forward']:.2f} tokens per verify forward"
        )
    return lines


def _generation(generation: dict) -> str:
    """Its time and speed, the compilation in it, and how full and how long the steps were."""
    text = f"{generation['seconds']:.1f} s, {generation['tokens_per_s']:,.0f} tokens/s"
    if generation.get("ranks"):
        text += f" on {generation['ranks']} ranks"
    if generation.get("setup_s"):
        text += f" ({generation['setup_s']:.1f} s of it compiling decoding steps)"
    steps = generation.get("steps")
    if steps and not steps["steps"]:  # every prompt filled the context: nothing to time
        return "no token generated (no decoding step ran)"
    if steps:
        text += (
            f"; {steps['steps']:,} steps of {steps['slots']} rows, "
            f"{100 * steps['slot_occupancy']:.0f}% full, {steps['ms_per_step']:.2f} ms each"
        )
    return text


def _no_match(name: str, split: dict, training: dict) -> str:
    """A hint when the model trained on problems but none of them is one of the benchmark's."""
    if split.get("seen") != 0 or not training.get("seen_problems"):
        return ""
    return f" (none of its {training['seen_problems']} training problem ids is a {name} task id)"


def _drawn(split: dict) -> str:
    scored = split.get("scored", {})
    if split.get("max_problems") is None or all(n == split.get(g) for g, n in scored.items()):
        return ""
    return f"; max_problems = {split['max_problems']} drawn with seed {split['sample_seed']}"


def print_table(summaries: dict[str, dict[str, Any]], console=None, *, model: str = "") -> None:
    """Print the results of ``summaries`` (benchmark -> summary) and the lines under them, after
    a line naming the ``model`` evaluated (its path whole, however narrow the terminal: a path
    folded inside the table's title would misname it, ``step-12`` + ``0``)."""
    from rich.console import Console
    from rich.table import Table

    console = console or Console()
    if model:
        console.print(f"model: {model}", highlight=False, soft_wrap=True)
    ks = _ks(summaries)
    table = Table(title="pass@k (%) ± standard error")
    for column in ["benchmark", "problems", "n", *(f"pass@{k}" for k in ks), "statuses"]:
        table.add_column(column, justify="right" if column in ("n",) else "left")
    for name, summary in summaries.items():
        for row in _rows(name, summary, ks):
            table.add_row(*row)
    console.print(table)
    lines = [line for name, summary in summaries.items() for line in notes(name, summary)]
    first = next(iter(summaries.values()), {})
    here = f"{Path.cwd()}/"  # the summary keeps absolute paths; the table shows them from here
    sources = first.get("training", {}).get("sources", [])
    lines += [f"trained on: {source.replace(here, '')}" for source in sources]
    lines += [f"prompts: {first['prompts']['description']}"] if first.get("prompts") else []
    lines += [f"sandbox: {first['sandbox']}"] if first.get("sandbox") else []
    for line in lines:
        console.print(line, highlight=False, soft_wrap=True)


__all__ = ["percent", "print_table", "problems_cell"]
