"""``wmtp bench suite``: the GPU performance figures of the project, measured side by side.

In one process: the Hugging Face peer (sdpa with and without torch.compile, eager), wmtp's step
with one head over micro-batches, four heads with the same total layers at vocab 32k and 128k, and
the verifiable step (policy plus a frozen critic forward). Writes ``<device>.json`` with the
headline ratios and ``<device>.md`` with the tables.
"""

from __future__ import annotations

import json
import platform
import sys
from dataclasses import replace
from pathlib import Path

import torch

from wmtp.bench.hf_peer import bench_hf
from wmtp.bench.step import StepConfig, StepResult, bench_step
from wmtp.bench.timing import static_compile_shapes
from wmtp.models.args import flavour, training_flops_per_token


def _print(result) -> None:
    name = getattr(result, "label", None) or result.name
    print(
        f"{name:<34} {result.tokens_per_s:10.0f} tok/s  MFU {result.mfu:6.1%}  "
        f"peak {result.peak_memory_gib:6.2f} GiB  step {result.step.median_ms:8.2f} ms",
        flush=True,
    )


def _once(*results: StepResult | None) -> list[StepResult]:
    """Each measured run once, in order (ntp at the best micro-batch is also mtp's baseline)."""
    kept: list[StepResult] = []
    for r in results:
        if r is not None and all(r is not k for k in kept):
            kept.append(r)
    return kept


def _flop_ratio(args, vocab: int, seq_len: int) -> float:
    """Training FLOPs per token of four heads over one, same total layers, at ``vocab``."""
    one = replace(args, vocab_size=vocab)
    four = replace(one, n_future_tokens=4)
    return training_flops_per_token(four, seq_len) / training_flops_per_token(one, seq_len)


def _ratios(mtp: dict, run: str, what: str) -> dict[str, float]:
    """``{vocab: run / ntp}`` of step time or peak memory, for the vocabularies where it fitted."""
    out = {}
    for vocab, runs in mtp.items():
        four, one = runs[run], runs["ntp"]
        if four is None:
            continue
        if what == "time":
            out[str(vocab)] = four.step.median_ms / one.step.median_ms
        else:
            out[str(vocab)] = four.peak_memory_gib / one.peak_memory_gib
    return out


