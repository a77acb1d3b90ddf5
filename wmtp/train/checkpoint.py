"""Training checkpoints: ``<run>/checkpoints/step-N/``, written whole or not at all.

A checkpoint holds

- ``state/``: model and optimizer state through ``torch.distributed.checkpoint`` (sharded under
  FSDP2, one file per rank; loadable at another world size, DCP reshards on load);
- ``model.safetensors`` (or ``lora.safetensors`` when LoRA trains): consolidated weights for
  inference, written by rank 0;
- ``scheduler.pt``, ``rng/rank{r}.pt`` (Python, NumPy, torch CPU and CUDA generators of every rank,
  and that rank's own batch-source state: a weighting's random generator differs per rank),
  ``trainer.json`` (step, data position of rank 0, counters) and the resolved ``recipe.toml``.

Every rank writes into ``.tmp-step-N/``; after a barrier rank 0 writes ``manifest.json`` (every
file's size and SHA-256: ``wmtp.train.manifest``), renames the directory to ``step-N`` and only
then deletes checkpoints beyond the newest ``keep_last``, except one another process reads now
(``wmtp export``, ``wmtp eval``, a run using it as a frozen model: they share its readers' lock,
``wmtp.models.locate.keep_while_read``), deleted at a later checkpoint once free. A crash never
leaves a torn checkpoint, never removes the last good one, and a checkpoint damaged later is
recognised before it is loaded. A write that fails (a full disk) removes the partial directory and says why. On a
multi-node run ``checkpoints/`` must be on a shared file system.
"""

from __future__ import annotations

import contextlib
import json
import logging
import random
import shutil
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    get_state_dict,
    set_state_dict,
)

from wmtp import locks
from wmtp.errors import CheckpointError, RunError
from wmtp.models import safetensors_file
from wmtp.models.locate import (
    CHECKPOINTS,
    DCP_STATE,
    FULL_WEIGHTS,
    LORA_WEIGHTS,
    READERS_LOCK,
    TRAINER_STATE,
    pinned_by,
)
from wmtp.models.locate import step_dirs as checkpoint_dirs
from wmtp.parallel import barrier
from wmtp.train.io_errors import describe_write_error
from wmtp.train.manifest import write_manifest

log = logging.getLogger(__name__)

RANK_DATA = "data"
"""The key of a rank's own batch-source state in its ``rng/rank{r}.pt``."""


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
    """Write ``step-N`` atomically on every rank (collective); returns its path.

    Every rank writes into ``.tmp-step-N``; then rank 0 writes the manifest (sizes and hashes of
    every file, last), renames the directory and deletes checkpoints beyond ``keep_last``. A
    write that fails on any rank (a full disk, an I/O error) fails on every rank alike: the
    partial directory is removed, earlier checkpoints stay, and a RunError says why and how
    much space is left.
    """
    root = Path(run_dir) / CHECKPOINTS
    final = root / f"step-{step}"
    tmp = _broadcast_path(root / f".tmp-step-{step}")
    failure = _attempt(lambda: _fresh_dir(tmp))
    barrier()
    # DCP's save is collective and fails on every rank alike; the rest are this rank's files.
    failure = failure or _attempt(lambda: _save_state(tmp, model, optimizer))
    full = consolidated_state_dict(model) if lora_state is None else gathered(lora_state)
    rank_state = {**rng_state(), RANK_DATA: trainer_state["data"]}
    failure = failure or _attempt(lambda: torch.save(rank_state, _rng_file(tmp)))
    if _rank() == 0:
        failure = failure or _attempt(
            lambda: _write_rank0_files(tmp, full, lora_state, scheduler, trainer_state, recipe_text)
        )
        failure = failure or _attempt(lambda: write_manifest(tmp))  # last: all is written
        # made now, for readers who may not write here (a colleague's export): they share it
        failure = failure or _attempt(lambda: (tmp / READERS_LOCK).touch())
    if _any_rank(failure is not None):  # every rank reaches this one collective
        cause = describe_write_error(failure, tmp.parent) if failure else "another rank failed"
        if _rank() == 0:  # the room was measured first: the partial checkpoint filled it
            shutil.rmtree(tmp, ignore_errors=True)
        barrier()
        raise _write_error(final, cause)
    if _rank() == 0:
        if final.exists():  # a resume from before a damaged checkpoint has reached its step
            _set_aside(final)
        tmp.rename(final)
        for old in checkpoint_dirs(run_dir)[:-keep_last]:
            _remove_unless_read(old, keep_last)
    barrier()
    return final


