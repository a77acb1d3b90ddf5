"""Run by tests/parallel/test_fsdp.py as a torchrun-style rank (RANK/WORLD_SIZE in the env), or
alone. Trains the toy model a few steps on a fixed global batch of 4 sequences, accumulating
micro-batches of one, and writes the losses (rank 0)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from parallel_toy import ToyMTP

from wmtp.losses import MTPLossConfig, loss_and_backward, weight_sums
from wmtp.parallel import (
    all_reduce_sum,
    init_distributed,
    model_init_seed,
    parallelize,
    set_gradient_sync,
    teardown,
)


def main(out: str, sharding: str, strategy: str, ac: int) -> None:
    ctx = init_distributed("cpu")
    model_init_seed(0)
    model = ToyMTP()
    model = parallelize(model, ctx, sharding=sharding, activation_checkpointing=ac, dtype="float32")
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    g = torch.Generator().manual_seed(1)
    tokens = torch.randint(0, 61, (4, 10), generator=g)
    labels = tokens.clone()
    labels[:, :2] = -100
    labels[3, 5:] = -100  # uneven token counts across ranks
    per_rank = 4 // ctx.world_size
    mine = slice(ctx.rank * per_rank, (ctx.rank + 1) * per_rank)
    losses = []
    # per_head on a sharded model runs in one backward, as the trainer decides it
    one_backward = strategy == "per_head" and ctx.is_distributed
    cfg = MTPLossConfig(strategy=strategy, one_backward=one_backward, chunk_size=7)
    for _ in range(3):
        # Micro-batches of one sequence, accumulated: 4 per step on one rank, 2 on each of two.
        denom = all_reduce_sum(weight_sums(labels[mine], 2))
        total = None
        rows = list(range(mine.start, mine.stop))
        for i, row in enumerate(rows):
            set_gradient_sync(model, i == len(rows) - 1)  # as Trainer.accumulate does
            stats = loss_and_backward(
                model,
                tokens[row : row + 1],
                labels[row : row + 1],
                n_heads=2,
                denominators_K=denom,
                config=cfg,
            )
            total = stats if total is None else total + stats
        summed = all_reduce_sum(total.as_tensor())
        losses.append(type(stats).from_tensor(summed).total_loss().item())
        norm = torch.nn.utils.clip_grad_norm_(model.parameters(), float("inf"))
        norm = norm.full_tensor() if hasattr(norm, "full_tensor") else norm
        losses.append(norm.item())  # gradients summed over ranks, not averaged
        opt.step()
        opt.zero_grad()
    if ctx.rank == 0:
        Path(out).write_text(json.dumps(losses))
    teardown()


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]))
