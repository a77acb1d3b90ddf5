"""``wmtp bench suite``: the GPU performance figures of the project, measured side by side.

In one process: the Hugging Face peer (sdpa with and without torch.compile, eager) and wmtp's
training step, the trainer's own (``wmtp bench step``), on recipes made here
(:func:`suite_recipe`): the peers and one head over the same micro-batches
(:data:`MICRO_BATCHES`; a peer up to the first that runs out of memory), each compared at its
best, four heads with the same total layers at
vocab 32k and 128k (``mtp_loss`` per_head and joint), and the verifiable pipeline (the policy plus
a frozen critic, TD weighting). Writes ``<device>_suite.json`` with the headline ratios and
``<device>_suite.md`` with the tables.
"""

from __future__ import annotations

import json
import platform
import sys
from dataclasses import replace
from pathlib import Path

import torch

from wmtp.bench.hf_peer import bench_hf
from wmtp.bench.step import StepResult, bench_step
from wmtp.bench.timing import shown, static_compile_shapes
from wmtp.models.args import flavour, training_flops_per_token

MICRO_BATCHES = (2, 4, 8)
"""The micro-batches wmtp's one-head step and every peer are measured at: each side's figure is
its best of them."""
PEER_SETTINGS = (("sdpa", True), ("sdpa", False), ("eager", False))
"""The Hugging Face peers: (attention, torch.compile); the first is the headline's peer."""