def _set_aside(replaced: Path) -> None:
    """Rename a checkpoint this step replaces (one a resume passed over as damaged) out of the
    run's checkpoints, never deleting it: what of it is whole (its weights, evaluated perhaps)
    stays for the user to keep or remove."""
    suffix = f".replaced-{time.strftime('%Y%m%d-%H%M%S')}"
    aside = replaced.with_name(replaced.name + suffix)
    replaced.rename(aside)
    log.warning(
        "%s is replaced by this run's own step %s; the one there before (passed over by the "
        "resume as damaged) is kept as %s: remove it once nothing of it is wanted",
        replaced,
        replaced.name.removeprefix("step-"),
        aside,
    )
    evaluated = replaced.parent.parent / "eval" / replaced.name  # its results, not the new one's
    if evaluated.is_dir():
        evaluated.rename(evaluated.with_name(evaluated.name + suffix))
        log.warning("its evaluation goes with it: %s%s", evaluated, suffix)


def _remove_unless_read(old: Path, keep_last: int) -> None:
    """Delete a checkpoint beyond ``keep_last``, unless a process reads it now, or a run that
    loads it as a frozen model may still resume (``locate.pin``): then it stays until a later
    checkpoint (or the run's end, :func:`prune_at_end`) finds it free."""
    if not _removed_if_free(old):
        log.info("%s kept past keep_last = %d: %s", old, keep_last, _kept_for(old))


def _kept_for(old: Path) -> str:
    runs = pinned_by(old)
    if runs:
        return (
            f"run {runs[0]} loads it as a frozen model and has not finished (resumed, it "
            "needs these weights); it goes at a checkpoint after that run has finished or "
            "was removed"
        )
    return "another wmtp command reads it now; it goes at a later checkpoint"


def remove_half_written(run_dir: Path) -> None:
    """Checkpoints an earlier process of this run left half written (``.tmp-step-N``: a second
    stop signal or a kill while it saved), which no later save of that step would clear. The
    caller trains the run, under its lock: no other process writes them."""
    for tmp in sorted((run_dir / "checkpoints").glob(".tmp-step-*")):
        shutil.rmtree(tmp, ignore_errors=True)
        log.info("removed %s: a checkpoint an earlier process left half written", tmp)


def prune_at_end(run_dir: Path, keep_last: int) -> None:
    """At the end of a run (rank 0): the checkpoints kept past ``keep_last`` for a reader go
    now if it is done; one still read stays, said with what to do (no later checkpoint will
    prune it)."""
    for old in checkpoint_dirs(run_dir)[:-keep_last]:
        if pinned_by(old):
            log.info("%s stays past keep_last = %d: %s", old, keep_last, _kept_for(old))
        elif not _removed_if_free(old):
            log.warning(
                "%s stays past keep_last = %d: another wmtp command still reads it as the run "
                "ends; remove it once that command is done",
                old,
                keep_last,
            )


def _removed_if_free(old: Path) -> bool:
    """Delete ``old`` unless a process holds its readers' lock or a run that may resume keeps
    it (``locate.pin``); whether it went."""
    if pinned_by(old):
        return False
    with locks.unless_shared(old / READERS_LOCK) as free:
        if free:
            shutil.rmtree(old, ignore_errors=True)
        return free


def _fresh_dir(tmp: Path) -> None:
    if _rank() == 0:
        if tmp.exists():
            shutil.rmtree(tmp)
        (tmp / "rng").mkdir(parents=True)


def _save_state(tmp: Path, model, optimizer) -> None:
    model_sd, optim_sd = get_state_dict(model, optimizer)
    with _single_process_quiet():
        dcp.save({"model": model_sd, "optimizer": optim_sd}, checkpoint_id=str(tmp / DCP_STATE))


def _rng_file(tmp: Path) -> Path:
    return tmp / "rng" / f"rank{_rank()}.pt"


def _write_rank0_files(tmp, full, lora_state, scheduler, trainer_state, recipe_text) -> None:
    name = LORA_WEIGHTS if lora_state is not None else FULL_WEIGHTS
    safetensors_file.save({k: v.detach().cpu().contiguous() for k, v in full.items()}, tmp / name)
    torch.save(scheduler.state_dict(), tmp / "scheduler.pt")
    (tmp / TRAINER_STATE).write_text(json.dumps(trainer_state, indent=2) + "\n")
    (tmp / "recipe.toml").write_text(recipe_text)


