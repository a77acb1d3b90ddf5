"""Where trained weights are: run directories, their checkpoints, wmtp model directories.

Torch-free: ``wmtp validate --env`` and ``wmtp run`` use it to report missing inputs before any
model is built. A reference to weights trained by wmtp (``model.*.checkpoint``, ``wmtp eval``) is:

- a run directory (``recipe.toml`` + ``checkpoints/step-N/``): its newest checkpoint whose
  weights and recipe match its manifest (as a resume takes the newest intact one), each newer
  one named in a warning;
- ``<runs_dir>/<experiment>/latest``: the run that link points at; without the link, the newest
  run directory of the experiment by name;
- one trainer checkpoint, ``<run>/checkpoints/step-N`` (``model.safetensors`` or, when LoRA
  trained, ``lora.safetensors``; written under a temporary name and renamed when complete);
- a wmtp model directory (``wmtp_model.json`` + ``model.safetensors``, from ``save_wmtp``).

A process that finds weights in a trainer checkpoint holds that checkpoint's readers' lock
(``step-N/.readers``, shared) until it ends: the run that wrote it, still training, keeps it past
``keep_last`` meanwhile and prunes it at a later checkpoint (``wmtp.train.checkpoint``).
"""

from __future__ import annotations

import contextlib
import hashlib
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Literal, TypeVar

from wmtp import locks
from wmtp.errors import CheckpointError

CHECKPOINTS = "checkpoints"
STEP_DIR = re.compile(r"^step-(\d+)$")
RECIPE_FILE = "recipe.toml"
MODEL_INFO = "wmtp_model.json"
FULL_WEIGHTS = "model.safetensors"
LORA_WEIGHTS = "lora.safetensors"
TRAINER_STATE = "trainer.json"
DCP_STATE = "state"
"""In a training checkpoint: its sharded state (torch.distributed.checkpoint), the trained
weights and the optimizer's, which a resume loads and ``wmtp export`` reads where the
consolidated file is missing."""
READERS_LOCK = ".readers"
"""In a checkpoint: the lock its readers share, which its trainer's pruning must take alone."""

PINS = ".pinned-by"
"""In a checkpoint: one file per run that loads it as a frozen model and may still be resumed
(:func:`pin`), which its trainer's pruning leaves alone."""

_read_now: dict[Path, IO[str]] = {}
_verified: set[tuple] = set()
T = TypeVar("T")


@dataclass(frozen=True)
class TrainedWeights:
    """Weights trained by wmtp, found from a reference (see the module docstring)."""

    directory: Path
    """The checkpoint (or model) directory that holds them."""
    kind: Literal["full", "lora"]
    """Every parameter, or the LoRA adapters over a base model."""
    recipe_file: Path | None
    """The resolved recipe that trained them (beside them, or in their run directory)."""

    @property
    def file(self) -> Path:
        return self.directory / (FULL_WEIGHTS if self.kind == "full" else LORA_WEIGHTS)


def require_base_state(directory: Path) -> Path:
    """The ``state/`` of a checkpoint whose LoRA adapters trained over a random initialisation
    (no ``path`` in its recipe's model section): their base lives there alone. A
    CheckpointError where the checkpoint has none (every loader and ``wmtp export`` say it so)."""
    state = directory / DCP_STATE
    if not state.is_dir():
        raise CheckpointError(
            f"{directory}: its LoRA adapters trained over a random initialisation (no path in "
            f"its recipe's model section), which only the checkpoint's {DCP_STATE}/ holds, and "
            f"it has none: use a checkpoint of the run that still has {DCP_STATE}/"
        )
    return state


def step_dirs(run_dir: str | Path) -> list[Path]:
    """The complete checkpoints of a run (``checkpoints/step-N``), oldest first."""
    root = Path(run_dir) / CHECKPOINTS
    if not root.is_dir():
        return []
    found = [(step_number(p), p) for p in root.iterdir() if STEP_DIR.match(p.name)]
    return [p for _, p in sorted(found)]


