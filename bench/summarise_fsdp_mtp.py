"""Collect bench/fsdp_mtp.sh's step results into fsdp_mtp.json and fsdp_mtp.md.

    python bench/summarise_fsdp_mtp.py WORK OUT

Every ratio divides a four-head step by the one-head step of the same shape, vocabulary and
GPUs; the FLOP floor is the ratio of the model FLOPs alone (``training_flops_per_token``).
"""

from __future__ import annotations

import json
import os
import sys
from dataclasses import replace
from pathlib import Path

from summarise_h200 import _f, ratio

from wmtp.models.args import flavour, training_flops_per_token

SHAPES = {"small": "llama-1b-bench", "7b": "llama2-7b-mtp"}
SEQ_LEN = 2048


def load(work: Path) -> dict[str, dict]:
    """``{label: step result}`` of every run that wrote one."""
    runs = {}
    for path in sorted((work / "results").glob("*/*.json")):
        runs[path.parent.name] = json.loads(path.read_text())
    return runs


def flop_floor(shape: str, vocab: int) -> float:
    one = replace(flavour(shape), vocab_size=vocab, n_future_tokens=1)
    four = replace(one, n_future_tokens=4)
    return training_flops_per_token(four, SEQ_LEN) / training_flops_per_token(one, SEQ_LEN)


def comparisons(runs: dict[str, dict]) -> list[dict]:
    """One row per four-head run whose one-head baseline ran too."""
    rows = []
    for label, four in runs.items():
        if not label.startswith("mtp4_"):
            continue
        suffix = label.rsplit("_", 1)[1]  # v32000, v128256 or 7b
        one = runs.get(f"ntp_{suffix}")
        if one is None:
            continue
        shape = SHAPES["7b"] if suffix == "7b" else SHAPES["small"]
        vocab = four["config"]["vocab_size"]
        floor = flop_floor(shape, vocab)
        time_ratio = four["step"]["median_ms"] / one["step"]["median_ms"]
        rows.append(
            {
                "run": label,
                "shape": shape,
                "vocab": vocab,
                "mtp_loss": four["config"]["strategy"],
                "step_time_ratio_vs_ntp": time_ratio,
                "peak_memory_ratio_vs_ntp": ratio(four["peak_memory_gib"], one["peak_memory_gib"]),
                "flop_floor": floor,
                "time_ratio_over_floor": time_ratio / floor,
            }
        )
    return rows


def header() -> list[str]:
    import torch

    device = torch.cuda.get_device_name() if torch.cuda.is_available() else "no GPU"
    return [
        f"`wmtp bench step --nproc-per-node 2` on {device}, torch {torch.__version__}: median of",
        "20 steps after 5 warm-up steps, random tokens, rows of 2048; tokens/s of both GPUs, MFU",
        "per GPU against 989 TFLOP/s dense bf16.",
        f"Command: `{os.environ.get('FSDP_MTP_COMMAND', 'bash bench/fsdp_mtp.sh ...')}`",
        "",
    ]


def markdown(runs: dict[str, dict], rows: list[dict]) -> str:
    lines = [
        *header(),
        "| run | GPUs | tokens/s | MFU | peak GiB | step ms |",
        "|---|---|---|---|---|---|",
    ]
    for label, r in runs.items():
        lines.append(
            f"| {label} | {r['world_size']} | {r['tokens_per_s']:.0f} | {_f(r['mfu'], '.1%')} | "
            f"{_f(r['peak_memory_gib'])} | {r['step']['median_ms']:.1f} |"
        )
    lines += [
        "",
        "| four heads / one | shape | vocab | step time | peak memory | FLOP floor | over floor |",
        "|---|---|---|---|---|---|---|",
    ]
    for c in rows:
        lines.append(
            f"| {c['run']} | {c['shape']} | {c['vocab']} | {c['step_time_ratio_vs_ntp']:.3f}x | "
            f"{_f(c['peak_memory_ratio_vs_ntp'], '.3f', 'x')} | {c['flop_floor']:.3f}x | "
            f"{c['time_ratio_over_floor']:.3f}x |"
        )
    return "\n".join(lines) + "\n"


def main(work: Path, out: Path) -> None:
    runs = load(work)
    rows = comparisons(runs)
    out.mkdir(parents=True, exist_ok=True)
    result = {
        "command": os.environ.get("FSDP_MTP_COMMAND"),
        "runs": runs,
        "ratios": rows,
    }
    (out / "fsdp_mtp.json").write_text(json.dumps(result, indent=2))
    (out / "fsdp_mtp.md").write_text(markdown(runs, rows))
    print(markdown(runs, rows))


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]))
