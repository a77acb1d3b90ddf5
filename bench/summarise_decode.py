"""Write h200_decode.json and h200_decode.md (issue 21's figures) from bench/h200_decode.sh's files.

    python bench/summarise_decode.py --results DIR [--out DIR] [--script "bash ..."]

Reads DIR/decode_1b.json, decode_1b_peers.json (else decode_1b.json's peers),
decode_1b_sampled.json, decode_7b.json, decode_trained.json,
decode_trained_sampled.json (`wmtp bench decode`), decode_model.json (the training's seconds)
and the evaluation's summary.json (`wmtp eval`; see ``humaneval_figures``); any may be missing,
and its figures are then "not measured". Every figure is read from those files, none computed anew except the best
Hugging Face side of the batched comparison. Standard library only.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def load(folder: Path, name: str) -> dict:
    path = folder / name
    return json.loads(path.read_text()) if path.is_file() else {}


def dig(data: dict, *keys: str):
    for key in keys:
        if not isinstance(data, dict) or key not in data:
            return None
        data = data[key]
    return data


def best_hf(peers: dict, label: str) -> tuple[str | None, dict | None]:
    """The Hugging Face side with the most tokens/s at ``label`` (``batch1``, ``batch20``):
    each batch size against its own best side."""
    key = f"{label}_tokens_per_s"
    measured = {
        name: figures
        for name, figures in (peers.get("sides") or {}).items()
        if not name.startswith("wmtp") and key in figures
    }
    if not measured:
        return None, None
    name = max(measured, key=lambda n: measured[n][key])
    return name, measured[name]


def ratio_of(one_b: dict, kind: str) -> float | None:
    """``kind``'s tokens/s with fused projections over without (``--also-unfused``)."""
    fused = dig(one_b, "as_loaded", kind, "tokens_per_s")
    unfused = dig(one_b, "as_loaded_unfused", kind, "tokens_per_s")
    return fused / unfused if fused and unfused else None


FIGURE_SOURCES = {
    "plain_tokens_per_s": "decode_1b.json (as_loaded.plain)",
    "bandwidth_fraction": "decode_1b.json (bandwidth: measured on CUDA only)",
    "speculative_speedup_agreeing": "decode_1b.json (agreeing_heads: --agreeing-heads)",
    "speculative_speedup_trained": "decode_trained.json (as_loaded.speculative)",
    "batch20_ratio_vs_hf": "decode_1b_peers.json or decode_1b.json (peers at --batch 20, "
    "a Hugging Face side measured)",
    "humaneval_n20_generation_s": "humaneval_n20/humaneval/summary.json (wall_s.generate)",
}
"""Issue 21's figures and the file (and entry) each is read from."""


def with_reasons(summary: dict) -> dict:
    """``summary`` with ``not_measured``: for each null figure of :data:`FIGURE_SOURCES`, why."""
    missing = {k: f"not measured: nothing in {src}" for k, src in FIGURE_SOURCES.items()}
    return summary | {"not_measured": {k: why for k, why in missing.items() if summary[k] is None}}


