"""Two real gloo processes whiten different halves of a batch with identical statistics."""

import os
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from wmtp.weighting import BatchWhitener, EMAWhitener, whiten


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _halves(step: int) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Per rank: different values and a different number of valid tokens."""
    gen = torch.Generator().manual_seed(100 + step)
    xs = [torch.randn(2, 9, generator=gen) * (r + 1) + r for r in range(2)]
    masks = [torch.rand(2, 9, generator=gen) > 0.3 * (r + 1) for r in range(2)]
    return xs, masks


def _worker(rank: int, port: int, out_dir: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=2)
    try:
        batch, ema = BatchWhitener(), EMAWhitener(momentum=0.3, warmup_steps=1)
        results = {"batch": [], "ema": [], "ema_stats": []}
        for step in range(4):
            xs, masks = _halves(step)
            results["batch"].append(batch(xs[rank], masks[rank]))
            results["ema"].append(ema(xs[rank], masks[rank]))
            results["ema_stats"].append(ema.state_dict())
        torch.save(results, os.path.join(out_dir, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
def test_two_ranks_whiten_with_the_global_statistics(tmp_path):
    mp.start_processes(_worker, args=(_free_port(), str(tmp_path)), nprocs=2, start_method="spawn")
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in range(2)]
    # Identical running statistics on both ranks, after every step.
    assert ranks[0]["ema_stats"] == ranks[1]["ema_stats"]
    single = EMAWhitener(momentum=0.3, warmup_steps=1)
    for step in range(4):
        xs, masks = _halves(step)
        x_all, m_all = torch.cat(xs), torch.cat(masks)
        # Batch whitening of the halves = one process whitening the whole global batch.
        expected = whiten(x_all, m_all)
        got = torch.cat([ranks[0]["batch"][step], ranks[1]["batch"][step]])
        torch.testing.assert_close(got, expected, atol=1e-6, rtol=1e-5)
        # The EMA too: two ranks behave as one process that sees the global batch.
        expected_ema = single(x_all, m_all)
        got_ema = torch.cat([ranks[0]["ema"][step], ranks[1]["ema"][step]])
        torch.testing.assert_close(got_ema, expected_ema, atol=1e-6, rtol=1e-5)
        assert ranks[0]["ema_stats"][step] == pytest.approx(single.state_dict())