def _print(result) -> None:
    name = getattr(result, "label", None) or result.name
    print(
        f"{name:<34} {result.tokens_per_s:10.0f} tok/s  MFU {shown(result.mfu, '6.1%')}  "
        f"peak {shown(result.peak_memory_gib, '6.2f')} GiB  step {result.step.median_ms:8.2f} ms",
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


def suite_recipe(base: str, seq_len: int, **options):
    """The recipe of one suite measurement: ``base``'s shape with random weights, bf16, compiled
    blocks, ``auto`` attention, rows of ``seq_len`` tokens (the data are synthetic); ``options``
    are :func:`suite_recipe_data`'s (micro-batch, heads, vocab, MTP loss, verifiable)."""
    from wmtp.recipe.schema import Recipe

    return Recipe.model_validate(suite_recipe_data(base, seq_len, **options))


def suite_recipe_data(
    base: str,
    seq_len: int,
    *,
    micro_batch: int,
    heads: int = 1,
    vocab: int = 32000,
    mtp_loss: str = "per_head",
    verifiable: bool = False,
) -> dict:
    """:func:`suite_recipe`'s data, before validation (``wmtp bench peers`` applies ``--set``)."""
    policy = {"flavour": base, "n_future_tokens": heads, "vocab_size": vocab}
    data = {
        "experiment": {"name": "bench", "pipeline": "verifiable" if verifiable else "baseline"},
        "tokenizer": {"kind": "byte"},
        "model": {"policy": policy},
        "parallel": {"device": "cuda", "compile": True, "activation_checkpointing": False},
        "training": {"micro_batch_size": micro_batch, "max_steps": 10_000, "mtp_loss": mtp_loss},
        "data": {"kind": "humaneval", "max_length": seq_len},  # unread: batches are synthetic
    }
    if verifiable:
        data["model"]["critic"] = {"flavour": base, "vocab_size": vocab, "head": {"kind": "mlp"}}
        data["weighting"] = {"kind": "td"}
    return data


def run_suite(out_dir: Path, *, base: str = "llama-1b-bench", seq_len: int = 2048) -> dict:
    """Measure everything; returns (and writes) the results dictionary."""
    static_compile_shapes()
    args = flavour(base)
    peers = []
    for attn, compile in PEER_SETTINGS:
        swept = bench_hf(
            args, batches=MICRO_BATCHES, seq_len=seq_len, compile=compile, attn_implementation=attn
        )
        for result in swept:
            _print(result)
        peers.append(swept)
        torch.cuda.empty_cache()

    def step(label: str, **recipe) -> StepResult:
        result = bench_step(suite_recipe(base, seq_len, **recipe), label=label)
        _print(result)
        torch.cuda.empty_cache()
        return result

    out_of_memory: list[str] = []

    def step_if_it_fits(label: str, **recipe) -> StepResult | None:
        try:
            return step(label, **recipe)
        except torch.OutOfMemoryError:
            print(f"{label:<34} out of memory", flush=True)
            out_of_memory.append(label)
            torch.cuda.empty_cache()
            return None

    ntp = {b: step(f"wmtp ntp b{b}", micro_batch=b) for b in MICRO_BATCHES}
    best_batch = max(ntp, key=lambda b: ntp[b].tokens_per_s)
    mtp = {}
    for vocab in (32000, 128256):
        one = (
            ntp[best_batch]
            if vocab == 32000
            else step(f"wmtp ntp v{vocab}", micro_batch=best_batch, vocab=vocab)
        )
        four = step(f"wmtp mtp4 v{vocab}", micro_batch=best_batch, heads=4, vocab=vocab)
        # mtp_loss = "joint": one backward through every head, nothing recomputed (more memory)
        # (the whole [tokens, vocab] logits of every head: at 128k vocab it may not fit)
        joint = step_if_it_fits(
            f"wmtp mtp4 joint v{vocab}",
            micro_batch=best_batch,
            heads=4,
            vocab=vocab,
            mtp_loss="joint",
        )
        mtp[vocab] = {"ntp": one, "per_head": four, "joint": joint}
    verifiable = step(
        "wmtp verifiable (mtp4 + critic)", micro_batch=best_batch, heads=4, verifiable=True
    )
    hf_compile = max(peers[0], key=lambda p: p.tokens_per_s)  # at its best micro-batch
    best = ntp[best_batch]
    result = {
        "device": torch.cuda.get_device_name(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "command": " ".join(["wmtp", *sys.argv[1:]]) if sys.argv else "",
        "shape": {"flavour": base, **args.to_dict(), "seq_len": seq_len},
        "peak_tflops_bf16": best.peak_tflops,
        "step_tokens_per_s_ratio_vs_hf_compile": best.tokens_per_s / hf_compile.tokens_per_s,
        "hf_compile_best_micro_batch": hf_compile.micro_batch,
        "mfu_ntp": best.mfu,
        "ntp_best_micro_batch": best_batch,
        "mtp4_step_time_ratio_vs_ntp": _ratios(mtp, "per_head", "time"),
        "mtp4_peak_memory_ratio_vs_ntp": _ratios(mtp, "per_head", "memory"),
        "mtp4_joint_step_time_ratio_vs_ntp": _ratios(mtp, "joint", "time"),
        "mtp4_joint_peak_memory_ratio_vs_ntp": _ratios(mtp, "joint", "memory"),
        "out_of_memory": out_of_memory,
        "mtp4_flop_ratio_vs_ntp": {str(v): _flop_ratio(args, v, seq_len) for v in mtp},
        "verifiable_step_time_ratio_vs_baseline": (
            verifiable.step.median_ms / mtp[32000]["per_head"].step.median_ms
        ),
        "peers": [p.to_dict() for swept in peers for p in swept],
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
            f"| {r['name']} (b{r['micro_batch']}) | {r['tokens_per_s']:.0f} | {r['mfu']:.1%} | "
            f"{r['peak_memory_gib']:.2f} | {r['step']['median_ms']:.1f} |"
        )
    for r in result["wmtp"]:
        lines.append(
            f"| {r['label']} (b{r['config']['micro_batch_size']}) | {r['tokens_per_s']:.0f} | "
            f"{r['mfu']:.1%} | {r['peak_memory_gib']:.2f} | {r['step']['median_ms']:.1f} |"
        )
    lines += [
        "",
        f"- wmtp ntp / HF sdpa+compile tokens/s, each at its best micro-batch "
        f"(b{result['ntp_best_micro_batch']}, b{result['hf_compile_best_micro_batch']}): "
        f"{result['step_tokens_per_s_ratio_vs_hf_compile']:.2f}x",
        f"- wmtp ntp MFU: {result['mfu_ntp']:.1%}",
        f"- mtp4 / ntp step time: {result['mtp4_step_time_ratio_vs_ntp']}",
        f"- mtp4 / ntp peak memory: {result['mtp4_peak_memory_ratio_vs_ntp']}",
        f"- mtp4 (joint) / ntp step time: {result['mtp4_joint_step_time_ratio_vs_ntp']}",
        f"- mtp4 (joint) / ntp peak memory: {result['mtp4_joint_peak_memory_ratio_vs_ntp']}",
        f"- mtp4 / ntp model FLOPs per token (the floor of the step-time ratio): "
        f"{result['mtp4_flop_ratio_vs_ntp']}",
        f"- verifiable / baseline step time: {result['verifiable_step_time_ratio_vs_baseline']:.2f}x",
        f"- out of memory (not measured): {', '.join(result['out_of_memory']) or 'none'}",
    ]
    return "\n".join(lines) + "\n"
