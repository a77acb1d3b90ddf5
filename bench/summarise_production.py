"""Summarise bench/production.sh: its runs (under --work) into --out/production.json and .md.

    python3 bench/summarise_production.py --work /tmp/wmtp_production --out $OUT

Every figure comes from the runs' own metrics.jsonl (rank 0: tokens of all ranks, step time,
MFU, its own peak memory), the estimates ``wmtp validate --world-size N --format json`` wrote
beside them, and the NCCL probe's log; nothing is re-measured here.
"""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

from summarise_multi_gpu import fmt, metrics, read_jsonl, throughput

SKIP_FIRST = 3
"""Logged steps of each run (or resumed segment) left out: allocator warm-up, first kernels."""

RUNS = {  # label: (recipe, GPUs, first step of the segment)
    "critic": ("critic", 4, 1),
    "critic_2gpu": ("critic", 2, 1),
    "verifiable": ("verifiable", 4, 1),
    "verifiable_2gpu": ("verifiable", 2, 1),
    "baseline": ("baseline", 4, 1),
    "resume": ("baseline", 2, None),  # from the checkpoint step + 1
    "gpu2x_padded_1": ("gpu_2x", 1, 1),
    "gpu2x_padded_2": ("gpu_2x", 2, 1),
    "gpu2x_packed_compiled_1": ("gpu_2x", 1, 1),
    "gpu2x_packed_compiled_2": ("gpu_2x", 2, 1),
    "gpu2x_1gpu": ("gpu_2x", 1, 1),
    "gpu2x_1gpu_accum2": ("gpu_2x", 1, 1),
    "gpu2x_2gpu_full_shard": ("gpu_2x", 2, 1),
    "gpu2x_2gpu_shard_grad_op": ("gpu_2x", 2, 1),
    "gpu2x_2gpu_shard_grad_op_bfloat16": ("gpu_2x", 2, 1),
    **{f"gpu2x_fast_{g}_{r}": ("gpu_2x_fast", g, 1) for r in "ab" for g in (1, 2)},
}


def segment(records: list[dict], first: int) -> list[dict]:
    """Steps from ``first`` on, less the first SKIP_FIRST of them, renumbered so that
    ``throughput`` (which skips its own warm-up by step number) keeps them all."""
    rows = sorted(
        (r for r in records if r.get("step", 0) >= first and "step_time_s" in r),
        key=lambda r: r["step"],
    )[SKIP_FIRST:]
    return [dict(r, step=10**6 + i) for i, r in enumerate(rows)]


def estimate_gib(work: Path, label: str) -> float | None:
    path = work / "estimates" / f"{label}.json"
    try:
        recipe = json.loads(path.read_text())["recipes"][0]
        return recipe["estimate"]["memory_gib_per_gpu"]["total"]
    except (OSError, ValueError, KeyError, IndexError, TypeError):
        return None


def run_figures(work: Path, label: str, gpus: int, first: int) -> dict:
    records = metrics(work, label)
    tp = throughput(segment(records, first))
    if not tp:
        return {"logged_steps": len(records)}
    out = dict(tp, gpus=gpus, tokens_per_s_per_gpu=tp["tokens_per_s"] / gpus)
    losses = [r["loss"] for r in records if "loss" in r and r.get("step", 0) >= first]
    out["first_last_loss"] = [losses[0], losses[-1]] if losses else None
    est = estimate_gib(work, label)
    if est is not None and "peak_memory_gb" in tp:
        out["estimate_gib"] = est
        out["peak_vs_estimate"] = tp["peak_memory_gb"] / est
    return out


def nccl(work: Path, out: Path) -> dict:
    """The probe's JSON lines and the transports NCCL reported, from the step logs."""
    found = {}
    for log in sorted((work / "logs").glob("nccl_*.log")):
        text = log.read_text(errors="replace")
        lines = [json.loads(x) for x in re.findall(r"^\{.*\}$", text, re.M)]
        transports = sorted(set(re.findall(r"via (P2P/\S+|SHM\S*|NET/\S+|P2P\S*)", text)))
        found[log.stem] = {"result": lines[0] if lines else None, "transports": transports}
    return found


def resume_check(work: Path, checkpoint_step: int, rc: int | None) -> dict:
    """The steps after the checkpoint, resumed on 2 GPUs, against the uninterrupted 4-GPU run
    (only from a resume that ran: a failed one leaves the copied run's metrics behind)."""
    if rc != 0:
        return {"steps": 0, "rc": rc}
    base = {r["step"]: r["loss"] for r in metrics(work, "baseline") if "loss" in r}
    resumed = {r["step"]: r["loss"] for r in metrics(work, "resume") if "loss" in r}
    common = sorted(s for s in set(base) & set(resumed) if s > checkpoint_step)
    if not common:
        return {"steps": 0}
    gaps = [abs(base[s] - resumed[s]) for s in common]
    return {
        "steps": len(common),
        "largest_loss_difference": max(gaps),
        "losses_4gpu": [base[s] for s in common],
        "losses_2gpu": [resumed[s] for s in common],
    }


