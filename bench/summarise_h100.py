"""Write bench/results/h100.json's headline figures from the H100 result files beside it.

    python bench/summarise_h100.py [--results bench/results]

Reads h100_suite.json (`wmtp bench suite`), h100_attention.json (`wmtp bench attention`, `auto`
choosing from the recorded ranking), h100_attention_ranked.json (the run that recorded it) and
h100_gpu_check.json (`python -m wmtp.models.gpu_check`). Keys of h100.json that come from other
runs (decoding) are kept; the headline figures it replaces move to ``earlier_suite_runs``.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

SUITE_KEYS = (
    "step_tokens_per_s_ratio_vs_hf_compile",
    "mfu_ntp",
    "mtp4_step_time_ratio_vs_ntp",
    "mtp4_peak_memory_ratio_vs_ntp",
    "mtp4_joint_step_time_ratio_vs_ntp",
    "mtp4_joint_peak_memory_ratio_vs_ntp",
    "mtp4_flop_ratio_vs_ntp",
    "verifiable_step_time_ratio_vs_baseline",
    "out_of_memory",
)


def headline(results: Path) -> dict:
    suite = json.loads((results / "h100_suite.json").read_text())
    attention = json.loads((results / "h100_attention.json").read_text())
    check = json.loads((results / "h100_gpu_check.json").read_text())
    floor = suite["mtp4_flop_ratio_vs_ntp"]
    return {
        "device": suite["device"],
        "torch": suite["torch"],
        "peak_tflops_bf16": suite["peak_tflops_bf16"],
        "ntp_micro_batch": suite["ntp_best_micro_batch"],
        **{key: suite[key] for key in SUITE_KEYS if key in suite},
        "mtp4_step_time_ratio_over_flop_floor": {
            vocab: ratio / floor[vocab]
            for vocab, ratio in suite["mtp4_step_time_ratio_vs_ntp"].items()
        },
        "attention_auto": attention["auto"],
        "attention_auto_vs_fastest": attention["auto_vs_fastest"],
        "attention_auto_worst_over_fastest": max(
            row["auto_over_fastest"] for row in attention["auto_vs_fastest"]
        ),
        "attention_flash_attn": attention["flash_attn"],
        "attention_table": "h100_attention.json",
        "attention_ranking": "h100_attention_ranked.json -> wmtp/models/attention_table.json",
        "attention_backend_errors_vs_fp32_eager": {
            name: row["max_rel"] for name, row in check["summary"].items() if not row["errors"]
        },
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--results", type=Path, default=Path("bench/results"))
    parser.add_argument("--note", default="", help="What the replaced figures were (one line).")
    args = parser.parse_args()
    out = args.results / "h100.json"
    old = json.loads(out.read_text()) if out.is_file() else {}
    new = headline(args.results)
    earlier = old.pop("earlier_suite_runs", [])
    if "earlier_suite_run" in old:  # the single entry of older files
        earlier.append(old.pop("earlier_suite_run"))
    if old.get("step_tokens_per_s_ratio_vs_hf_compile") not in (
        None,
        new["step_tokens_per_s_ratio_vs_hf_compile"],
    ):
        replaced = {key: old.get(key) for key in SUITE_KEYS if key in old}
        earlier.append(replaced | {"note": args.note})
    merged = old | new | {"earlier_suite_runs": earlier}
    out.write_text(json.dumps(merged, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
