"""Peak memory of one MTP training step, n heads against 1, per loss strategy (a script, not a test).

    python tests/losses/mtp_memory.py            # small flavour, vocab 32000, batch 4 x 1024

Chunk ``1024`` target tokens per logits block, or ``auto`` (a ~1 GiB fp32 block: at this size
one block holds a whole head's logits).

Each configuration runs in a fresh process; the figure is the growth of the process's peak RSS
(``resource.getrusage``) over its RSS after building the model and the batch, so it counts
activations, logits and gradients but not the weights. ``forward`` is the naive reference: the
model's ``[B, S, n, V]`` logits and a cross-entropy over them.
"""

from __future__ import annotations

import dataclasses
import json
import resource
import subprocess
import sys

B, S, VOCAB = 4, 1024, 32000


def rss_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS")


def one(strategy: str, n_heads: int, chunk: int | None) -> dict:
    import torch
    import torch.nn.functional as F

    from wmtp.losses import MTPLossConfig, loss_and_backward
    from wmtp.models.args import flavour
    from wmtp.models.llama_mtp import LlamaMTP

    torch.manual_seed(0)
    args = dataclasses.replace(flavour("small"), vocab_size=VOCAB, n_future_tokens=n_heads)
    model = LlamaMTP(args, attention="sdpa")
    for p in model.parameters():  # gradients allocated up front: not part of the step's growth
        p.grad = torch.zeros_like(p)
    tokens = torch.randint(0, VOCAB, (B, S))
    base = rss_mb()
    if strategy == "forward":
        logits = model(tokens)  # [B, S, n, V]
        loss = sum(
            F.cross_entropy(
                logits[:, : S - k, k - 1].reshape(-1, VOCAB).float(), tokens[:, k:].reshape(-1)
            )
            for k in range(1, n_heads + 1)
        )
        loss.backward()
    else:
        loss_and_backward(
            model,
            tokens,
            tokens,
            n_heads=n_heads,
            config=MTPLossConfig(strategy=strategy, chunk_size=chunk),
        )
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {
        "strategy": strategy,
        "chunk": chunk,
        "heads": n_heads,
        "step_peak_mb": round(peak - base),
    }


def main() -> None:
    configs = [("per_head", "1024"), ("per_head", "auto"), ("chunked", "1024")]
    configs += [("joint", "-"), ("forward", "-")]
    for strategy, chunk in configs:
        for n in (1, 4):
            cmd = [sys.executable, __file__, "--child", strategy, str(n), chunk]
            out = subprocess.run(cmd, capture_output=True, text=True, check=True)
            print(json.loads(out.stdout.strip().splitlines()[-1]), flush=True)


if __name__ == "__main__":
    if sys.argv[1:2] == ["--child"]:
        strategy, n, chunk = sys.argv[2], int(sys.argv[3]), sys.argv[4]
        print(json.dumps(one(strategy, n, None if chunk in ("auto", "-") else int(chunk))))
    elif len(sys.argv) == 1:
        main()
    else:
        sys.exit(f"usage: python {sys.argv[0]}")
