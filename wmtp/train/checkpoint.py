"""Training checkpoints: ``<run>/checkpoints/step-N/``, written whole or not at all.

A checkpoint holds

- ``state/``: model and optimizer state through ``torch.distributed.checkpoint`` (sharded under
  FSDP2, one file per rank; loadable at another world size, DCP reshards on load);
- ``model.safetensors`` (or ``lora.safetensors`` when LoRA trains): consolidated weights for
  inference, written by rank 0;
- ``scheduler.pt``, ``rng/rank{r}.pt`` (Python, NumPy, torch CPU and CUDA generators of every rank),
  ``trainer.json`` (step, data position, counters) and the resolved ``recipe.toml``.

Every rank writes into ``.tmp-step-N/``; after a barrier rank 0 renames it to ``step-N`` and only
then deletes checkpoints beyond the newest ``keep_last``: a crash never leaves a torn checkpoint
and never removes the last good one. On a multi-node run ``checkpoints/`` must be on a shared
file system.
"""

from __future__ import annotations

import contextlib
import json
import random
import shutil
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from safetensors.torch import save_file
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    get_state_dict,
    set_state_dict,
)

from wmtp.errors import CheckpointError
from wmtp.models.locate import CHECKPOINTS
from wmtp.models.locate import step_dirs as checkpoint_dirs
from wmtp.parallel import barrier


def latest_checkpoint(run_dir: Path) -> Path | None:
    """The newest complete checkpoint of a run (``None`` before the first)."""
    dirs = checkpoint_dirs(run_dir)
    return dirs[-1] if dirs else None


def rng_state() -> dict[str, Any]:
    state = {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        # This rank's own device only: a run resumed on another number of GPUs per process
        # (or with other visible devices) has no use for the others' streams.
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    cuda = state.get("cuda")
    if cuda is not None and torch.cuda.is_available():
        if isinstance(cuda, list | tuple):  # checkpoints written before: every visible device
            cuda = (
                cuda[torch.cuda.current_device()]
                if len(cuda) > torch.cuda.current_device()
                else None
            )
        if cuda is not None:
            torch.cuda.set_rng_state(cuda)


def _rank() -> int:
    return dist.get_rank() if dist.is_initialized() else 0


def _broadcast_path(path: Path) -> Path:
    """Rank 0's path on every rank (temporary names must agree)."""
    if not (dist.is_initialized() and dist.get_world_size() > 1):
        return path
    box = [str(path)]
    dist.broadcast_object_list(box, src=0)
    return Path(box[0])


@contextlib.contextmanager
def _single_process_quiet():
    """DCP warns that it assumes one process when there is no group: that is the intent here."""
    with warnings.catch_warnings():
        warnings.filterwarnings(
            "ignore", message=".*assuming the intent is to (save|load) in a single"
        )
        yield


def consolidated_state_dict(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The full (unsharded) model state on CPU; complete on rank 0 (every rank must call it)."""
    return get_model_state_dict(
        model, options=StateDictOptions(full_state_dict=True, cpu_offload=True)
    )


def gathered(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Whole tensors of a state dict whose entries may be FSDP2-sharded DTensors (collective:
    every rank calls it with the same keys)."""
    return {k: v.full_tensor() if hasattr(v, "full_tensor") else v for k, v in tensors.items()}


def save_checkpoint(
    run_dir: Path,
    step: int,
    *,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    trainer_state: dict[str, Any],
    recipe_text: str,
    keep_last: int,
    lora_state: dict[str, torch.Tensor] | None = None,
) -> Path:
    """Write ``step-N`` atomically on every rank (collective); returns its path."""
    root = Path(run_dir) / CHECKPOINTS
    final = root / f"step-{step}"
    tmp = _broadcast_path(root / f".tmp-step-{step}")
    if _rank() == 0:
        if tmp.exists():
            shutil.rmtree(tmp)
        (tmp / "rng").mkdir(parents=True)
    barrier()
    model_sd, optim_sd = get_state_dict(model, optimizer)
    with _single_process_quiet():
        dcp.save({"model": model_sd, "optimizer": optim_sd}, checkpoint_id=str(tmp / "state"))
    full = consolidated_state_dict(model) if lora_state is None else gathered(lora_state)
    torch.save(rng_state(), tmp / "rng" / f"rank{_rank()}.pt")
    if _rank() == 0:
        name = "lora.safetensors" if lora_state is not None else "model.safetensors"
        save_file({k: v.detach().cpu().contiguous() for k, v in full.items()}, str(tmp / name))
        torch.save(scheduler.state_dict(), tmp / "scheduler.pt")
        (tmp / "trainer.json").write_text(json.dumps(trainer_state, indent=2) + "\n")
        (tmp / "recipe.toml").write_text(recipe_text)
    barrier()
    if _rank() == 0:
        if final.exists():  # a re-run of the same step after a resume
            shutil.rmtree(final)
        tmp.rename(final)
        for old in checkpoint_dirs(run_dir)[:-keep_last]:
            shutil.rmtree(old, ignore_errors=True)
    barrier()
    return final


def load_checkpoint(
    ckpt: Path,
    *,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
) -> dict[str, Any]:
    """Restore model, optimizer, scheduler and this rank's RNG; returns ``trainer.json``."""
    ckpt = Path(ckpt)
    if not (ckpt / "trainer.json").is_file() or not (ckpt / "state").is_dir():
        raise CheckpointError(f"{ckpt}: not a complete training checkpoint (no trainer.json/state)")
    model_sd, optim_sd = get_state_dict(model, optimizer)
    state = {"model": model_sd, "optimizer": optim_sd}
    try:
        with _single_process_quiet():
            dcp.load(state, checkpoint_id=str(ckpt / "state"))
    except Exception as exc:  # DCP reports mismatches as generic errors
        raise CheckpointError(
            f"{ckpt / 'state'}: cannot load into this model/optimizer: {exc}"
        ) from exc
    set_state_dict(
        model, optimizer, model_state_dict=state["model"], optim_state_dict=state["optimizer"]
    )
    scheduler.load_state_dict(torch.load(ckpt / "scheduler.pt", weights_only=False))
    rng_file = ckpt / "rng" / f"rank{_rank()}.pt"
    trainer = json.loads((ckpt / "trainer.json").read_text())
    if rng_file.exists():
        set_rng_state(torch.load(rng_file, weights_only=False))
    else:  # resumed at a larger world size: this rank had no RNG yet
        from wmtp.parallel import seed_everything

        seed_everything(trainer.get("seed", 0) + trainer["step"], _rank())
    return trainer


def export_safetensors(model: torch.nn.Module, path: Path) -> Path:
    """Consolidated model weights for inference (collective under FSDP; rank 0 writes)."""
    full = consolidated_state_dict(model)
    if _rank() == 0:
        path.parent.mkdir(parents=True, exist_ok=True)
        save_file({k: v.contiguous() for k, v in full.items()}, str(path))
    barrier()
    return path