def run_suite(out_dir: Path, *, base: str = "llama-1b-bench", seq_len: int = 2048) -> dict:
    """Measure everything; returns (and writes) the results dictionary."""
    static_compile_shapes()
    args = flavour(base)
    peers = []
    for attn, compile in (("sdpa", True), ("sdpa", False), ("eager", False)):
        peers.append(
            bench_hf(args, batch=2, seq_len=seq_len, compile=compile, attn_implementation=attn)
        )
        _print(peers[-1])
        torch.cuda.empty_cache()

    def step(label: str, step_args, cfg: StepConfig) -> StepResult:
        result = bench_step(step_args, cfg, label=label)
        _print(result)
        torch.cuda.empty_cache()
        return result

    out_of_memory: list[str] = []

    def step_if_it_fits(label: str, step_args, cfg: StepConfig) -> StepResult | None:
        try:
            return step(label, step_args, cfg)
        except torch.OutOfMemoryError:
            print(f"{label:<34} out of memory", flush=True)
            out_of_memory.append(label)
            torch.cuda.empty_cache()
            return None

    ntp = {b: step(f"wmtp ntp b{b}", args, StepConfig(batch=b, seq_len=seq_len)) for b in (2, 4, 8)}
    best_batch = max(ntp, key=lambda b: ntp[b].tokens_per_s)
    cfg = StepConfig(batch=best_batch, seq_len=seq_len)
    mtp = {}
    for vocab in (32000, 128256):
        one = (
            ntp[best_batch]
            if vocab == 32000
            else step(f"wmtp ntp v{vocab}", replace(args, vocab_size=vocab), cfg)
        )
        args4 = replace(args, vocab_size=vocab, n_future_tokens=4)
        four = step(f"wmtp mtp4 v{vocab}", args4, cfg)
        # per_head as it runs under FSDP: one backward, the head layers kept, nothing recomputed
        one_backward = step(
            f"wmtp mtp4 one_backward v{vocab}", args4, replace(cfg, strategy="one_backward")
        )
        # mtp_loss = "joint": one backward through every head, nothing recomputed (more memory)
        # (the whole [tokens, vocab] logits of every head: at 128k vocab it may not fit)
        joint = step_if_it_fits(f"wmtp mtp4 joint v{vocab}", args4, replace(cfg, strategy="plain"))
        mtp[vocab] = {"ntp": one, "per_head": four, "one_backward": one_backward, "joint": joint}
    policy4 = replace(args, n_future_tokens=4)
    verifiable = step("wmtp verifiable (mtp4 + critic)", policy4, replace(cfg, critic=args))
    hf_compile = peers[0]
    best = ntp[best_batch]
    result = {
        "device": torch.cuda.get_device_name(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "command": " ".join(["wmtp", *sys.argv[1:]]) if sys.argv else "",
        "shape": {"flavour": base, **args.to_dict(), "seq_len": seq_len},
        "peak_tflops_bf16": best.peak_tflops,
        "step_tokens_per_s_ratio_vs_hf_compile": best.tokens_per_s / hf_compile.tokens_per_s,
        "mfu_ntp": best.mfu,
        "ntp_best_micro_batch": best_batch,
        "mtp4_step_time_ratio_vs_ntp": _ratios(mtp, "per_head", "time"),
        "mtp4_peak_memory_ratio_vs_ntp": _ratios(mtp, "per_head", "memory"),
        "mtp4_one_backward_step_time_ratio_vs_ntp": _ratios(mtp, "one_backward", "time"),
        "mtp4_one_backward_peak_memory_ratio_vs_ntp": _ratios(mtp, "one_backward", "memory"),
        "mtp4_joint_step_time_ratio_vs_ntp": _ratios(mtp, "joint", "time"),
        "mtp4_joint_peak_memory_ratio_vs_ntp": _ratios(mtp, "joint", "memory"),
        "out_of_memory": out_of_memory,
        "mtp4_flop_ratio_vs_ntp": {str(v): _flop_ratio(args, v, seq_len) for v in mtp},
        "verifiable_step_time_ratio_vs_baseline": (
            verifiable.step.median_ms / mtp[32000]["per_head"].step.median_ms
        ),
        "peers": [p.to_dict() for p in peers],
        "wmtp": [
            r.to_dict()
            for r in _once(
                *ntp.values(), *[x for runs in mtp.values() for x in runs.values()], verifiable
            )
        ],
    }
    out_dir.mkdir(parents=True, exist_ok=True)
    stem = "h100" if "H100" in result["device"] else "h200" if "H200" in result["device"] else "gpu"
    (out_dir / f"{stem}_suite.json").write_text(json.dumps(result, indent=2))
    (out_dir / f"{stem}_suite.md").write_text(markdown(result))
    return result


def markdown(result: dict) -> str:
    lines = [
        f"Training step on {result['device']}, torch {result['torch']}; shape "
        f"{result['shape']['flavour']} (dim {result['shape']['dim']}, {result['shape']['n_layers']} "
        f"layers, seq {result['shape']['seq_len']}); MFU against {result['peak_tflops_bf16']:.0f} "
        "TFLOP/s dense bf16; median of 20 steps after 5 warm-up steps.",
        "",
        "| run | tokens/s | MFU | peak GiB | step ms |",
        "|---|---|---|---|---|",
    ]
    for r in result["peers"]:
        lines.append(
            f"| {r['name']} (b2) | {r['tokens_per_s']:.0f} | {r['mfu']:.1%} | "
            f"{r['peak_memory_gib']:.2f} | {r['step']['median_ms']:.1f} |"
        )
    for r in result["wmtp"]:
        lines.append(
            f"| {r['label']} (b{r['config']['batch']}) | {r['tokens_per_s']:.0f} | "
            f"{r['mfu']:.1%} | {r['peak_memory_gib']:.2f} | {r['step']['median_ms']:.1f} |"
        )
    lines += [
        "",
        f"- wmtp ntp / HF sdpa+compile tokens/s: "
        f"{result['step_tokens_per_s_ratio_vs_hf_compile']:.2f}x",
        f"- wmtp ntp MFU: {result['mfu_ntp']:.1%}",
        f"- mtp4 / ntp step time: {result['mtp4_step_time_ratio_vs_ntp']}",
        f"- mtp4 / ntp peak memory: {result['mtp4_peak_memory_ratio_vs_ntp']}",
        f"- mtp4 (one_backward) / ntp step time: "
        f"{result['mtp4_one_backward_step_time_ratio_vs_ntp']}",
        f"- mtp4 (one_backward) / ntp peak memory: "
        f"{result['mtp4_one_backward_peak_memory_ratio_vs_ntp']}",
        f"- mtp4 (joint) / ntp step time: {result['mtp4_joint_step_time_ratio_vs_ntp']}",
        f"- mtp4 (joint) / ntp peak memory: {result['mtp4_joint_peak_memory_ratio_vs_ntp']}",
        f"- mtp4 / ntp model FLOPs per token (the floor of the step-time ratio): "
        f"{result['mtp4_flop_ratio_vs_ntp']}",
        f"- verifiable / baseline step time: {result['verifiable_step_time_ratio_vs_baseline']:.2f}x",
        f"- out of memory (not measured): {', '.join(result['out_of_memory']) or 'none'}",
    ]
    return "\n".join(lines) + "\n"