def step_number(checkpoint: Path) -> int:
    """N of a checkpoint directory named ``step-N``."""
    match = STEP_DIR.match(checkpoint.name)
    assert match is not None, checkpoint
    return int(match.group(1))


def keep_while_read(directory: Path) -> bool:
    """Keep a trainer checkpoint from ``keep_last``'s pruning until this process ends (nothing to
    keep for other paths); False when it is gone: pruned before it could be kept."""
    if not _is_trainer_checkpoint(directory):
        return True
    key = directory.resolve()
    if key not in _read_now and (held := locks.share(directory / READERS_LOCK)) is not None:
        _read_now[key] = held
    return directory.is_dir()


def pin(directory: Path, run: Path) -> None:
    """Keep a trainer checkpoint from ``keep_last``'s pruning while ``run``, which loads it as a
    frozen model (a critic, a Rho-1 reference), has not finished: stopped, it must find the same
    weights when resumed. A file naming the run in ``directory/.pinned-by``; a checkpoint this
    user cannot write in is left as it is (its owner's pruning may then remove it)."""
    if not _is_trainer_checkpoint(directory):
        return
    try:
        (directory / PINS).mkdir(exist_ok=True)
        (directory / PINS / _pin_name(run)).write_text(str(run.resolve()) + "\n")
    except OSError:
        return


def unpin(directory: Path, run: Path) -> None:
    """``run`` has finished: it no longer keeps ``directory`` (:func:`pin`)."""
    with contextlib.suppress(OSError):
        (directory / PINS / _pin_name(run)).unlink(missing_ok=True)


def pinned_by(directory: Path) -> list[Path]:
    """The runs that keep ``directory`` (:func:`pin`) and are still there; a pin whose run was
    removed is dropped."""
    runs = []
    for file in sorted((directory / PINS).glob("*")):
        with contextlib.suppress(OSError):
            run = Path(file.read_text().strip())
            if run.is_dir():
                runs.append(run)
            else:
                file.unlink()
    return runs


def _pin_name(run: Path) -> str:
    return hashlib.sha256(str(run.resolve()).encode()).hexdigest()[:16]


def _is_trainer_checkpoint(directory: Path) -> bool:
    return bool(STEP_DIR.match(directory.name)) and directory.parent.name == CHECKPOINTS


def keep_named_checkpoint(directory: Path, reference: str | Path) -> None:
    """:func:`keep_while_read` for a checkpoint the user named: a CheckpointError when its run,
    still training, pruned it before it could be kept."""
    if not keep_while_read(directory):
        raise CheckpointError(f"{reference}: removed just now (its run's keep_last pruned it)")


def is_run_dir(path: Path) -> bool:
    return (path / RECIPE_FILE).is_file() and (path / CHECKPOINTS).is_dir()


def follow_latest(path: str | Path) -> Path:
    """``path``, with ``<experiment>/latest`` replaced by the run it names: the link's target, or
    (no link) the newest run directory of the experiment, by name, that has a checkpoint."""
    path = Path(path)
    if path.name != "latest" or path.exists() or not path.parent.is_dir():
        return path
    runs = sorted(p for p in path.parent.iterdir() if p.is_dir() and step_dirs(p))
    return runs[-1] if runs else path


def find_trained_weights(reference: str | Path) -> TrainedWeights:
    """The weights a reference names (see the module docstring); a CheckpointError saying what
    was looked for when there are none."""
    path = follow_latest(reference)
    if not path.exists():
        if path.name == "latest":
            raise CheckpointError(
                f"{reference}: no run of experiment {path.parent.name!r} under "
                f"{path.parent.parent} yet (train the recipe whose experiment.name is "
                f"{path.parent.name!r} first)"
            )
        raise CheckpointError(f"{reference}: no such run directory or checkpoint")
    if is_run_dir(path):
        return _newest_intact(reference, path)
    keep_named_checkpoint(path, reference)
    kind = _weights_kind(path)
    if kind is None:
        raise CheckpointError(
            f"{reference}: neither a run directory (recipe.toml + checkpoints/) nor a checkpoint "
            f"({FULL_WEIGHTS} or {LORA_WEIGHTS})"
        )
    found = TrainedWeights(path, kind, _recipe_beside(path))
    _verify(found)
    return found


