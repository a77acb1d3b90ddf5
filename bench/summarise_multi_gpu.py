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
    """Target tokens/s over the steps after warm-up (total tokens / total step time) and MFU."""
    steps = [r for r in records if "tokens_per_s" in r and r["step"] > WARMUP_STEPS]
    steps = [r for r in steps if r["tokens_per_s"] > 0 and "tokens/head1" in r]
    if not steps:
        return {}
    tokens = sum(r["tokens/head1"] for r in steps)
    seconds = sum(r["tokens/head1"] / r["tokens_per_s"] for r in steps)
    out = {
        "steps": len(steps),
        "tokens": tokens,
        "seconds": seconds,
        "tokens_per_s": tokens / seconds,
    }
    mfus = [(r["mfu"], r["tokens/head1"] / r["tokens_per_s"]) for r in steps if "mfu" in r]
    if mfus:  # time-weighted mean of the per-step MFU
        out["mfu"] = sum(m * t for m, t in mfus) / sum(t for _, t in mfus)
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


def tokens_per_step(run: Path, steps: int) -> list[dict]:
    """Non-padding tokens and padded positions of each of the first ``steps`` global batches of
    ``run``, rebuilt on CPU from its recipe exactly as the trainer batches them (any world size
    sees the same global batches and micro-batches). The trainer's tokens/s and MFU count only
    target tokens (prompts are masked), so these give the throughput over every token."""
    from wmtp import registry
    from wmtp.recipe import load_recipe
    from wmtp.train.data_source import StepBatches, load_train_data

    recipe = load_recipe(run / "recipe.toml").recipe
    tokenizer = registry.get("tokenizer", recipe.tokenizer.kind)(recipe.tokenizer)
    pipeline = registry.get("pipeline", recipe.experiment.pipeline)(recipe)
    data = load_train_data(recipe.data, tokenizer, recipe.experiment.seed)
    t = recipe.training
    batches = StepBatches(
        lambda epoch: data.epoch_order(epoch, correct_only=pipeline.correct_only),
        lambda rows: next(data.batches(rows, len(rows))),
        micro_batch_size=t.micro_batch_size,
        grad_accum_steps=t.grad_accum_steps,
    )
    out = []
    for _ in range(steps):
        micro = batches.next_step()
        mask = [b.get("attention_mask") for b in micro]
        tokens = sum(
            int(m.sum()) if m is not None else b["input_ids"].numel()
            for m, b in zip(mask, micro, strict=True)
        )
        targets = sum(int((b["labels"] != -100).sum()) for b in micro)
        positions = sum(b["input_ids"].numel() for b in micro)
        out.append({"tokens": tokens, "positions": positions, "targets": targets})
    return out


def all_token_throughput(records: list[dict], per_step: list[dict]) -> dict:
    """Every-token tokens/s and MFU of the steps after warm-up (MFU scaled from the trainer's
    target-token MFU by tokens / target tokens of each step)."""
    steps = [r for r in records if "tokens_per_s" in r and "tokens/head1" in r]
    steps = [
        r for r in steps if WARMUP_STEPS < r["step"] <= len(per_step) and r["tokens_per_s"] > 0
    ]
    if not steps:
        return {}
    seconds = [r["tokens/head1"] / r["tokens_per_s"] for r in steps]
    tokens = [per_step[r["step"] - 1]["tokens"] for r in steps]
    # The rebuilt batches are the trained ones: their label counts bound the logged head-1 targets
    # (head 1 loses at most one target per sequence to the shift).
    mismatch = max(abs(per_step[r["step"] - 1]["targets"] - r["tokens/head1"]) for r in steps)
    out = {
        "tokens_per_s": sum(tokens) / sum(seconds),
        "target_fraction": sum(r["tokens/head1"] for r in steps) / sum(tokens),
        "largest_label_count_gap": mismatch,
    }
    if all("mfu" in r for r in steps):
        scaled = [
            r["mfu"] * n / r["tokens/head1"] * dt
            for r, n, dt in zip(steps, tokens, seconds, strict=True)
        ]
        out["mfu"] = sum(scaled) / sum(seconds)
    return out


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
        "root_cause_rank1": "Root Cause" in log and "rank      : 1" in log,
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
    one_dir = run_dir(work, "one_gpu")
    if one_dir is not None and one:
        try:  # the same global batches in both runs: rebuild them once
            per_step = tokens_per_step(one_dir, max(r["step"] for r in one))
            result["throughput"]["all_tokens"] = {
                "one": all_token_throughput(one, per_step),
                "two": all_token_throughput(two, per_step),
            }
        except Exception as exc:  # the summary must still be written
            result["throughput"]["all_tokens"] = {"error": repr(exc)}
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
        "| devices | target tokens/s | MFU | peak GiB |",
        "|---|---|---|---|",
    ]
    for name, row in (("1", t.get("one", {})), ("2", t.get("two", {}))):
        lines.append(
            f"| {name} | {fmt(row.get('tokens_per_s'), 6)} | {fmt(row.get('mfu'))} | {fmt(row.get('peak_memory_gb'))} |"
        )
    everything = t.get("all_tokens", {})
    for name in ("one", "two"):
        row = everything.get(name, {})
        if row:
            lines.append(
                f"| {1 if name == 'one' else 2} (all tokens) | {fmt(row.get('tokens_per_s'), 6)} | "
                f"{fmt(row.get('mfu'))} | target fraction {fmt(row.get('target_fraction'))} |"
            )
    if "error" in everything:
        lines.append(f"| all tokens: not computed ({everything['error']}) | | | |")
    lines += [
        "",
        f"- speed-up 2 vs 1: {fmt(t.get('speedup'))} (steps > {WARMUP_STEPS}). Target tokens: "
        "response tokens only (prompts masked), as the trainer logs them; 'all tokens' counts "
        "every non-padding token of the same batches, rebuilt from the recipe",
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
                f"{f['timed_out']}); injected-fault messages: {f['injected_messages']}; torchrun "
                f"names rank 1 as root cause: {f['root_cause_rank1']}"
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
