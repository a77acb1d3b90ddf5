"""What ``attention = "auto"`` runs: a recorded ranking of backends per GPU, or a measured default.

``wmtp bench attention --record TABLE`` ranks the recipe backends (eager, sdpa, flash_attn, flex,
varlen) it measured, separately for plain batches and for packed ones, by the geometric mean over
that layout's shapes of each backend's forward+backward time over the fastest one's. The table
keeps one entry per (GPU name, dtype). ``auto`` takes, per layout, the first backend of the
ranking that can run here; a backend that was not measured at every shape of a layout is left
out of that layout's ranking.

Tables read, first match wins: ``$WMTP_ATTENTION_TABLE`` (a user's own recordings), then
``attention_table.json`` beside this file (recorded on the project's machines and committed).

With no entry for the GPU: sdpa for plain batches (PyTorch dispatches to its fastest kernel: cuDNN
on Hopper, its own flash kernel on Ampere) and, for packed batches, flash_attn's varlen kernel where
flash-attn is installed, else flex. On the H100 this default matches the recorded ranking's choice
for plain batches; flash_attn's ``flash_attn_func`` measured 1.3-1.7x slower than sdpa there
(bench/results/h100_attention.md).
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass
from datetime import date
from pathlib import Path

from wmtp.models.backends import NAMES

TABLE_ENV = "WMTP_ATTENTION_TABLE"
PACKAGED_TABLE = Path(__file__).with_name("attention_table.json")
RANKED_BACKENDS = NAMES
"""Every backend of the table (``wmtp.models.backends``) can be ranked."""
LAYOUTS = ("plain", "packed")


@dataclass(frozen=True)
class Ranking:
    """One table entry: backends per layout, fastest first, and where the figures came from."""

    device: str
    dtype: str
    layouts: dict[str, list[str]]
    source: str

    def first_runnable(self, layout: str, runnable: set[str]) -> str | None:
        return next((name for name in self.layouts.get(layout, []) if name in runnable), None)


def table_paths() -> list[Path]:
    """The tables ``auto`` reads, in order."""
    user = os.environ.get(TABLE_ENV)
    return ([Path(user).expanduser()] if user else []) + [PACKAGED_TABLE]


def load_entries(path: Path) -> list[dict]:
    """The entries of one table file; a missing file has none."""
    if not path.is_file():
        return []
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ValueError(f"{path}: not a readable attention table ({exc})") from exc
    return list(data.get("entries", []))


def find_ranking(device: str, dtype: str, paths: list[Path] | None = None) -> Ranking | None:
    """The recorded ranking for GPU ``device`` and ``dtype``: that dtype first, else another of
    the same GPU (kernel speed ranks alike in bf16 and fp16)."""
    for path in paths if paths is not None else table_paths():
        entries = [e for e in load_entries(path) if e.get("device") == device]
        entry = next((e for e in entries if e.get("dtype") == dtype), None) or next(
            iter(entries), None
        )
        if entry is not None:
            layouts = {
                layout: [r["backend"] for r in ranked]
                for layout, ranked in entry["layouts"].items()
            }
            return Ranking(
                device, entry["dtype"], layouts, f"{path.name}, {entry.get('source', '?')}"
            )
    return None


# --------------------------------------------------------------------------------------------
# Recording a ranking from `wmtp bench attention` rows
# --------------------------------------------------------------------------------------------


def layout_of(row: dict) -> str:
    return "packed" if row.get("documents") else "plain"


def rank_backends(rows: list[dict]) -> dict[str, list[dict]]:
    """Per layout, the recipe backends measured at every shape of it, fastest first.

    Each item: ``backend``, ``geomean_vs_fastest`` (geometric mean over the layout's shapes of its
    forward+backward time over the fastest recipe backend's), ``worst_vs_fastest``, ``shapes``.
    """
    timed = [r for r in rows if "error" not in r and r.get("backend") in RANKED_BACKENDS]
    ranked: dict[str, list[dict]] = {}
    for layout in LAYOUTS:
        by_shape: dict[str, dict[str, float]] = {}
        for row in (r for r in timed if layout_of(r) == layout):
            by_shape.setdefault(row["shape"], {})[row["backend"]] = row["fwd_bwd_ms"]
        if not by_shape:
            continue
        everywhere = set.intersection(*(set(times) for times in by_shape.values()))
        items = []
        for backend in everywhere:
            ratios = [times[backend] / min(times.values()) for times in by_shape.values()]
            geomean = math.exp(sum(map(math.log, ratios)) / len(ratios))
            items.append(
                {
                    "backend": backend,
                    "geomean_vs_fastest": round(geomean, 4),
                    "worst_vs_fastest": round(max(ratios), 4),
                    "shapes": len(ratios),
                }
            )
        ranked[layout] = sorted(items, key=lambda item: item["geomean_vs_fastest"])
    return ranked


def record(table: Path, result: dict, source: str) -> dict:
    """Add (or replace) the entry of ``result``'s GPU and dtype in ``table``; returns the entry."""
    entry = {
        "device": result["device"],
        "dtype": result["dtype"],
        "torch": result.get("torch"),
        "flash_attn": result.get("flash_attn"),
        "recorded": result.get("date", date.today().isoformat()),
        "source": source,
        "layouts": rank_backends(result["rows"]),
    }
    if not entry["layouts"]:
        raise ValueError("no backend was measured: nothing to record")
    data = json.loads(table.read_text()) if table.is_file() else {}
    data.setdefault(
        "about",
        "Attention backends ranked per GPU and dtype by `wmtp bench attention --record`; "
        "attention = 'auto' runs the first runnable backend of each layout.",
    )
    keep = [
        e
        for e in data.get("entries", [])
        if (e.get("device"), e.get("dtype")) != (entry["device"], entry["dtype"])
    ]
    data["entries"] = sorted([*keep, entry], key=lambda e: (e["device"], e["dtype"]))
    table.parent.mkdir(parents=True, exist_ok=True)
    table.write_text(json.dumps(data, indent=2) + "\n")
    return entry


__all__ = [
    "LAYOUTS",
    "PACKAGED_TABLE",
    "TABLE_ENV",
    "Ranking",
    "find_ranking",
    "rank_backends",
    "record",
    "table_paths",
]