def summarise(work: Path, out: Path, checkpoint_step: int) -> dict:
    steps = {s["label"]: s for s in read_jsonl(work / "steps.jsonl")}
    runs = {}
    for label, (recipe, gpus, first) in RUNS.items():
        first = checkpoint_step + 1 if first is None else first
        if steps.get(label, {}).get("rc", 0) != 0:
            runs[label] = {"recipe": recipe, "rc": steps[label]["rc"], "gpus": gpus}
        elif label in steps:
            runs[label] = dict(
                recipe=recipe,
                rc=steps.get(label, {}).get("rc"),
                wall_s=steps.get(label, {}).get("seconds"),
                **run_figures(work, label, gpus, first),
            )
    scaling = {}
    for four, two in (
        ("critic", "critic_2gpu"),
        ("verifiable", "verifiable_2gpu"),
        ("baseline", "resume"),
        ("gpu2x_padded_2", "gpu2x_padded_1"),
        ("gpu2x_packed_compiled_2", "gpu2x_packed_compiled_1"),
        *(
            (f"gpu2x_2gpu_{variant}", f"gpu2x_1gpu{reference}")
            for variant in ("full_shard", "shard_grad_op", "shard_grad_op_bfloat16")
            for reference in ("", "_accum2")
        ),
        ("gpu2x_fast_2_a", "gpu2x_fast_1_a"),
        ("gpu2x_fast_2_b", "gpu2x_fast_1_b"),
    ):
        a, b = runs.get(four, {}), runs.get(two, {})
        if a.get("tokens_per_s") and b.get("tokens_per_s"):
            scaling[f"{four} / {two}"] = {
                "gpus": [a["gpus"], b["gpus"]],
                "speedup": a["tokens_per_s"] / b["tokens_per_s"],
                "efficiency": (a["tokens_per_s"] / a["gpus"]) / (b["tokens_per_s"] / b["gpus"]),
            }
    decode = work / "decode.json"
    return {
        "decode": json.loads(decode.read_text()) if decode.is_file() else None,
        "steps": steps,
        "runs": runs,
        "scaling": scaling,
        "nccl": nccl(work, out),
        "resume_4_to_2": resume_check(work, checkpoint_step, steps.get("resume", {}).get("rc")),
    }


def markdown(r: dict) -> str:
    lines = [
        "# Production recipes on several GPUs",
        "",
        "| run | GPUs | rc | tokens/s/GPU | MFU | step s | peak GiB | estimate GiB | peak/est |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for label, row in r["runs"].items():
        lines.append(
            f"| {label} | {row.get('gpus', '-')} | {row.get('rc')} "
            f"| {fmt(row.get('tokens_per_s_per_gpu'), 6)} | {fmt(row.get('mfu'))} "
            f"| {fmt(row.get('step_time_s_median'))} | {fmt(row.get('peak_memory_gb'))} "
            f"| {fmt(row.get('estimate_gib'))} | {fmt(row.get('peak_vs_estimate'), 3)} |"
        )
    lines += ["", "| scaling | GPUs | speed-up | efficiency per GPU |", "|---|---|---|---|"]
    for name, s in r["scaling"].items():
        lines.append(
            f"| {name} | {s['gpus'][0]} vs {s['gpus'][1]} | {fmt(s['speedup'], 3)} "
            f"| {fmt(s['efficiency'], 3)} |"
        )
    lines += [
        "",
        f"- resume 4 -> 2 GPUs: {json.dumps(r['resume_4_to_2'])}",
        f"- NCCL: {json.dumps(r['nccl'])}",
        f"- decode (issue 7): {json.dumps(r['decode'])}",
        "",
        "Throughput: input tokens (all ranks, padding left out) over step time, steps after "
        f"the first {SKIP_FIRST} of each run; MFU against 989 TFLOP/s bf16 per GPU; peak = "
        "rank 0's torch.cuda.max_memory_allocated since the model was built.",
        "",
    ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--work", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--steps", type=int, default=50, help="steps of the 4-GPU runs")
    args = parser.parse_args()
    result = summarise(args.work, args.out, args.steps)
    (args.out / "production.json").write_text(json.dumps(result, indent=2) + "\n")
    text = markdown(result)
    (args.out / "production.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
