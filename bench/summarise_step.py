"""Write h200_step.json and h200_step.md from bench/h200.sh's stages ab, verifiable_step,
vocab128k, full1b_profile and lora7b_profile_compiled (issue 20: where the step's time goes).

    python bench/summarise_step.py --results DIR [--out DIR] [--profiles DIR] [--note TEXT]
                                   [--reading FILE] [--peers h200.json] [--as-written VARIANT]

DIR holds what those stages write under $WORK/measured (bench/h200.sh packs it as
measured.tar.gz): ab/{lora7b,full1b}_{before,after}/, verifiable_step/{verifiable,baseline}/,
vocab128k/full1b.json (`wmtp bench peers` rows), memory_budget/*/ (the LoRA step with less
recomputation, against the best LoRA peer of --peers, an h200.json; --as-written names the one
that is the LoRA recipe as now written); each folder but vocab128k holds one `wmtp bench step`
result. Profiles' timelines: --profiles (default DIR/profiles;
$WORK/profiles, packed as profiles.tar.gz), */*.timeline.json. Any part may be missing.
Standard library only.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from summarise_h200 import _f, mtp4, ratio


def _step(folder: Path) -> dict | None:
    """The `wmtp bench step` result in ``folder`` (its one JSON file)."""
    files = sorted(folder.glob("*.json"))
    if not files:
        return None
    r = json.loads(files[0].read_text())
    return {
        "tokens_per_s": r["tokens_per_s"],
        "mfu": r["mfu"],
        "peak_memory_gib": r["peak_memory_gib"],
        "step_ms": r["step"]["median_ms"],
        "min_ms": r["step"]["min_ms"],
        "max_ms": r["step"]["max_ms"],
        "micro_batch": r["config"].get("micro_batch_size"),
        "grad_accum": r["config"].get("grad_accum_steps", 1),
        "activation_checkpointing": r["config"].get("activation_checkpointing"),
    }


def ab(folder: Path) -> dict:
    """Each step (a shape, with bench/h200.sh's AB_TAG after it: ``full1b_float8``) with the
    earlier code (``<step>_before``) and with this one (``<step>_after``): ``after / before``
    tokens/s."""
    out = {}
    for after_dir in sorted(folder.glob("*_after")):
        name = after_dir.name.removesuffix("_after")
        before, after = _step(folder / f"{name}_before"), _step(after_dir)
        if before and after:
            ratio = after["tokens_per_s"] / before["tokens_per_s"]
            out[name] = {"before": before, "after": after, "ratio": ratio}
    return out


def verifiable(folder: Path) -> dict | None:
    v, b = _step(folder / "verifiable"), _step(folder / "baseline")
    if not (v and b):
        return None
    return {"verifiable": v, "baseline": b, "step_time_ratio": v["step_ms"] / b["step_ms"]}


def vocab128k(path: Path) -> dict | None:
    if not path.is_file():
        return None
    rows = json.loads(path.read_text())["rows"]
    return mtp4(rows) or None


def memory_budget(folder: Path, peer: dict | None) -> dict:
    """Each variant's step, and against ``peer`` (tokens/s and peak memory) where given."""
    out = {}
    for path in sorted(p for p in folder.glob("*") if p.is_dir()):
        if (row := _step(path)) is None:
            continue
        if peer:
            row["ratio_vs_peer"] = row["tokens_per_s"] / peer["tokens_per_s"]
            row["peak_memory_ratio_vs_peer"] = ratio(
                row["peak_memory_gib"], peer["peak_memory_gib"]
            )
        out[path.name] = row
    return out


def timelines(folder: Path) -> dict:
    return {
        p.parent.name: json.loads(p.read_text()) for p in sorted(folder.glob("*/*.timeline.json"))
    }


def summarise(
    folder: Path, profiles: Path, peer: dict | None = None, as_written: str | None = None
) -> dict:
    s: dict = {"ab": ab(folder / "ab")}
    if budget := memory_budget(folder / "memory_budget", peer):
        s["lora7b_memory_budget"] = {"peer": peer, "variants": budget}
        if (row := budget.get(as_written or "")) and "ratio_vs_peer" in row:
            s["lora7b_as_written"] = {"variant": as_written, **row}
            s["lora7b_as_written_ratio_vs_best_peer"] = row["ratio_vs_peer"]
            s["lora7b_as_written_peak_memory_ratio_vs_peer"] = row["peak_memory_ratio_vs_peer"]
    if (v := verifiable(folder / "verifiable_step")) is not None:
        s["verifiable_step_ratio_vs_baseline"] = v["step_time_ratio"]
        s["verifiable_step"] = v
    if (m := vocab128k(folder / "vocab128k" / "full1b.json")) is not None:
        s["mtp4_128k_step_time_over_flop_floor"] = m["step_time_over_flop_floor"]
        s["mtp4_128k_peak_memory_ratio_vs_ntp"] = m["peak_memory_ratio_vs_ntp"]
        s["mtp4_128k"] = m
    s["profiles"] = timelines(profiles)
    return s


def _ms(us: float, steps: int = 2) -> str:
    return f"{us / 1e3 / steps:.1f}"


def profile_lines(name: str, t: dict, steps: int = 2) -> list[str]:
    window = t["window_us"]
    lines = [
        f"### {name}",
        "",
        f"Per step ({steps} profiled): {_ms(window)} ms from first kernel to last; busy "
        f"{_ms(t['busy_us'])} ms, idle {_ms(t['idle_us'])} ms ({t['idle_us'] / window:.1%}).",
        "",
        "| kind of kernel | ms per step | share of busy |",
        "|---|---|---|",
    ]
    lines += [
        f"| {kind} | {_ms(us)} | {us / t['busy_us']:.0%} |"
        for kind, us in t["device_us_by_kind"].items()
    ]
    lines += ["", "Idle (stalls of 20 us or more) by what the host was doing meanwhile:", ""]
    lines += [
        f"- {phase}: {_ms(us)} ms" for phase, us in list(t["stall_us_by_host_phase"].items())[:6]
    ]
    return [*lines, ""]


def budget_lines(budget: dict) -> list[str]:
    peer = budget["peer"]
    against = (
        f"{peer['side']} at micro-batch {peer['micro_batch']}: {peer['tokens_per_s']:,.0f} "
        f"tokens/s, {_f(peer['peak_memory_gib'], '.2f', ' GiB')}"
        if peer
        else "no peer given"
    )
    lines = [
        "",
        "## The LoRA step with less recomputation, against the best LoRA peer",
        "",
        f"Peer: {against}.",
        "",
        "The peer takes one optimizer step per micro-batch"
        + (f" of {peer['micro_batch']} sequences" if peer else "")
        + "; a variant's sequences per optimizer step are its micro-batch times its accumulation.",
        "",
        "| variant | micro-batch | accumulation | checkpointing | tokens/s | peak GiB "
        "| / peer tokens/s | / peer memory |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, r in budget["variants"].items():
        name = f"**{name}** (the recipe as written)" if name == budget.get("as_written") else name
        ratio = f"{r['ratio_vs_peer']:.2f}x" if "ratio_vs_peer" in r else "-"
        memory = _f(r["peak_memory_ratio_vs_peer"]) if "ratio_vs_peer" in r else "-"
        lines.append(
            f"| {name} | {r['micro_batch']} | {r.get('grad_accum', 1)} | "
            f"{r.get('activation_checkpointing', '-')} | {r['tokens_per_s']:,.0f} | "
            f"{_f(r['peak_memory_gib'])} | {ratio} | {memory} |"
        )
    return lines


def markdown(s: dict, note: str, reading: str = "") -> str:
    lines = ["# Where the training step's time goes, and what changed it (issue 20)", "", note, ""]
    lines += ["## The same step with the earlier code and with this one", ""]
    for shape, r in s["ab"].items():
        b, a = r["before"], r["after"]
        lines.append(
            f"- {shape} (micro-batch {a['micro_batch']}): {b['tokens_per_s']:,.0f} -> "
            f"{a['tokens_per_s']:,.0f} tokens/s ({r['ratio']:.3f}x; median step "
            f"{b['step_ms']:.1f} -> {a['step_ms']:.1f} ms, min {b['min_ms']:.1f} -> "
            f"{a['min_ms']:.1f}); MFU {_f(a['mfu'], '.1%')}, peak {_f(a['peak_memory_gib'], '.2f', ' GiB')}"
        )
    if "verifiable_step" in s:
        v = s["verifiable_step"]
        lines += [
            "",
            "## The verifiable step against the baseline step",
            "",
            f"- verifiable {v['verifiable']['step_ms']:.1f} ms ({v['verifiable']['tokens_per_s']:,.0f}"
            f" tokens/s, {_f(v['verifiable']['peak_memory_gib'], '.2f', ' GiB')}), baseline "
            f"{v['baseline']['step_ms']:.1f} ms ({v['baseline']['tokens_per_s']:,.0f} tokens/s, "
            f"{_f(v['baseline']['peak_memory_gib'], '.2f', ' GiB')}): **{v['step_time_ratio']:.2f}x** "
            "(target at most 1.35x)",
        ]
    if "mtp4_128k" in s:
        m = s["mtp4_128k"]
        lines += [
            "",
            "## Four heads at a 128k vocabulary (1B shape)",
            "",
            f"- micro-batch {m['micro_batch']}: step time {m['step_time_ratio_vs_ntp']:.3f}x one "
            f"head's for {m['flop_ratio_vs_ntp']:.3f}x its FLOPs: **{m['step_time_over_flop_floor']:.3f}x** "
            f"the FLOP floor (target at most 1.03x); peak memory **{m['peak_memory_ratio_vs_ntp']:.2f}x** "
            "one head's (target at most 1.10x)",
        ]
    if "lora7b_memory_budget" in s:
        written = s.get("lora7b_as_written", {}).get("variant")
        lines += budget_lines({**s["lora7b_memory_budget"], "as_written": written})
    if s["profiles"]:
        lines += ["", "## Profiles (`wmtp bench step --profile 2`: the GPU timeline)", ""]
        for name, t in s["profiles"].items():
            lines += profile_lines(name, t)
    if reading:
        lines += ["## What the figures say", "", reading.strip()]
    return "\n".join(lines).rstrip() + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--results", type=Path, required=True)
    parser.add_argument(
        "--out", type=Path, help="Folder for h200_step.json/md (default: --results)."
    )
    parser.add_argument(
        "--note", default="", help="What ran, where and when (the markdown's lead)."
    )
    parser.add_argument("--reading", type=Path, help="Markdown read into the figures, at the end.")
    parser.add_argument("--peers", type=Path, help="An h200.json: its best LoRA peer.")
    parser.add_argument("--profiles", type=Path, help="Profiles' folder (default DIR/profiles).")
    parser.add_argument(
        "--as-written", help="The memory_budget variant that is the LoRA recipe as written."
    )
    args = parser.parse_args()
    out = args.out or args.results
    peer = None
    if args.peers is not None:
        peer = json.loads(args.peers.read_text()).get("lora7b_best", {}).get("peer")
    s = summarise(args.results, args.profiles or args.results / "profiles", peer, args.as_written)
    s["note"] = args.note
    (out / "h200_step.json").write_text(json.dumps(s, indent=1) + "\n")
    reading = args.reading.read_text() if args.reading else ""
    (out / "h200_step.md").write_text(markdown(s, args.note, reading))
    print(f"wrote {out}/h200_step.json and h200_step.md")


if __name__ == "__main__":
    main()