def _newest_intact(reference: str | Path, run: Path) -> TrainedWeights:
    """The newest checkpoint of ``run`` whose weights and recipe match its manifest, as a
    resume takes the newest intact one (:func:`newest_whole`)."""

    def intact(step: Path) -> TrainedWeights:
        kind = _weights_kind(step)
        if kind is None:
            raise CheckpointError(f"{step}: no {FULL_WEIGHTS} or {LORA_WEIGHTS}")
        found = TrainedWeights(step, kind, _recipe_beside(step))
        _verify(found)
        return found

    return newest_whole(reference, run, intact, using="using")


def newest_whole(reference: str | Path, run: Path, check: Callable[[Path], T], using: str) -> T:
    """What ``check`` makes of the newest checkpoint of ``run`` it does not refuse (a
    CheckpointError: a file that does not match its manifest), that checkpoint kept from its
    run's pruning while read: each newer one is named in a warning (which file, why; "USING
    step-N, the one before it"); none is a CheckpointError listing them."""
    import logging

    skipped = []
    for step in reversed(step_dirs(run)):
        if not keep_while_read(step):
            continue  # pruned while we looked: a newer one was listed first
        try:
            found = check(step)
        except CheckpointError as exc:
            skipped.append(exc.render())
            continue
        for why in skipped:
            logging.getLogger(__name__).warning(
                "%s; %s %s, the one before it", why, using, step.name
            )
        return found
    if not skipped:
        raise CheckpointError(f"{reference}: the run {run} has no checkpoint with weights yet")
    raise CheckpointError(
        f"{reference}: no checkpoint of {run} has whole weights:\n  " + "\n  ".join(skipped)
    )


def _verify(found: TrainedWeights) -> None:
    """A trainer checkpoint's weights and recipe against its manifest (``wmtp.train.manifest``):
    a truncated or altered file is named before anything loads. Weights without a trainer
    checkpoint around them (a hand-made directory) have no manifest to check."""
    from wmtp.train.manifest import MANIFEST, has_manifest, verify

    directory = found.directory
    if not (has_manifest(directory) or (directory / TRAINER_STATE).is_file()):
        return
    files = (found.file, directory / RECIPE_FILE, directory / MANIFEST)
    seen = tuple((f, f.stat().st_size, f.stat().st_mtime_ns) for f in files if f.is_file())
    if seen in _verified:  # hashed once a process: validation, the build and eval all ask
        return
    verify(directory, only=[found.file.name, RECIPE_FILE])
    _verified.add(seen)


def _weights_kind(directory: Path) -> Literal["full", "lora"] | None:
    if (directory / FULL_WEIGHTS).is_file():
        return "full"
    if (directory / LORA_WEIGHTS).is_file():
        return "lora"
    return None


def sharded_adapters(directory: Path) -> TrainedWeights | None:
    """A training checkpoint whose weights are only in its :data:`DCP_STATE` (no
    consolidated file), as the LoRA adapters it holds where its recipe trained LoRA (which the
    caller knows); None for any other folder. Their base is checked before they are read
    (``wmtp.assembly.check_lora_base``)."""
    if _weights_kind(directory) is not None or not (directory / DCP_STATE).is_dir():
        return None
    return TrainedWeights(directory, "lora", _recipe_beside(directory))


def _recipe_beside(directory: Path) -> Path | None:
    """A checkpoint's resolved recipe: in the checkpoint, else in its run directory."""
    for candidate in (directory / RECIPE_FILE, directory.parent.parent / RECIPE_FILE):
        if candidate.is_file():
            return candidate
    return None


__all__ = [
    "DCP_STATE",
    "FULL_WEIGHTS",
    "LORA_WEIGHTS",
    "MODEL_INFO",
    "RECIPE_FILE",
    "TrainedWeights",
    "find_trained_weights",
    "follow_latest",
    "is_run_dir",
    "keep_named_checkpoint",
    "keep_while_read",
    "sharded_adapters",
    "step_dirs",
]
