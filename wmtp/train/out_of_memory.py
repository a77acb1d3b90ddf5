"""Running out of memory: recognised however it surfaced, and told as what to change.

A run that runs out of GPU (or CPU) memory stops with one message instead of the allocator's
traceback (which ``run.log`` keeps): where it happened, how much was in use, which checkpoints
are kept, and the ``--set`` options that use less memory per micro-batch while keeping the
batch, in the ``wmtp run --resume`` command that continues with them."""

from __future__ import annotations

from typing import Any

import torch

from wmtp.errors import LibraryFailure, linked_exceptions
from wmtp.train.run_dir import resume_command

CPU_ALLOCATOR_FAILURE = "can't allocate memory"
"""What torch's CPU allocator says when the operating system refuses it memory."""


def is_out_of_memory(exc: BaseException) -> bool:
    """An allocation failure of the GPU or the CPU, however it surfaced: the exception or one it
    was raised from (compiled code and torch.compile may wrap it)."""
    for link in linked_exceptions(exc):
        text = str(link).lower()
        if isinstance(link, torch.OutOfMemoryError) or "out of memory" in text:
            return True
        if CPU_ALLOCATOR_FAILURE in text:  # the CPU's failure is a plain RuntimeError
            return True
    return False


def out_of_memory_error(
    exc: BaseException, trainer: Any, doing: str | None
) -> LibraryFailure | None:
    """``exc`` as a :class:`~wmtp.errors.LibraryFailure` saying what to change when it is
    an allocation failure of ``trainer``'s run: in its step in progress (``doing = None``) or
    while ``doing`` (``"building the model"``: then the weights and optimizer state alone do not
    fit); else ``None``."""
    if not is_out_of_memory(exc):
        return None
    first = " ".join((str(exc).strip().splitlines() or [""])[0].split())
    first = first[first.find("DefaultCPUAllocator") :] if "DefaultCPUAllocator" in first else first
    saved = trainer.saved_step
    kept = f"its checkpoints up to step {saved} are kept" if saved else "it wrote no checkpoint"
    processes = trainer.ctx.world_size
    if doing is None:
        options, others = less_memory(trainer.recipe, processes)
    else:  # not even a step ran: the batch is not what fills the memory
        options, others = None, [MORE_GPUS]
    if options is None:
        advice = f"To use less memory, train {' or '.join(others)}"
    else:
        resume = resume_command(trainer.run_dir, processes) if saved else "run again"
        advice = f"To use less memory, {resume} with: {options}"
        advice += f"; or train {' or '.join(others)}" if others else ""
    return LibraryFailure(
        f"out of memory on {_device(trainer.ctx.device)} "
        f"{doing or f'in step {trainer.step + 1}'} ({first[:240]}). "
        f"The run stopped; {kept}. {advice}"
    )


RECOMPUTE = "--set parallel.activation_checkpointing=true (every block's activations recomputed)"
MORE_GPUS = 'on more GPUs (wmtp run --nproc-per-node N; parallel.sharding = "full_shard")'


def less_memory(recipe: Any, processes: int = 1) -> tuple[str | None, list[str]]:
    """The ``--set`` options that need less memory for the same batch (``None`` when the recipe
    already runs one sequence a micro-batch, every block recomputed), and the other ways."""
    t, p = recipe.training, recipe.parallel
    recomputes = p.activation_checkpointing is True
    last_resorts = ["on shorter rows (data.max_length)", MORE_GPUS]
    if t.micro_batch_size == 1:
        return (None, last_resorts) if recomputes else (RECOMPUTE, [])
    smaller = max(d for d in range(1, t.micro_batch_size) if t.micro_batch_size % d == 0)
    accum = t.grad_accum_steps * t.micro_batch_size // smaller
    options = (
        f"--set training.micro_batch_size={smaller} --set training.grad_accum_steps={accum} "
        f"(the same {t.micro_batch_size * t.grad_accum_steps} sequences a step"
        f"{' on each process' if processes > 1 else ''})"
    )
    return options, [] if recomputes else [f"with {RECOMPUTE}"]


def _device(device: torch.device) -> str:
    if device.type != "cuda":
        return "the CPU"
    peak = torch.cuda.max_memory_allocated(device) / 2**30
    total = torch.cuda.get_device_properties(device).total_memory / 2**30
    return f"the GPU {device} ({peak:.1f} GiB allocated at the peak, of its {total:.1f} GiB)"