def _attempt(write) -> BaseException | None:
    """Run ``write``; the exception it raised, if any (a user's Ctrl-C is not caught)."""
    try:
        write()
    except (KeyboardInterrupt, SystemExit):
        raise
    except BaseException as exc:  # DCP's CheckpointException is a BaseException
        return exc
    return None


def _any_rank(flag: bool) -> bool:
    """Whether ``flag`` is true on any rank (every rank learns the same answer)."""
    if not (dist.is_initialized() and dist.get_world_size() > 1):
        return flag
    box = torch.tensor([1.0 if flag else 0.0])
    if dist.get_backend() == "nccl":
        box = box.cuda()
    dist.all_reduce(box, op=dist.ReduceOp.MAX)
    return bool(box.item())


def _write_error(final: Path, cause: str) -> RunError:
    """What failed while writing ``final``, in one message: the ``cause`` (no space left and
    the free space, another I/O error, or another rank's failure), and what is kept."""
    from wmtp.train.run_dir import resume_command

    run = final.parent.parent
    kept = [p.name for p in checkpoint_dirs(run)]
    then = (
        f"earlier checkpoints kept: {', '.join(kept)}; once fixed, continue with: "
        f"{resume_command(run)}"
        if kept
        else "there is no earlier checkpoint to resume from: once fixed, run the recipe again"
    )
    return RunError(
        f"cannot write checkpoint {final}: {cause}; the partial checkpoint was removed, {then}"
    )


def load_checkpoint(
    ckpt: Path,
    *,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
) -> dict[str, Any]:
    """Restore model, optimizer, scheduler and this rank's RNG; returns ``trainer.json``, its
    ``data`` this rank's own batch-source state where the checkpoint has one.

    The checkpoint was verified against its manifest before (``wmtp.train.runner``); whatever
    still fails to load becomes one CheckpointError naming the file."""
    ckpt = Path(ckpt)
    if not (ckpt / TRAINER_STATE).is_file() or not (ckpt / DCP_STATE).is_dir():
        raise CheckpointError(f"{ckpt}: not a complete training checkpoint (no trainer.json/state)")
    model_sd, optim_sd = get_state_dict(model, optimizer)
    state = {"model": model_sd, "optimizer": optim_sd}
    _load_part(ckpt / DCP_STATE, lambda: _dcp_load(state, ckpt / DCP_STATE))
    set_state_dict(
        model, optimizer, model_state_dict=state["model"], optim_state_dict=state["optimizer"]
    )
    scheduler_state = _load_part(ckpt / "scheduler.pt", lambda: _torch_load(ckpt / "scheduler.pt"))
    scheduler.load_state_dict(scheduler_state)
    trainer = _load_part(
        ckpt / TRAINER_STATE, lambda: json.loads((ckpt / TRAINER_STATE).read_text())
    )
    rng_file = ckpt / "rng" / f"rank{_rank()}.pt"
    if rng_file.exists():
        rank_state = _load_part(rng_file, lambda: _torch_load(rng_file))
        set_rng_state(rank_state)
        if RANK_DATA in rank_state:  # this rank's own (trainer.json holds rank 0's)
            trainer["data"] = rank_state[RANK_DATA]
    else:  # resumed at a larger world size: this rank had no RNG yet (rank 0's data state)
        from wmtp.parallel import seed_everything

        seed_everything(trainer.get("seed", 0) + trainer["step"], _rank())
    return trainer


def _dcp_load(state: dict, path: Path) -> None:
    with _single_process_quiet():
        dcp.load(state, checkpoint_id=str(path))


def _torch_load(path: Path) -> Any:
    return torch.load(path, weights_only=False)


def _load_part(path: Path, load) -> Any:
    """``load()``, any failure of it (DCP's CheckpointException is a BaseException) one
    CheckpointError naming ``path``."""
    try:
        return load()
    except (KeyboardInterrupt, SystemExit):
        raise
    except BaseException as exc:
        reason = " ".join(str(exc).split())[:500] or type(exc).__name__
        raise CheckpointError(f"{path}: cannot be loaded into this run ({reason})") from None


def export_safetensors(model: torch.nn.Module, path: Path) -> Path:
    """Consolidated model weights for inference (collective under FSDP; rank 0 writes)."""
    full = consolidated_state_dict(model)
    if _rank() == 0:
        path.parent.mkdir(parents=True, exist_ok=True)
        safetensors_file.save({k: v.contiguous() for k, v in full.items()}, path)
    barrier()
    return path
