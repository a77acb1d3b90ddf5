"""Where the time of one eager decoding step goes, and what a CUDA graph leaves of it.

    python3 bench/decode_profile.py --checkpoint RUN_DIR --out DIR

Times 64 plain greedy tokens of one HumanEval prompt with eager steps and with CUDA-graph steps
(the kernels per step, host time per step, GPU time per step), and writes the eager step's
torch.profiler table (top operators by host time) to DIR/decode_profile.txt.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile

from wmtp.eval.generate import generate
from wmtp.eval.speed import humaneval_prompts, model_from_checkpoint, never_stop

TOKENS = 64


def timed(model, prompt, cuda_graphs: bool) -> float:
    """Seconds per token of TOKENS greedy tokens (after a warm-up of the same length)."""
    for _ in range(2):
        torch.cuda.synchronize()
        start = time.perf_counter()
        generate(model, [prompt], never_stop(), max_new_tokens=TOKENS, cuda_graphs=cuda_graphs)
        torch.cuda.synchronize()
    return (time.perf_counter() - start) / TOKENS


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint", required=True)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    model, tokenizer = model_from_checkpoint(args.checkpoint, None, "cuda")
    prompt = humaneval_prompts(tokenizer, 1)[0]
    result = {"tokens": TOKENS, "prompt_tokens": len(prompt)}
    with torch.inference_mode():
        for graphs in (False, True):
            result["cuda_graphs" if graphs else "eager"] = {
                "ms_per_token": 1e3 * timed(model, prompt, graphs)
            }
        with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
            generate(model, [prompt], never_stop(), max_new_tokens=TOKENS, cuda_graphs=False)
            torch.cuda.synchronize()
    events = prof.key_averages()
    kernels = sum(e.count for e in events if e.device_type == torch.autograd.DeviceType.CUDA)
    gpu_us = sum(e.self_device_time_total for e in events)
    result["eager"]["kernels_per_token"] = round(kernels / TOKENS, 1)
    result["eager"]["gpu_ms_per_token"] = round(gpu_us / 1e3 / TOKENS, 3)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "decode_profile.txt").write_text(
        events.table(sort_by="cpu_time_total", row_limit=40)
        + "\n\n"
        + events.table(sort_by="self_cuda_time_total", row_limit=25)
    )
    (args.out / "decode_profile.json").write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
