"""Summarise bench/multi_gpu.sh: its run directories (under --work) and step log (--out/steps.jsonl)
into --out/multi_gpu.json and --out/multi_gpu.md.

    python3 bench/summarise_multi_gpu.py --work /tmp/wmtp_multi_gpu --out $OUT --device cuda

Every figure comes from the runs' own metrics.jsonl, per-rank state files (WMTP_RANK_STATE_DIR)
and checkpoints; nothing is re-measured here.
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

WARMUP_STEPS = 5
"""Steps left out of the throughput (allocator warm-up, first kernels)."""


def read_jsonl(path: Path) -> list[dict]:
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def run_dir(work: Path, label: str) -> Path | None:
    """The run directory of the step ``label``: ``work/label/<experiment>/latest`` or ``.../run``."""
    base = work / label
    if (base / "run").is_dir():
        return base / "run"
    found = sorted(base.glob("*/latest"))
    return found[0].resolve() if found else None


def metrics(work: Path, label: str) -> list[dict]:
    d = run_dir(work, label)
    return read_jsonl(d / "metrics.jsonl") if d else []


def losses(records: list[dict]) -> dict[int, float]:
    return {int(r["step"]): r["loss"] for r in records if "loss" in r and "tokens_per_s" in r}


def loss_gap(a: dict[int, float], b: dict[int, float], steps=None) -> dict:
    """Largest absolute and relative per-step loss difference over the common (or given) steps."""
    common = sorted(set(a) & set(b) if steps is None else set(steps) & set(a) & set(b))
    if not common:
        return {"steps": 0, "max_abs": None, "max_rel": None}
    gaps = [(s, abs(a[s] - b[s]), abs(a[s] - b[s]) / max(abs(b[s]), 1e-12)) for s in common]
    worst = max(gaps, key=lambda g: g[1])
    return {
        "steps": len(common),
        "max_abs": worst[1],
        "max_rel": max(g[2] for g in gaps),
        "at_step": worst[0],
        "first_loss": (a[common[0]], b[common[0]]),
        "last_loss": (a[common[-1]], b[common[-1]]),
    }


def throughput(records: list[dict]) -> dict:
    """Input tokens/s over the steps after warm-up (their tokens / their step time), target
    tokens/s, the time-weighted MFU, the median step time and the peak memory, from the trainer's
    per-step ``tokens``, ``step_time_s``, ``tokens/head1`` and ``mfu``."""
    steps = [r for r in records if r.get("step_time_s") and r["step"] > WARMUP_STEPS]
    if not steps:
        return {}
    seconds = sum(r["step_time_s"] for r in steps)
    times = sorted(r["step_time_s"] for r in steps)
    out = {
        "steps": len(steps),
        "tokens": sum(r["tokens"] for r in steps),
        "seconds": seconds,
        "tokens_per_s": sum(r["tokens"] for r in steps) / seconds,
        "step_time_s_median": times[len(times) // 2],
        "data_time_s_median": sorted(r.get("data_time_s", 0.0) for r in steps)[len(steps) // 2],
    }
    if all("tokens/head1" in r for r in steps):
        out["target_tokens_per_s"] = sum(r["tokens/head1"] for r in steps) / seconds
    if all("mfu" in r for r in steps):
        out["mfu"] = sum(r["mfu"] * r["step_time_s"] for r in steps) / seconds
    peaks = [r["peak_memory_gb"] for r in steps if "peak_memory_gb" in r]
    if peaks:
        out["peak_memory_gb"] = max(peaks)
    return out


def shared_state(state: dict) -> dict:
    """The part of a rank's batch-source state that must be equal on every rank: the data
    position and the weighting's whitening statistics (not the controls' per-rank generator)."""
    weighting = state.get("weighting", {})
    return {
        "data": state.get("data", state if "position" in state else None),
        "whitener": weighting.get("whitener"),
    }


def rank_states(work: Path, name: str) -> dict:
    """Per-rank state files: do all ranks hold the same data position and EMA whitening
    statistics after every step?"""
    files = sorted((work / name).glob("rank*.jsonl"))
    per_rank = {f.stem: read_jsonl(f) for f in files}
    env = {r: (v[0].get("env") if v else None) for r, v in per_rank.items()}
    out: dict = {"ranks": sorted(per_rank), "env": env}
    if len(per_rank) < 2:
        return {**out, "identical": None}
    rows = list(per_rank.values())
    steps = min(len(r) for r in rows)
    max_diff, identical = 0.0, True
    for i in range(steps):
        shared = [shared_state(r[i]["state"]) for r in rows]
        identical &= all(s == shared[0] for s in shared)
        for key in ("mean", "var"):
            vals = [s["whitener"][key] for s in shared if s["whitener"]]
            if vals:
                max_diff = max(max_diff, max(vals) - min(vals))
    last = {r: shared_state(v[steps - 1]["state"])["whitener"] for r, v in per_rank.items()}
    return {**out, "steps": steps, "identical": identical, "max_diff": max_diff, "last": last}


def safetensors_gap(a: Path, b: Path) -> dict:
    """Tensors of two consolidated exports: count, parameters, largest absolute difference."""
    if not (a.is_file() and b.is_file()):
        return {"compared": False, "missing": [str(p) for p in (a, b) if not p.is_file()]}
    from safetensors.torch import load_file

    x, y = load_file(str(a)), load_file(str(b))
    same_keys = x.keys() == y.keys()
    gap = max(
        (float((x[k].float() - y[k].float()).abs().max()) for k in x if k in y), default=math.nan
    )
    return {
        "compared": True,
        "tensors": len(x),
        "parameters": sum(t.numel() for t in x.values()),
        "same_keys": same_keys,
        "max_abs_diff": gap,
    }


def step_log(out: Path) -> dict[str, dict]:
    return {s["label"]: s for s in read_jsonl(out / "steps.jsonl")}


def fault_summary(out: Path, step: dict | None) -> dict:
    if step is None:
        return {}
    log = (out / "logs" / f"{step['label']}.log").read_text(errors="replace")
    return {
        "rc": step["rc"],
        "seconds": step["seconds"],
        "limit_s": step["limit_s"],
        "timed_out": step["rc"] in (124, 137),
        "injected_messages": log.count("injected fault (WMTP_FAULT)"),
        # wmtp run --nproc-per-node's launcher says which rank failed, once (torchrun's own
        # "Root Cause" report is kept out of the way: wmtp/train/launcher.py)
        "error_lines": log.count("error: rank "),
        "names_rank1": "error: rank 1 failed" in log,
        "python_tracebacks_of_workers": log.count("Traceback") - log.count("ChildFailedError"),
    }


def summarise(work: Path, out: Path, device: str) -> dict:
    steps = step_log(out)
    one, two = metrics(work, "one_gpu"), metrics(work, "two_gpu")
    tp_one, tp_two = throughput(one), throughput(two)
    result: dict = {"device": device, "steps": steps}
    result["parity"] = loss_gap(losses(two), losses(one))
    result["throughput"] = {"one": tp_one, "two": tp_two}
    if tp_one and tp_two:
        result["throughput"]["speedup"] = tp_two["tokens_per_s"] / tp_one["tokens_per_s"]
    result["strategies"] = {
        s: {"rc": steps.get(s, {}).get("rc"), "losses": list(losses(metrics(work, s)).values())}
        for s in ("shard_grad_op", "no_shard")
    }
    verifiable = metrics(work, "verifiable")
    result["verifiable"] = {
        "rc": steps.get("verifiable", {}).get("rc"),
        "steps_logged": len(losses(verifiable)),
        "rank_state": rank_states(work, "verifiable_state"),
    }
    result["launcher_env"] = rank_states(work, "two_gpu_state")["env"]
    result["checkpoints"] = {}
    for label, source in (
        ("resume_2_on_1", "save_on_2"),
        ("resume_2_on_cpu", "save_on_2"),
        ("resume_1_on_2", "save_on_1"),
    ):
        resumed, original = run_dir(work, label), run_dir(work, source)
        entry = {"rc": steps.get(label, {}).get("rc"), "from": source}
        if resumed and original:
            entry["loss_gap_steps_3_4"] = loss_gap(
                losses(metrics(work, label)), losses(metrics(work, source)), steps=(3, 4)
            )
            entry["export_vs_original"] = safetensors_gap(
                resumed / "checkpoints" / "step-4" / "model.safetensors",
                original / "checkpoints" / "step-4" / "model.safetensors",
            )
        result["checkpoints"][label] = entry
    result["faults"] = {
        k: fault_summary(out, steps.get(f"fault_{k}")) for k in ("raise", "sigkill")
    }
    return result


def fmt(x, digits=4) -> str:
    if x is None:
        return "-"
    if isinstance(x, float):
        return f"{x:.{digits}g}"
    return str(x)


def markdown(r: dict) -> str:
    p, t = r["parity"], r["throughput"]
    lines = [
        f"# Multi-GPU bench ({r['device']})",
        "",
        "## Runs",
        "",
        "| step | rc | seconds |",
        "|---|---|---|",
    ]
    lines += [f"| {s['label']} | {s['rc']} | {s['seconds']} |" for s in r["steps"].values()]
    lines += [
        "",
        "## 1 vs 2 devices, same global batch (full_shard)",
        "",
        f"- steps compared: {p['steps']}; largest loss difference {fmt(p['max_abs'])} "
        f"(relative {fmt(p['max_rel'])}) at step {p.get('at_step')}",
        f"- first/last loss (2 vs 1): {p.get('first_loss')} / {p.get('last_loss')}",
        "",
        "| devices | tokens/s | target tokens/s | MFU | step s (median) | peak GiB |",
        "|---|---|---|---|---|---|",
    ]
    for name, row in (("1", t.get("one", {})), ("2", t.get("two", {}))):
        lines.append(
            f"| {name} | {fmt(row.get('tokens_per_s'), 6)} | {fmt(row.get('target_tokens_per_s'), 6)} "
            f"| {fmt(row.get('mfu'))} | {fmt(row.get('step_time_s_median'))} "
            f"| {fmt(row.get('peak_memory_gb'))} |"
        )
    lines += [
        "",
        f"- speed-up 2 vs 1: {fmt(t.get('speedup'))} (steps > {WARMUP_STEPS}). tokens/s: every "
        "non-padding input token (the work done; MFU counts these); target tokens: the trained "
        "response tokens (prompts masked)",
        "",
        "## Sharding strategies on 2 devices",
        "",
    ]
    for s, v in r["strategies"].items():
        lines.append(f"- {s}: rc {v['rc']}, losses {[round(x, 4) for x in v['losses']]}")
    v = r["verifiable"]
    rs = v["rank_state"]
    lines += [
        "",
        "## Verifiable pipeline on 2 devices (critic sharded)",
        "",
        f"- rc {v['rc']}, {v['steps_logged']} steps logged; weighting state identical on all ranks "
        f"at every step: {rs.get('identical')} ({rs.get('steps')} steps, largest mean/var spread "
        f"{fmt(rs.get('max_diff'))})",
        f"- last EMA statistics per rank: {rs.get('last')}",
        f"- environment the 2-device workers saw: {r['launcher_env']}",
        "",
        "## Checkpoints across world sizes (resumed at step 2, steps 3-4 compared)",
        "",
    ]
    for label, c in r["checkpoints"].items():
        g = c.get("loss_gap_steps_3_4", {})
        e = c.get("export_vs_original", {})
        lines.append(
            f"- {label} (from {c['from']}): rc {c['rc']}, largest loss difference "
            f"{fmt(g.get('max_abs'))} over {g.get('steps')} steps; model.safetensors at step 4 vs "
            f"the original's: {e.get('tensors')} tensors, same keys {e.get('same_keys')}, "
            f"largest difference {fmt(e.get('max_abs_diff'))}"
        )
    lines += ["", "## Failures (rank 1 after step 2)", ""]
    for kind, f in r["faults"].items():
        if f:
            lines.append(
                f"- {kind}: rc {f['rc']} after {f['seconds']} s (limit {f['limit_s']} s, timed out: "
                f"{f['timed_out']}); injected-fault messages: {f['injected_messages']}; "
                f"error lines: {f['error_lines']}, naming rank 1: {f['names_rank1']}"
            )
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--work", type=Path, required=True, help="WORK of bench/multi_gpu.sh")
    ap.add_argument("--out", type=Path, required=True, help="OUT of bench/multi_gpu.sh")
    ap.add_argument("--device", default="cuda", help="cuda or cpu (dry run)")
    args = ap.parse_args()
    result = summarise(args.work, args.out, args.device)
    (args.out / "multi_gpu.json").write_text(json.dumps(result, indent=2, default=str) + "\n")
    text = markdown(result)
    (args.out / "multi_gpu.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
