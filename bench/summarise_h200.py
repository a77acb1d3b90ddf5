"""Write h200.json and h200.md (issue 20's figures) from `wmtp bench peers` results.

    python bench/summarise_h200.py --results DIR [--out DIR]

Reads DIR/full1b.json and DIR/lora7b.json (`wmtp bench peers --shape full1b|lora7b`; either may
be missing), DIR/float8/ (bench/h200.sh's stages float8 and float8_loss, if there) and
DIR/steps.jsonl (bench/h200.sh's stages, if there). Every figure is a ratio of rows in those
files; each side counts at its best micro-batch (most tokens/s), memory ratios at one
micro-batch both sides measured. Standard library only.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

NOT_MEASURED = {
    "float8_ratio_vs_bf16": "not measured: no wmtp-1head+float8 row beside a wmtp-1head row of "
    "the same micro-batch in full1b.json (bench/h200.sh float8, after full1b)",
    "lora7b_float8_ratio_vs_bf16": "not measured: no `wmtp bench step` result in "
    "float8/lora7b_bf16/ and float8/lora7b_float8/ (bench/h200.sh float8)",
    "float8_loss_rel_diff": "not measured: no float8/loss_{bf16,float8}.jsonl "
    "(bench/h200.sh float8_loss)",
    "run_vs_bench_step": "not measured: `wmtp run` was not timed in this call",
}


AS_WRITTEN_COMPILES_ON_CUDA = True
"""Whether the LoRA recipe as written compiles its blocks on CUDA (``recipes/base.toml``:
``compile = "auto"``, eager on the CPU; a test holds this to the recipe). Four-head rows measured
with the recipe's setting are "the recipe as written", whichever side name they ran under; rows
measured before the recipe changed are not."""


def measured(rows: list[dict], side: str) -> list[dict]:
    return [r for r in rows if r["side"] == side and r["error"] is None]


def is_float8(side: str) -> bool:
    """A side with the ``float8`` setting (``titan+float8``, ``wmtp-4heads+float8``)."""
    return "float8" in side.split("+")[1:]


def best(rows: list[dict], side: str) -> dict | None:
    found = measured(rows, side)
    return max(found, key=lambda r: r["tokens_per_s"]) if found else None


def best_setting(rows: list[dict], side: str) -> dict | None:
    """``side``'s best row over its bf16 settings: ``side`` itself (the recipe as written) and any
    ``side+SETTING`` (``wmtp-4heads+compile``: with ``parallel.compile = true``). Float8 is
    opt-in and set against float8 peers on its own (:func:`float8_full1b`, :func:`float8_lora7b`)."""
    settings = {
        r["side"]
        for r in rows
        if (r["side"] == side or r["side"].startswith(f"{side}+")) and not is_float8(r["side"])
    }
    found = [r for r in (best(rows, s) for s in sorted(settings)) if r is not None]
    return max(found, key=lambda r: r["tokens_per_s"]) if found else None


def as_written(results: dict) -> dict | None:
    """The best four-head row with the recipe's own compile setting on the results' device (no
    float8: it is opt-in)."""
    compiles = AS_WRITTEN_COMPILES_ON_CUDA and results["device"] != "cpu"
    found = [
        r
        for r in results["rows"]
        if r["error"] is None
        and r["side"] in ("wmtp-4heads", "wmtp-4heads+compile")
        and r.get("config", {}).get("compile") == compiles
    ]
    return max(found, key=lambda r: r["tokens_per_s"]) if found else None


def at(rows: list[dict], side: str, micro_batch: int) -> dict | None:
    return next((r for r in measured(rows, side) if r["micro_batch"] == micro_batch), None)


def common_batch(rows: list[dict], a: str, b: str, prefer: int | None) -> int | None:
    """``prefer`` when both sides measured it, else the largest micro-batch both measured."""
    both = {r["micro_batch"] for r in measured(rows, a)} & {
        r["micro_batch"] for r in measured(rows, b)
    }
    if prefer in both:
        return prefer
    return max(both) if both else None


def ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b else None


def best_peer(results: dict, *, with_float8: bool = False) -> dict | None:
    """The peer side with the most tokens/s at its best micro-batch: among the bf16 peers, or with
    ``with_float8`` among the float8 peers too (``titan+float8``: what wmtp's float8 is set
    against)."""
    rows = results["rows"]
    sides = [s for s in results["sides"] if not s.startswith("wmtp-")]
    if not with_float8:
        sides = [s for s in sides if not is_float8(s)]
    peers = [r for r in (best(rows, side) for side in sides) if r is not None]
    return max(peers, key=lambda r: r["tokens_per_s"]) if peers else None


def mtp4(rows: list[dict], setting: str = "") -> dict:
    """Four heads against one at the same micro-batch (one head's best where both ran), both at
    one setting (``setting``: "" or e.g. "+compile")."""
    ntp, four_heads = f"wmtp-1head{setting}", f"wmtp-4heads{setting}"
    one = best(rows, ntp)
    b = common_batch(rows, ntp, four_heads, one and one["micro_batch"])
    if b is None:
        return {}
    one, four = at(rows, ntp, b), at(rows, four_heads, b)
    time_ratio = four["step"]["median_ms"] / one["step"]["median_ms"]
    flop_ratio = four["flops_per_token"] / one["flops_per_token"]
    return {
        "micro_batch": b,
        "step_time_ratio_vs_ntp": time_ratio,
        "flop_ratio_vs_ntp": flop_ratio,
        "step_time_over_flop_floor": time_ratio / flop_ratio,
        "peak_memory_ratio_vs_ntp": ratio(four["peak_memory_gib"], one["peak_memory_gib"]),
    }


def brief(row: dict | None) -> dict | None:
    if row is None:
        return None
    keys = ("side", "micro_batch", "tokens_per_s", "mfu", "peak_memory_gib")
    return {k: row[k] for k in keys} | {"step_ms": row["step"]["median_ms"]}


def full1b_figures(results: dict) -> dict:
    rows = results["rows"]
    wmtp, peer = best(rows, "wmtp-1head"), best_peer(results)
    four = mtp4(rows)
    return {
        "best_peer": peer and f"{peer['side']} at micro-batch {peer['micro_batch']}",
        "ratio_vs_best_peer": ratio(wmtp and wmtp["tokens_per_s"], peer and peer["tokens_per_s"]),
        "mfu_ntp": wmtp and wmtp["mfu"],
        "ntp_micro_batch": wmtp and wmtp["micro_batch"],
        "mtp4_step_time_over_flop_floor": four.get("step_time_over_flop_floor"),
        "mtp4_peak_memory_ratio_vs_ntp": four.get("peak_memory_ratio_vs_ntp"),
        "mtp4_step_time_ratio_vs_ntp": four.get("step_time_ratio_vs_ntp"),
        "mtp4_flop_ratio_vs_ntp": four.get("flop_ratio_vs_ntp"),
        "mtp4_micro_batch": four.get("micro_batch"),
        "full1b_best": {"wmtp-1head": brief(wmtp), "peer": brief(peer)},
    }


def memory_ratios(rows: list[dict], side: str, peer: str) -> dict[str, float]:
    """``{micro-batch: side's peak memory / peer's}`` where both measured it."""
    out = {}
    for mine in sorted(measured(rows, side), key=lambda r: r["micro_batch"]):
        theirs = at(rows, peer, mine["micro_batch"])
        if theirs and theirs["peak_memory_gib"]:
            out[str(mine["micro_batch"])] = mine["peak_memory_gib"] / theirs["peak_memory_gib"]
    return out


def lora7b_figures(results: dict) -> dict:
    rows = results["rows"]
    four, one = best_setting(rows, "wmtp-4heads"), best_setting(rows, "wmtp-1head")
    peer = best_peer(results)
    peer_tps = peer and peer["tokens_per_s"]
    peer_sides = [s for s in results["sides"] if not s.startswith("wmtp-") and not is_float8(s)]
    mine = four["side"] if four else "wmtp-4heads"  # wmtp's best setting
    by_peer = {p: memory_ratios(rows, mine, p) for p in peer_sides}
    memory_batch = peer and common_batch(rows, mine, peer["side"], four and four["micro_batch"])
    heads = mtp4(rows, mine.removeprefix("wmtp-4heads"))
    written = as_written(results)
    return {
        "lora7b_best_peer": peer and f"{peer['side']} at micro-batch {peer['micro_batch']}",
        "lora7b_ratio_vs_best_peer": ratio(four and four["tokens_per_s"], peer_tps),
        "lora7b_as_written_ratio_vs_best_peer": ratio(
            written and written["tokens_per_s"], peer_tps
        ),
        "lora7b_ntp_ratio_vs_best_peer": ratio(one and one["tokens_per_s"], peer_tps),
        "lora7b_peak_memory_ratio_vs_peer": peer and by_peer[peer["side"]].get(str(memory_batch)),
        "lora7b_peak_memory_micro_batch": memory_batch,
        "lora7b_peak_memory_ratio_vs_peers_by_micro_batch": {
            p: ratios for p, ratios in by_peer.items() if ratios
        },
        "lora7b_mfu": {
            "wmtp-4heads": four and four["mfu"],
            "wmtp-1head": one and one["mfu"],
            "best_peer": peer and peer["mfu"],
        },
        "lora7b_mtp4_step_time_over_flop_floor": heads.get("step_time_over_flop_floor"),
        "lora7b_mtp4_peak_memory_ratio_vs_ntp": heads.get("peak_memory_ratio_vs_ntp"),
        "lora7b_mtp4_micro_batch": heads.get("micro_batch"),
        "lora7b_best": {"wmtp-4heads": brief(four), "wmtp-1head": brief(one), "peer": brief(peer)},
    }


def not_run(results: dict) -> dict[str, str]:
    """Sides with no measured row, and why (their error rows, or no row at all)."""
    out = {}
    for side in results["sides"]:
        if measured(results["rows"], side):
            continue
        errors = [r["error"] for r in results["rows"] if r["side"] == side]
        out[side] = errors[-1] if errors else "not measured: no row (not run, or stopped)"
    return out


PEERS = "a peer"
FIGURE_SIDES = {
    "best_peer": ("full1b", PEERS),
    "ratio_vs_best_peer": ("full1b", "wmtp-1head", PEERS),
    "mfu_ntp": ("full1b", "wmtp-1head"),
    "mtp4_step_time_over_flop_floor": ("full1b", "wmtp-1head", "wmtp-4heads"),
    "mtp4_peak_memory_ratio_vs_ntp": ("full1b", "wmtp-1head", "wmtp-4heads"),
    "lora7b_best_peer": ("lora7b", PEERS),
    "lora7b_ratio_vs_best_peer": ("lora7b", "wmtp-4heads", PEERS),
    "lora7b_peak_memory_ratio_vs_peer": ("lora7b", "wmtp-4heads", PEERS),
}
"""Issue 20's figures from the peers' rows: the shape and the sides each needs measured."""


def why_missing(shapes: dict, shape: str, sides: tuple[str, ...]) -> str:
    """Why a figure of ``shape`` needing ``sides`` is null: no results file, the sides with no
    measured row (with their error rows' reasons), else no micro-batch both sides measured."""
    if shape not in shapes:
        return f"not measured: no {shape}.json (`wmtp bench peers --shape {shape}`)"
    results = shapes[shape]
    unmeasured = not_run(results)
    peers = [s for s in results["sides"] if not s.startswith("wmtp-")]
    missing = []
    for side in sides:
        if side == PEERS and all(p in unmeasured for p in peers):
            missing += [f"{p} ({unmeasured[p]})" for p in peers]
        elif side in unmeasured:
            missing.append(f"{side} ({unmeasured[side]})")
    if missing:
        return f"not measured: no measured row of {'; '.join(missing)} in {shape}.json"
    return f"not measured: no micro-batch measured by both {' and '.join(sides)} in {shape}.json"


def with_reasons(summary: dict, shapes: dict) -> dict:
    """Every figure of :data:`FIGURE_SIDES` present: its value, or null and, in
    ``not_measured``, why."""
    for key, (shape, *sides) in FIGURE_SIDES.items():
        if summary.get(key) is None:
            summary[key] = None
            summary["not_measured"][key] = why_missing(shapes, shape, tuple(sides))
    return summary


RUN_WARMUP_STEPS = 5
"""Steps of a timed `wmtp run` left out (compilation, allocator warm-up), as bench step's warm-up."""


def run_vs_step(folder: Path) -> dict | None:
    """`wmtp run` against `wmtp bench step` on the same recipe and settings: ``folder`` holds
    bench step's result file (``<recipe stem>.json``) and the run's ``metrics.jsonl``
    (bench/h200.sh's stage ``run_vs_step``); the run's figures are medians of its logged steps
    after :data:`RUN_WARMUP_STEPS`.

    ``ratio``: the run's positions per second (its rows' tokens, padding included: what the
    model computes over, ``row_tokens`` in its metrics) over bench step's (whose rows are always
    ``seq_len`` long), so the loop's own cost (data, clipping, the optimizer, logging inside the
    step) whatever lengths the run's rows have: packed rows are padded to a multiple of the
    compiled blocks' length, not to ``seq_len``, and padded ones to their longest example.
    Metrics written before ``row_tokens`` was logged: with packed rows the ratio of step times,
    padded the ratio of tokens/s. The run's tokens/s counts real tokens (not padding):
    ``run_fill`` is their share of the rows."""
    import statistics

    benches, metrics = sorted(folder.glob("*.json")), folder / "metrics.jsonl"
    if len(benches) != 1 or not metrics.is_file():
        return None
    bench = json.loads(benches[0].read_text())
    records = [json.loads(line) for line in metrics.read_text().splitlines() if line.strip()]
    steps = [r for r in records if "tokens_per_s" in r and r["step"] > RUN_WARMUP_STEPS]
    if not steps:
        return None
    config = bench["config"]
    row_tokens = config["micro_batch_size"] * config["grad_accum_steps"] * config["seq_len"]
    run_step_s = statistics.median(r["step_time_s"] for r in steps)
    bench_step_s = bench["step"]["median_ms"] / 1000
    run_tps = statistics.median(r["tokens_per_s"] for r in steps)
    figures = {
        "run_steps": len(steps),
        "run_step_s_median": run_step_s,
        "bench_step_s_median": bench_step_s,
        "run_tokens_per_s_median": run_tps,
        "bench_step_tokens_per_s": bench["tokens_per_s"],
    }
    if all("row_tokens" in r for r in steps):
        positions_per_s = statistics.median(r["row_tokens"] / r["step_time_s"] for r in steps)
        return figures | {
            "ratio": positions_per_s / bench["tokens_per_s"],
            "compared": "positions per second (the rows' tokens, padding included)",
            "run_fill": statistics.median(r["tokens"] / r["row_tokens"] for r in steps),
        }
    same_shapes = bool(config.get("packing"))
    return figures | {
        "ratio": bench_step_s / run_step_s if same_shapes else run_tps / bench["tokens_per_s"],
        "compared": "step time, same shapes (packed rows)" if same_shapes else "tokens/s",
        "run_fill": statistics.median(r["tokens"] for r in steps) / row_tokens,
    }


def run_vs_step_lines(detail: dict | None) -> list[str]:
    """The timed run against bench step, in words (``run_vs_step``'s figures)."""
    if not detail:
        return []
    return [
        "",
        f"`wmtp run` against `wmtp bench step` ({detail['compared']}): a median step of "
        f"{detail['run_step_s_median'] * 1000:.0f} ms over {detail['run_steps']} steps against "
        f"{detail['bench_step_s_median'] * 1000:.0f} ms. The run's rows are "
        f"{detail['run_fill']:.0%} real tokens, so it trains "
        f"{detail['run_tokens_per_s_median']:,.0f} real tokens/s where bench step counts "
        f"{detail['bench_step_tokens_per_s']:,.0f} row tokens/s.",
    ]


def float8_full1b(results: dict) -> dict | None:
    """wmtp one head with ``parallel.float8`` over the same in bf16, at the float8 side's best
    micro-batch where both measured it (bench/h200.sh's stage float8 runs it at wmtp-1head's
    best), and over the best peer at its own best, a float8 peer (torchtitan's) included."""
    rows = results["rows"]
    float8 = best(rows, "wmtp-1head+float8")
    bf16 = float8 and at(rows, "wmtp-1head", float8["micro_batch"])
    if bf16 is None:
        return None
    peer = best_peer(results, with_float8=True)
    return {
        "micro_batch": float8["micro_batch"],
        "best_peer": peer and f"{peer['side']} at micro-batch {peer['micro_batch']}",
        "ratio_vs_bf16": float8["tokens_per_s"] / bf16["tokens_per_s"],
        "ratio_vs_best_peer": ratio(float8["tokens_per_s"], peer and peer["tokens_per_s"]),
        "peak_memory_ratio_vs_bf16": ratio(float8["peak_memory_gib"], bf16["peak_memory_gib"]),
        "float8": brief(float8),
        "bf16": brief(bf16),
    }


def float8_lora7b(folder: Path) -> dict | None:
    """`wmtp bench step` of the LoRA recipe, compiled, with ``parallel.float8`` over without
    (``folder``/lora7b_float8/ and lora7b_bf16/, each holding bench step's one result file)."""
    found = {
        mode: sorted((folder / f"lora7b_{mode}").glob("*.json")) for mode in ("bf16", "float8")
    }
    if any(len(files) != 1 for files in found.values()):
        return None
    bf16, float8 = (json.loads(files[0].read_text()) for files in found.values())
    keys = ("tokens_per_s", "mfu", "peak_memory_gib")
    return {
        "micro_batch": float8["config"]["micro_batch_size"],
        "ratio_vs_bf16": float8["tokens_per_s"] / bf16["tokens_per_s"],
        "float8": {k: float8[k] for k in keys} | {"step_ms": float8["step"]["median_ms"]},
        "bf16": {k: bf16[k] for k in keys} | {"step_ms": bf16["step"]["median_ms"]},
    }


def float8_lora7b_vs_peer(lora: dict, results: dict) -> dict:
    """The float8 LoRA step against the best LoRA peer at its own best micro-batch, a float8 peer
    included (tokens/s), and against that peer's row at the float8 step's micro-batch (peak
    memory)."""
    peer = best_peer(results, with_float8=True)
    if peer is None:
        return {}
    same_batch = at(results["rows"], peer["side"], lora["micro_batch"])
    return {
        "best_peer": f"{peer['side']} at micro-batch {peer['micro_batch']}",
        "ratio_vs_best_peer": lora["float8"]["tokens_per_s"] / peer["tokens_per_s"],
        "peak_memory_ratio_vs_peer": ratio(
            lora["float8"]["peak_memory_gib"], same_batch and same_batch["peak_memory_gib"]
        ),
    }


LOSS_WINDOW = 20
"""The final loss of a run: the mean of its last this many logged steps' losses."""


def float8_loss(folder: Path) -> dict | None:
    """The final loss of `wmtp run` with ``parallel.float8`` against the same run in bf16
    (``folder``/loss_{bf16,float8}.jsonl: their metrics.jsonl), as (float8 - bf16) / bf16; only
    steps both runs logged count."""
    paths = {mode: folder / f"loss_{mode}.jsonl" for mode in ("bf16", "float8")}
    if not all(path.is_file() for path in paths.values()):
        return None
    losses = {mode: step_losses(path) for mode, path in paths.items()}
    steps = sorted(set(losses["bf16"]) & set(losses["float8"]))[-LOSS_WINDOW:]
    if not steps:
        return None
    final = {mode: sum(by_step[s] for s in steps) / len(steps) for mode, by_step in losses.items()}
    return {
        "rel_diff": (final["float8"] - final["bf16"]) / final["bf16"],
        "final_loss": final,
        "steps": [steps[0], steps[-1]],
        "last_step": {mode: max(by_step) for mode, by_step in losses.items()},
    }


def float8_loss_lines(loss: dict | None) -> list[str]:
    if not loss:
        return []
    final, (first, last) = loss["final_loss"], loss["steps"]
    return [
        "",
        f"float8's loss (`wmtp run`, the same seed, data and order): the mean over steps "
        f"{first}-{last} is {final['float8']:.4f} in float8 and {final['bf16']:.4f} in bf16; "
        f"the runs logged up to step {loss['last_step']['float8']} and "
        f"{loss['last_step']['bf16']}.",
    ]


def step_losses(path: Path) -> dict[int, float]:
    """``{step: loss}`` of the training steps a metrics.jsonl logged."""
    records = (json.loads(line) for line in path.read_text().splitlines() if line.strip())
    return {r["step"]: r["loss"] for r in records if "loss" in r}


def float8_figures(folder: Path, shapes: dict) -> dict:
    """The float8 keys that were measured (the others stay in ``not_measured``)."""
    full = float8_full1b(shapes["full1b"]) if "full1b" in shapes else None
    lora, loss = float8_lora7b(folder / "float8"), float8_loss(folder / "float8")
    figures = {}
    if full:
        figures |= {
            "float8_ratio_vs_bf16": full["ratio_vs_bf16"],
            "float8_ratio_vs_best_peer": full["ratio_vs_best_peer"],
            "float8_full1b": full,
        }
    if lora:
        if "lora7b" in shapes:
            lora |= float8_lora7b_vs_peer(lora, shapes["lora7b"])
        figures |= {"lora7b_float8_ratio_vs_bf16": lora["ratio_vs_bf16"], "float8_lora7b": lora}
        figures["lora7b_float8_ratio_vs_best_peer"] = lora.get("ratio_vs_best_peer")
    if loss:
        figures |= {"float8_loss_rel_diff": loss["rel_diff"], "float8_loss": loss}
    return figures


def summarise(folder: Path) -> dict:
    shapes = {}
    for shape in ("full1b", "lora7b"):
        path = folder / f"{shape}.json"
        if path.is_file():
            shapes[shape] = json.loads(path.read_text())
    if not shapes:
        raise SystemExit(f"{folder}: no full1b.json or lora7b.json (`wmtp bench peers` results)")
    first = next(iter(shapes.values()))
    summary = {
        "device": first["device"],
        "gpus": first["gpus"],
        "versions": first["versions"],
        "mfu_formula": first["mfu_formula"],
        "memory_measure": first["memory_measure"],
    }
    for key, figures in (("full1b", full1b_figures), ("lora7b", lora7b_figures)):
        if key in shapes:
            summary |= figures(shapes[key])
    summary |= dict.fromkeys(NOT_MEASURED) | {"not_measured": dict(NOT_MEASURED)}
    for key, value in float8_figures(folder, shapes).items():
        summary[key] = value
        summary["not_measured"].pop(key, None)
    timed = run_vs_step(folder / "run_vs_step")
    if timed:
        summary["run_vs_bench_step"] = timed["ratio"]
        summary["run_vs_bench_step_detail"] = timed
        del summary["not_measured"]["run_vs_bench_step"]
    with_reasons(summary, shapes)
    summary["unmeasured_sides"] = {shape: not_run(r) for shape, r in shapes.items()}
    summary["shapes"] = {
        shape: {k: r[k] for k in ("description", "seq_len", "model", "lora", "sides", "commands")}
        for shape, r in shapes.items()
    }
    summary["rows"] = {shape: r["rows"] for shape, r in shapes.items()}
    steps = folder / "steps.jsonl"
    if steps.is_file():
        summary["stages"] = [json.loads(line) for line in steps.read_text().splitlines() if line]
    return summary


def _f(value, spec: str = ".2f", suffix: str = "") -> str:
    return "not measured" if value is None else f"{value:{spec}}{suffix}"


def _setting(row: dict | None) -> str:
    return f"{row['side']} at micro-batch {row['micro_batch']}" if row else "not measured"


def markdown(s: dict) -> str:
    lines = [
        "# wmtp against the peers a user would pick (issue 20)",
        "",
        f"Machine: {s['device']} x {s['gpus']}; "
        + ", ".join(f"{k} {v}" for k, v in s["versions"].items() if v),
        "",
        f"Run: `{s.get('script') or 'wmtp bench peers (the commands of each shape, below)'}`",
        "",
        f"- **MFU**: {s['mfu_formula']}.",
        f"- **Memory**: {s['memory_measure']}.",
        "- Each side at its best micro-batch (the most tokens/s of its sweep, which stops at the "
        "first micro-batch that runs out of memory); every measured row is below.",
        "",
        "## Headline",
        "",
        "| figure | value |",
        "|---|---|",
    ]
    rows = [
        ("1B full FT: best peer", s.get("best_peer") or "not measured"),
        ("1B full FT: wmtp one head / best peer", _f(s.get("ratio_vs_best_peer"), ".2f", "x")),
        ("1B full FT: wmtp one head MFU", _f(s.get("mfu_ntp"), ".1%")),
        ("1B: four heads' step time over their FLOP floor (vocab 32000)",
         _f(s.get("mtp4_step_time_over_flop_floor"), ".3f", "x")),
        ("1B: four heads / one head peak memory", _f(s.get("mtp4_peak_memory_ratio_vs_ntp"))),
        ("LoRA 7B: best peer (one head)", s.get("lora7b_best_peer") or "not measured"),
        ("LoRA 7B: wmtp four heads' best setting", _setting(s.get("lora7b_best", {}).get("wmtp-4heads"))),
        ("LoRA 7B: wmtp four heads / best peer", _f(s.get("lora7b_ratio_vs_best_peer"), ".2f", "x")),
        (_as_written_label(s), _f(s.get("lora7b_as_written_ratio_vs_best_peer"), ".2f", "x")),
        ("LoRA 7B: the recipe as written / best peer peak memory",
         _f(s.get("lora7b_as_written_peak_memory_ratio_vs_peer"))),
        ("LoRA 7B: wmtp one head / best peer",
         _f(s.get("lora7b_ntp_ratio_vs_best_peer"), ".2f", "x")),
        (f"LoRA 7B: wmtp four heads / best peer peak memory (both at micro-batch "
         f"{s.get('lora7b_peak_memory_micro_batch')})",
         _f(s.get("lora7b_peak_memory_ratio_vs_peer"))),
        ("LoRA 7B: four heads' step time over their FLOP floor",
         _f(s.get("lora7b_mtp4_step_time_over_flop_floor"), ".3f", "x")),
        ("1B full FT: float8 / bf16 tokens/s (wmtp one head, compiled, same micro-batch)",
         _f(s.get("float8_ratio_vs_bf16"), ".2f", "x")),
        ("1B full FT: wmtp one head in float8 / best peer",
         _f(s.get("float8_ratio_vs_best_peer"), ".2f", "x")),
        ("LoRA 7B: float8 / bf16 tokens/s (four heads, compiled, same micro-batch)",
         _f(s.get("lora7b_float8_ratio_vs_bf16"), ".2f", "x")),
        ("LoRA 7B: wmtp four heads in float8 / best peer (bf16)",
         _f(s.get("lora7b_float8_ratio_vs_best_peer"), ".2f", "x")),
        (f"LoRA 7B: wmtp four heads in float8 / best peer peak memory (both at micro-batch "
         f"{s.get('float8_lora7b', {}).get('micro_batch')})",
         _f(s.get("float8_lora7b", {}).get("peak_memory_ratio_vs_peer"))),
        (f"float8 / bf16 final loss - 1 (`wmtp run`, mean of the last {LOSS_WINDOW} steps)",
         _f(s.get("float8_loss_rel_diff"), "+.2%")),
        ("`wmtp run` / `wmtp bench step` speed (the LoRA recipe, packed HumanEval: "
         f"{s.get('run_vs_bench_step_detail', {}).get('compared', 'step time')})",
         _f(s.get("run_vs_bench_step"), ".3f")),
    ]  # fmt: skip
    lines += [f"| {name} | {value} |" for name, value in rows]
    lines += run_vs_step_lines(s.get("run_vs_bench_step_detail"))
    lines += float8_loss_lines(s.get("float8_loss"))
    by_peer = s.get("lora7b_peak_memory_ratio_vs_peers_by_micro_batch") or {}
    if by_peer:
        lines += [
            "",
            "LoRA 7B, wmtp four heads' peak memory over each peer's, per micro-batch:",
            "",
        ]
        lines += [
            f"- {peer}: " + ", ".join(f"b{b} {r:.2f}" for b, r in ratios.items())
            for peer, ratios in by_peer.items()
        ]
    for shape, info in s["shapes"].items():
        lines += ["", f"## {shape}: {info['description']}", "", "Commands:", ""]
        lines += [f"    {c}" for c in info["commands"]] or ["    (not recorded)"]
        lines += ["", "Sides:", ""] + [f"- `{k}`: {v}" for k, v in info["sides"].items()]
        lines += ["", "| side | micro-batch | tokens/s | MFU | peak GiB | step ms |"]
        lines.append("|---|---|---|---|---|---|")
        for r in s["rows"][shape]:
            if r["error"] is not None:
                lines.append(f"| {r['side']} | {r['micro_batch'] or '-'} | {r['error']} | | | |")
                continue
            lines.append(
                f"| {r['side']} | {r['micro_batch']} | {r['tokens_per_s']:,.0f} | "
                f"{_f(r['mfu'], '.1%')} | {_f(r['peak_memory_gib'])} | {r['step']['median_ms']:.1f} |"
            )
        missing = s["unmeasured_sides"].get(shape, {})
        if missing:
            why = (f"`{k}` ({v.removeprefix('not measured: ')})" for k, v in missing.items())
            lines += ["", "Sides with no measured row: " + "; ".join(why) + "."]
    if s.get("stages"):
        lines += [
            "",
            f"Stages of `{s.get('script') or 'bench/h200.sh'}` (wall s, exit status):",
            "",
        ]
        lines += [f"- {st['label']}: {st['seconds']} s, rc {st['rc']}" for st in s["stages"]]
    return "\n".join(lines) + "\n"


def _as_written_label(s: dict) -> str:
    written = s.get("lora7b_as_written")
    if written is None:
        return "LoRA 7B: the recipe as written (four heads; blocks compiled on CUDA) / best peer"
    return (
        f"LoRA 7B: the recipe as written (four heads, micro-batch {written['micro_batch']}, "
        f"{written['grad_accum']} accumulated, checkpointing {written['activation_checkpointing']}"
        "; `wmtp bench step`, h200_step.md) / best peer"
    )


def with_step_figures(summary: dict, step: dict) -> dict:
    """``summary`` with the LoRA recipe as written measured by ``wmtp bench step`` at its own
    micro-batch and accumulation (an h200_step.json's ``lora7b_as_written``, against the same
    best peer), in place of the peers sweep's one-optimizer-step-per-micro-batch rows."""
    written = step.get("lora7b_as_written")
    if written is None:
        return summary
    return summary | {
        "lora7b_as_written": written,
        "lora7b_as_written_ratio_vs_best_peer": written["ratio_vs_peer"],
        "lora7b_as_written_peak_memory_ratio_vs_peer": written["peak_memory_ratio_vs_peer"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--results", type=Path, help="wmtp bench peers --out DIR")
    source.add_argument(
        "--from-summary", type=Path, help="An h200.json to write again (with --step's figures)."
    )
    parser.add_argument("--out", type=Path, help="Folder for h200.json/md (default: --results).")
    parser.add_argument("--script", default="", help="The command that ran the stages.")
    parser.add_argument(
        "--step", type=Path, help="An h200_step.json: the LoRA recipe as written, by bench step."
    )
    args = parser.parse_args()
    if args.results is not None:
        out = args.out or args.results
        summary = summarise(args.results)
    else:
        out = args.out or args.from_summary.parent
        summary = json.loads(args.from_summary.read_text())
    summary |= {"script": args.script} if args.script else {}
    if args.step is not None and args.step.is_file():
        summary = with_step_figures(summary, json.loads(args.step.read_text()))
    out.mkdir(parents=True, exist_ok=True)
    (out / "h200.json").write_text(json.dumps(summary, indent=2) + "\n")
    (out / "h200.md").write_text(markdown(summary))
    print(f"wrote {out / 'h200.json'} and {out / 'h200.md'}")


if __name__ == "__main__":
    main()
