"""Collective bandwidth between this host's GPUs, as FSDP2 uses them (one process per GPU):

    torchrun --standalone --nproc-per-node N bench/nccl_probe.py [--mib 512]

all_gather_into_tensor (FSDP's parameter gather) and reduce_scatter_tensor (its gradient
reduction) of a ``--mib`` MiB bf16 output, median of 20 after 5 warm-ups; prints one JSON line
(rank 0) with the time and the bus bandwidth (NCCL-tests' definition: bytes * (N-1)/N / time).
Run with NCCL_DEBUG=INFO to see the transport NCCL chose (P2P/NVLink, SHM, ...).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics

import torch
import torch.distributed as dist


def timed(fn, repeats: int = 20, warmup: int = 5) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end) / 1e3)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--mib", type=int, default=512)
    args = parser.parse_args()
    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    torch.cuda.set_device(int(os.environ["LOCAL_RANK"]))
    dist.init_process_group("nccl", device_id=torch.device("cuda", int(os.environ["LOCAL_RANK"])))
    numel = args.mib * 2**20 // 2
    full = torch.empty(numel, dtype=torch.bfloat16, device="cuda")
    shard = torch.randn(numel // world, dtype=torch.bfloat16, device="cuda")
    gather_s = timed(lambda: dist.all_gather_into_tensor(full, shard))
    scatter_s = timed(lambda: dist.reduce_scatter_tensor(shard, full))
    size = numel * 2
    bus = size * (world - 1) / world
    result = {
        "world_size": world,
        "mib": args.mib,
        "all_gather_ms": round(gather_s * 1e3, 3),
        "all_gather_busbw_gb_s": round(bus / gather_s / 1e9, 1),
        "reduce_scatter_ms": round(scatter_s * 1e3, 3),
        "reduce_scatter_busbw_gb_s": round(bus / scatter_s / 1e9, 1),
    }
    if rank == 0:
        print(json.dumps(result), flush=True)
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
