"""Process groups: one code path for a single process and for torchrun.

Under ``torchrun`` (``RANK``/``WORLD_SIZE``/``LOCAL_RANK`` in the environment) :func:`init_distributed`
creates the default process group (NCCL on GPU, gloo on CPU) with a collective timeout, so a rank
that dies makes the others fail within ``timeout_s`` instead of hanging; torchrun itself also
stops the surviving workers when one exits with an error. Without those variables it returns a
single-process context and creates no group: the trainer then runs the same code minus sharding.
"""

from __future__ import annotations

import gc
import os
import random
from dataclasses import dataclass, field
from datetime import timedelta

import numpy as np
import torch
import torch.distributed as dist


@dataclass(frozen=True)
class DistContext:
    """Where this process sits: rank, world size and its device."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))

    @property
    def is_distributed(self) -> bool:
        return self.world_size > 1 or dist.is_initialized()

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def resolve_device(device: str, local_rank: int = 0) -> torch.device:
    """``auto``: this rank's CUDA device when there is one, else the CPU."""
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda":
        from wmtp.errors import RunError

        if not torch.cuda.is_available():
            raise RunError(
                "parallel.device = 'cuda' but no CUDA device is visible (set it to 'cpu' or 'auto')"
            )
        _one_gpu_per_process()
        torch.cuda.set_device(local_rank)
        return torch.device("cuda", local_rank)
    return torch.device("cpu")


def _one_gpu_per_process() -> None:
    """Each rank of a node computes on its own GPU, ``cuda:LOCAL_RANK``: more processes there
    than GPUs is a RunError on every rank (one message, exit 2), not a CUDA error on some."""
    from wmtp.errors import RunError

    here, gpus = int(os.environ.get("LOCAL_WORLD_SIZE", "1")), torch.cuda.device_count()
    if here > gpus:
        raise RunError(
            f"--nproc-per-node {here}: {here} processes on this node, but {gpus} CUDA "
            f"device{'s are' if gpus > 1 else ' is'} visible: one process per GPU, so "
            f"--nproc-per-node {gpus} at most (CUDA_VISIBLE_DEVICES chooses which)"
        )


def init_distributed(device: str = "auto", timeout_s: float | None = None) -> DistContext:
    """Join the torchrun process group if launched by torchrun; else a single-process context."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    dev = resolve_device(device, local_rank)
    if world_size == 1 and not dist.is_initialized():
        return DistContext(device=dev)
    if not dist.is_initialized():
        from wmtp.train.launcher import collective_timeout_s

        timeout = timeout_s if timeout_s is not None else collective_timeout_s()
        backend = "nccl" if dev.type == "cuda" else "gloo"
        dist.init_process_group(backend=backend, timeout=timedelta(seconds=timeout))
    return DistContext(dist.get_rank(), dist.get_world_size(), local_rank, dev)


def teardown() -> None:
    """Leave the process group (no-op without one), after every rank got here: a rank that tore
    its gloo connections down while a peer still finished its last collective made that peer
    abort at exit ("terminate called without an active exception"). Only on the way out of a
    run that succeeded: a failing rank leaves at once (``wmtp.train.run_log``)."""
    if dist.is_initialized():
        if dist.get_world_size() > 1:
            dist.barrier()
        # What still holds a process group (a finished trainer's modules, caught in reference
        # cycles) goes now: destroy_process_group then frees the groups while Python is whole. Left
        # to interpreter exit, a gloo group's destructor aborted the process now and then.
        gc.collect()
        dist.destroy_process_group()


def seed_everything(seed: int, rank: int = 0) -> None:
    """Seed Python, NumPy and torch; ranks get distinct streams (``seed + rank``).

    Model initialisation must not depend on the rank: build the model under ``seed`` alone
    (:func:`model_init_seed`) before calling this with the rank.
    """
    s = seed + rank
    random.seed(s)
    np.random.seed(s % 2**32)
    torch.manual_seed(s)


def model_init_seed(seed: int) -> None:
    """Seed torch identically on every rank, so every rank builds the same initial weights."""
    torch.manual_seed(seed)


def all_reduce_sum(t: torch.Tensor) -> torch.Tensor:
    """Sum ``t`` over ranks in place (identity without a group); returns ``t``. A CPU tensor
    under NCCL (which reduces device memory only) makes a round trip through this rank's GPU."""
    return _all_reduce(t, dist.ReduceOp.SUM)


def all_reduce_max(t: torch.Tensor) -> torch.Tensor:
    """The elementwise maximum of ``t`` over ranks, in place (as :func:`all_reduce_sum`)."""
    return _all_reduce(t, dist.ReduceOp.MAX)


def _all_reduce(t: torch.Tensor, op) -> torch.Tensor:
    if dist.is_initialized() and dist.get_world_size() > 1:
        if t.device.type == "cpu" and dist.get_backend() == "nccl":
            on_device = t.to(torch.device("cuda", torch.cuda.current_device()))
            dist.all_reduce(on_device, op=op)
            t.copy_(on_device)
        else:
            dist.all_reduce(t, op=op)
    return t


def barrier() -> None:
    if dist.is_initialized() and dist.get_world_size() > 1:
        dist.barrier()