def summarise(folder: Path) -> dict:
    one_b, sampled = load(folder, "decode_1b.json"), load(folder, "decode_1b_sampled.json")
    seven_b, trained = load(folder, "decode_7b.json"), load(folder, "decode_trained.json")
    trained_sampled = load(folder, "decode_trained_sampled.json")
    peers = load(folder, "decode_1b_peers.json").get("peers") or one_b.get("peers") or {}
    batch = peers.get("batch")
    hf_name, hf = best_hf(peers, f"batch{batch}")
    hf1_name, hf1 = best_hf(peers, "batch1")
    wmtp = dig(peers, "sides", "wmtp") or {}
    speculative = dig(peers, "sides", "wmtp_speculative") or {}
    batched = f"batch{batch}_tokens_per_s"
    return {
        "device": one_b.get("device"),
        "torch": one_b.get("torch"),
        "plain_tokens_per_s": dig(one_b, "as_loaded", "plain", "tokens_per_s"),
        "bandwidth_fraction": dig(one_b, "bandwidth", "plain_fraction_of_limit"),
        "bandwidth": one_b.get("bandwidth"),
        "bandwidth_fraction_7b": dig(seven_b, "bandwidth", "plain_fraction_of_limit"),
        "plain_tokens_per_s_7b": dig(seven_b, "as_loaded", "plain", "tokens_per_s"),
        "speculative_speedup_random_heads": dig(one_b, "as_loaded", "speculative", "speedup"),
        "fused_projections_ratio": ratio_of(one_b, "plain"),
        "fused_projections_speculative_ratio": ratio_of(one_b, "speculative"),
        "speculative_speedup_agreeing": dig(one_b, "agreeing_heads", "speculative", "speedup"),
        "speculative_speedup_agreeing_7b": dig(seven_b, "agreeing_heads", "speculative", "speedup"),
        "tokens_per_forward_agreeing": dig(
            one_b, "agreeing_heads", "speculative", "tokens_per_forward"
        ),
        "speculative_speedup_trained": dig(trained, "as_loaded", "speculative", "speedup"),
        "trained_identical_outputs": dig(trained, "as_loaded", "identical_outputs"),
        "trained_acceptance_by_head": dig(
            trained, "as_loaded", "speculative", "acceptance_by_head"
        ),
        "sampled_speedup_agreeing": dig(sampled, "agreeing_heads", "speculative", "speedup"),
        "sampled_speedup_trained": dig(trained_sampled, "as_loaded", "speculative", "speedup"),
        "sampled_trained_acceptance_by_head": dig(
            trained_sampled, "as_loaded", "speculative", "acceptance_by_head"
        ),
        "sampled_trained_eager_acceptance_by_head": dig(
            trained_sampled, "as_loaded_eager", "speculative", "acceptance_by_head"
        ),
        "trained_model_train_s": load(folder, "decode_model.json").get("train_s"),
        "trained_model_final_loss": load(folder, "decode_model.json").get("final_loss"),
        "batch": batch,
        "batch_best_hf": hf_name,
        "batch20_ratio_vs_hf": (
            wmtp[batched] / hf[batched] if hf and wmtp.get(batched) and batch == 20 else None
        ),
        "batch1_best_hf": hf1_name,
        "batch1_ratio_vs_hf": (
            wmtp["batch1_tokens_per_s"] / hf1["batch1_tokens_per_s"]
            if hf1 and wmtp.get("batch1_tokens_per_s")
            else None
        ),
        "batch_speculative_ratio_vs_plain": speculative.get(f"batch{batch}_ratio_vs_wmtp"),
        "batch_speculative_acceptance_rate": speculative.get(f"batch{batch}_acceptance_rate"),
        "peers": peers or None,
        **humaneval_figures(folder),
    }


def humaneval_figures(folder: Path) -> dict:
    """The timed evaluation's wall times and sandbox: from its summary.json (in
    humaneval_n20/humaneval/, or beside its samples one folder up, where the device returns it),
    else from the decode summary its own call wrote (humaneval_n20/h200_decode.json), kept
    where that call's summary.json did not come back."""
    found = load(folder, "humaneval_n20/humaneval/summary.json") or load(
        folder, "humaneval_n20/summary.json"
    )
    if found:
        return {
            "humaneval_n20_generation_s": dig(found, "wall_s", "generate"),
            "humaneval_n20_check_s": dig(found, "wall_s", "check"),
            "humaneval_sandbox": found.get("sandbox"),
        }
    call = load(folder, "humaneval_n20/h200_decode.json")
    names = ("humaneval_n20_generation_s", "humaneval_n20_check_s", "humaneval_sandbox")
    return {name: call.get(name) for name in names}


def _f(value, spec: str = ".2f", suffix: str = "") -> str:
    return "not measured" if value is None else f"{value:{spec}}{suffix}"


def markdown(s: dict) -> str:
    rows = [
        ("plain greedy, batch 1, llama-1b-bench (tokens/s)", _f(s["plain_tokens_per_s"], ",.0f")),
        ("... fraction of the weight-bandwidth limit", _f(s["bandwidth_fraction"], ".1%")),
        ("... at llama2-7b-mtp", _f(s["bandwidth_fraction_7b"], ".1%")),
        ("plain greedy with fused projections / without", _f(s.get("fused_projections_ratio"), ".3f", "x")),
        ("self-speculative / plain, agreeing heads", _f(s["speculative_speedup_agreeing"], ".2f", "x")),
        ("... at llama2-7b-mtp", _f(s.get("speculative_speedup_agreeing_7b"), ".2f", "x")),
        ("self-speculative / plain, the trained model", _f(s["speculative_speedup_trained"], ".2f", "x")),
        ("... greedy outputs identical", s["trained_identical_outputs"] or "not measured"),
        ("speculative sampling / plain sampling, agreeing heads", _f(s["sampled_speedup_agreeing"], ".2f", "x")),
        ("speculative sampling / plain sampling, the trained model", _f(s["sampled_speedup_trained"], ".2f", "x")),
        (f"wmtp / best HF generate{f' ({best})' if (best := s['batch_best_hf']) else ''}, batch {s['batch'] or 20} sampled", _f(s["batch20_ratio_vs_hf"], ".2f", "x")),
        (f"wmtp / best HF generate{f' ({best})' if (best := s['batch1_best_hf']) else ''}, batch 1 greedy", _f(s["batch1_ratio_vs_hf"], ".2f", "x")),
        (f"batched speculative / plain sampling, batch {s['batch'] or 20}", _f(s["batch_speculative_ratio_vs_plain"], ".2f", "x")),
        ("HumanEval 164 x 20 x 512: generation (s)", _f(s["humaneval_n20_generation_s"], ".1f")),
        ("... checking, after generation (s; checks overlap generation)", _f(s["humaneval_n20_check_s"], ".1f")),
        ("training the 4-head model (s)", _f(s["trained_model_train_s"], ".0f")),
        ("... its last training loss", _f(s.get("trained_model_final_loss"), ".4f")),
    ]  # fmt: skip
    lines = [
        "# Decoding against its limit and its peer (issue 21)",
        "",
        f"Machine: {s['device'] or 'not recorded'}; torch {s['torch'] or '?'}",
        "",
        f"Run: `{s.get('script') or 'bash bench/h200_decode.sh'}`",
        "",
        "| figure | value |",
        "|---|---|",
        *[f"| {name} | {value} |" for name, value in rows],
    ]
    bandwidth = s.get("bandwidth") or {}
    if bandwidth:
        lines += [
            "",
            f"Bandwidth: {bandwidth.get('bandwidth')}: {bandwidth.get('measured_tb_per_s')} TB/s "
            f"(datasheet {bandwidth.get('datasheet_tb_per_s')}); a plain step reads "
            f"{bandwidth.get('weight_bytes_per_step')} bytes of weights.",
        ]
    sides = dig(s, "peers", "sides") or {}
    ranged = {n: f for n, f in sides.items() if f"batch{s['batch']}_tokens_per_s_range" in f}
    if ranged:
        key = f"batch{s['batch']}_tokens_per_s"
        spans = ", ".join(
            f"{name} {f[key]:,.0f} ({f[key + '_range'][0]:,.0f}-{f[key + '_range'][1]:,.0f})"
            for name, f in ranged.items()
        )
        lines += [
            "",
            f"Batch {s['batch']}, tokens/s: the median of the timed calls (their range): {spans}.",
        ]
    for label, key in (
        ("trained, greedy", "trained_acceptance_by_head"),
        ("trained, sampled", "sampled_trained_acceptance_by_head"),
        ("trained, sampled, eager steps", "sampled_trained_eager_acceptance_by_head"),
    ):
        if s.get(key):
            rates = ", ".join(f"head {h} {r:.1%}" for h, r in s[key].items())
            lines += ["", f"Acceptance per head ({label}): {rates}."]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--results", type=Path, required=True)
    parser.add_argument("--out", type=Path, help="default: --results")
    parser.add_argument("--script", default="", help="the command that produced the results")
    args = parser.parse_args()
    out = args.out or args.results
    summary = with_reasons(summarise(args.results)) | {"script": args.script}
    out.mkdir(parents=True, exist_ok=True)
    (out / "h200_decode.json").write_text(json.dumps(summary, indent=2) + "\n")
    (out / "h200_decode.md").write_text(markdown(summary))
    print(f"wrote {out / 'h200_decode.json'} and {out / 'h200_decode.md'}")


if __name__ == "__main__":
    main()
