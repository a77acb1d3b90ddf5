"""Run directories: ``<runs_dir>/<experiment>/<YYYYmmdd-HHMMSS>-<hash8>/`` and what they hold.

A run directory is created with the resolved ``recipe.toml`` (loads back to the identical recipe)
and ``fingerprint.json`` (recipe hash, wmtp and torch versions, git SHA, devices); the trainer
adds ``inputs.json`` (the trained checkpoints its models loaded, resolved, and the identity of
the base model its LoRA adapters train over), ``metrics.jsonl``,
TensorBoard events under ``tb/``, ``checkpoints/step-N/`` and ``run.log`` (the log of the run, a
failed start's included, unless the user's input failed it: :func:`remove_failed_start`). A
``latest`` symlink per experiment points at the newest run that wrote a checkpoint.
"""

from __future__ import annotations

import contextlib
import hashlib
import itertools
import json
import os
import platform
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from wmtp.atomic import replaced
from wmtp.errors import RunError
from wmtp.locks import check_free, holding
from wmtp.train.run_log import LOG_FILE

RECIPE_FILE = "recipe.toml"
FINGERPRINT_FILE = "fingerprint.json"
INPUTS_FILE = "inputs.json"
"""The trained weights each ``model.<role>.checkpoint`` named when the run started, resolved
(``runs/critic/latest`` -> the checkpoint it was): what the run really used, for later readers;
and, for LoRA, ``model.<role>.path`` with the identity of the base its adapters train over
(:func:`read_bases`)."""


def recipe_hash(recipe_text: str) -> str:
    """sha256 of the resolved recipe's TOML (the run's identity)."""
    return hashlib.sha256(recipe_text.encode()).hexdigest()


def git_sha(cwd: Path | None = None) -> str | None:
    """The checkout's HEAD commit (with ``-dirty`` when files changed); None outside git."""
    cwd = cwd or Path(__file__).resolve().parent
    try:
        sha = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True, text=True, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=cwd,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None
    return f"{sha}-dirty" if dirty else sha


def devices() -> list[str]:
    """What this process can train on: CUDA device names, else the CPU."""
    import torch

    if torch.cuda.is_available():
        return [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    return [f"cpu ({platform.processor() or platform.machine()}, {os.cpu_count()} cores)"]


def fingerprint(recipe_text: str, world_size: int = 1) -> dict:
    import torch

    import wmtp

    return {
        "recipe_sha256": recipe_hash(recipe_text),
        "wmtp_version": wmtp.__version__,
        "torch_version": torch.__version__,
        "python_version": platform.python_version(),
        "git_sha": git_sha(),
        "devices": devices(),
        "world_size": world_size,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }


def create_run_dir(
    recipe_text: str, experiment: str, runs_dir: str | Path, world_size: int = 1
) -> Path:
    """Make a new run directory with ``recipe.toml`` and ``fingerprint.json``. It becomes
    ``latest`` only with its first checkpoint (``point_latest``, called by the trainer): a dry
    run or a failed start never hides the last run that trained."""
    name = f"{time.strftime('%Y%m%d-%H%M%S')}-{recipe_hash(recipe_text)[:8]}"
    runs = Path(runs_dir) / experiment
    try:
        runs.mkdir(parents=True, exist_ok=True)  # checked before (a broken link is refused)
    except OSError as exc:  # what the check cannot foresee: a kernel's file system (/proc)
        raise RunError(
            f"experiment.runs_dir = {str(runs_dir)!r}: cannot make {runs}: {exc.strerror}"
        ) from None
    for suffix in itertools.count():  # runs of one recipe started within a second: -1, -2, ...
        run = runs / (f"{name}-{suffix}" if suffix else name)
        try:
            run.mkdir()  # made here or taken by another process: never shared
            break
        except FileExistsError:
            continue
    (run / RECIPE_FILE).write_text(recipe_text)
    fp = fingerprint(recipe_text, world_size)
    (run / FINGERPRINT_FILE).write_text(json.dumps(fp, indent=2) + "\n")
    return run


DATA_FILES = "data_files"
"""The key of a checkpoint's ``trainer.json`` that maps each data file the run read (absolute
path) to its sha256 when the checkpoint was written."""


def changed_data_files(checkpoint: Path) -> list[str]:
    """The data files ``checkpoint`` trained on that hold other bytes now (or are gone), each
    said with its sha256 then and now; none for a checkpoint that did not record them."""
    from wmtp.data.jsonl import JsonlFile

    try:
        recorded = json.loads((checkpoint / "trainer.json").read_text()).get(DATA_FILES) or {}
    except (OSError, ValueError, AttributeError):
        return []
    changed = []
    for path, then in recorded.items():
        if not Path(path).is_file():
            changed.append(f"{path}: gone (it was read when {checkpoint.name} was written)")
            continue
        now = JsonlFile(path).sha256
        if now != then:
            changed.append(
                f"{path}: edited since {checkpoint.name} (sha256 {then[:12]}... -> {now[:12]}...)"
            )
    return changed


def recipe_in_force(run: Path, checkpoint: Path) -> Path:
    """The recipe a ``--resume`` without one continues ``run`` with: the one ``checkpoint``
    trained with (a ``--resume --force`` may have changed it since the run began), unless the
    user has edited the run's ``recipe.toml`` (its hash no longer the one ``fingerprint.json``
    recorded): then that edit, which the resume checks as any change."""
    own, trained = run / RECIPE_FILE, checkpoint / RECIPE_FILE
    try:
        started = json.loads((run / FINGERPRINT_FILE).read_text())["recipe_sha256"]
    except (OSError, ValueError, KeyError, TypeError):
        started = None
    edited = started is None or recipe_hash(own.read_text()) != started
    return own if edited or not trained.is_file() else trained


def write_inputs(run: Path, recipe: Any) -> None:
    """Record in ``inputs.json`` the checkpoint each used model's ``checkpoint`` resolved to, and
    the base model LoRA adapters train over (:func:`_lora_base`)."""
    from wmtp.models.locate import find_trained_weights

    resolved = {}
    for role in recipe.pipeline.uses:
        spec = getattr(recipe.model, role)
        if spec is not None and spec.checkpoint:
            found = find_trained_weights(spec.checkpoint)
            resolved[f"model.{role}.checkpoint"] = {
                "written": spec.checkpoint,
                "resolved": str(found.directory.resolve()),
            }
    resolved.update(_lora_base(recipe))
    (run / INPUTS_FILE).write_text(json.dumps(resolved, indent=2) + "\n")


def _lora_base(recipe: Any) -> dict:
    """``model.<role>.path`` of the role that trains LoRA adapters, with the identity of that
    base (``descriptions.base_identity``): its checkpoints hold the adapters alone, and a later
    reader given the base at another path knows it by this (a resume never changes it). Nothing
    without LoRA, or where the base does not load (its build then says why)."""
    from wmtp.errors import CheckpointError
    from wmtp.models.descriptions import base_identity

    role = recipe.pipeline.trains
    spec = getattr(recipe.model, role) if role is not None else None
    if spec is None or spec.lora is None or not spec.path:
        return {}
    try:
        identity = base_identity(spec.path, spec.format)
    except (CheckpointError, OSError):
        return {}
    return {f"model.{role}.path": {**_place(spec.path), "identity": identity}}


def _place(path: str) -> dict[str, str]:
    """Where a recorded model is: ``path`` as the recipe wrote it, and resolved."""
    return {"written": path, "resolved": str(Path(path).expanduser().resolve())}


def pin_inputs(run: Path, recipe: Any) -> Any:
    """``recipe`` with each model ``checkpoint`` the run recorded in ``inputs.json`` replaced by
    what it resolved to then, so a resumed run keeps its frozen models when ``latest`` has moved.
    A checkpoint written differently from the recorded one is the caller's new choice: kept."""
    models = {}
    for key, entry in _recorded(run).items():
        role = key.split(".")[1]
        spec = getattr(recipe.model, role, None) if key.endswith(".checkpoint") else None
        if spec is not None and spec.checkpoint == entry.get("written") and "resolved" in entry:
            models[role] = spec.model_copy(update={"checkpoint": entry["resolved"]})
    if not models:
        return recipe
    return recipe.model_copy(update={"model": recipe.model.model_copy(update=models)})


def record_moved_bases(run: Path, recipe: Any) -> None:
    """Where ``recipe`` (a resume's, its checks passed) names a LoRA base that ``inputs.json``
    recorded at another path (the base moved, and was found to be the recorded one:
    ``wmtp.train.runner.check_resume``), record the new place as ``written`` and ``resolved``,
    keep the identity as recorded, and each earlier place in ``moved_from``, oldest first."""
    recorded = _recorded(run)
    moved = {}
    for key, entry in recorded.items():
        spec = getattr(recipe.model, key.split(".")[1], None) if key.endswith(".path") else None
        if spec is None or not spec.path:
            continue
        now = _place(spec.path)
        was = {"written": entry.get("written"), "resolved": entry.get("resolved")}
        if now == was:
            continue
        earlier = [e for e in entry.get("moved_from", []) if isinstance(e, dict)]
        moved[key] = {**entry, **now, "moved_from": [*earlier, was]}
    if moved:
        with replaced(run / INPUTS_FILE) as tmp:
            tmp.write_text(json.dumps({**recorded, **moved}, indent=2) + "\n")


def pin_inputs_against_pruning(run: Path, *, finished: bool = False) -> None:
    """Keep each trained checkpoint the run loads (``inputs.json``) from its own run's
    ``keep_last`` until this run has ``finished`` (``wmtp.models.locate.pin``): a run stopped
    and resumed later must load the same frozen weights."""
    from wmtp.models.locate import pin, unpin

    for resolved in read_inputs(run).values():
        (unpin if finished else pin)(Path(resolved), run)


def read_inputs(run: Path) -> dict[str, str]:
    """``inputs.json`` of a run: ``model.<role>.checkpoint`` -> the resolved checkpoint (empty
    when absent)."""
    return {
        key: entry["resolved"]
        for key, entry in _recorded(run).items()
        if key.endswith(".checkpoint") and isinstance(entry.get("resolved"), str)
    }


def read_bases(run: Path) -> dict[str, dict]:
    """``inputs.json`` of a run: ``model.<role>.path`` -> the base model its LoRA adapters
    trained over (``written``, ``resolved``, ``identity``); empty for a run without LoRA or of an
    older wmtp."""
    return {key: entry for key, entry in _recorded(run).items() if key.endswith(".path")}


def _recorded(run: Path) -> dict[str, dict]:
    """``inputs.json`` of a run, each entry an object (empty when absent or torn)."""
    try:
        data = json.loads((Path(run) / INPUTS_FILE).read_text())
    except (OSError, ValueError):
        return {}
    if not isinstance(data, dict):
        return {}
    return {key: entry for key, entry in data.items() if isinstance(entry, dict)}


def point_latest(run: Path) -> None:
    """Atomically make ``<experiment>/latest`` a relative symlink to ``run``; a ``latest`` that
    is not a symlink (the user's, made since the run started) is left alone and named."""
    link = run.parent / "latest"
    if link.exists() and not link.is_symlink():
        raise RunError(
            f"{link} is not the symlink wmtp keeps to the newest run, so it was left as it is; "
            f"{run} holds this run: move {link} away to make the link"
        )
    with replaced(link) as tmp:
        tmp.symlink_to(run.name)


def resume_command(run: Path | str, processes: int | None = None, options: str = "") -> str:
    """The command that continues ``run`` as it was launched: ``--nproc-per-node`` with the
    processes of this node (torchrun's ``LOCAL_WORLD_SIZE``); on several nodes, launched as
    before on each. ``processes``: the run's, by default torchrun's ``WORLD_SIZE`` (else 1).
    ``options``: more of the command line (``--set KEY=VALUE --force``)."""
    if processes is None:
        processes = int(os.environ.get("WORLD_SIZE", "1"))
    command = f"wmtp run --resume {run}{' ' + options if options else ''}"
    if processes == 1:
        return command
    local = int(os.environ.get("LOCAL_WORLD_SIZE", processes))
    each = " on every node, launched as before" if local != processes else ""
    return f"{command} --nproc-per-node {local}{each}"


LOCK_FILE = ".training.lock"
"""Locked (``flock``) by the process that trains the run, for as long as it trains; it says who
(empty once that process has ended cleanly)."""


@contextlib.contextmanager
def training_lock(run: Path) -> Iterator[None]:
    """Hold ``run``'s lock while the block trains it (``wmtp.locks``): a second ``wmtp run
    --resume`` of the same run is refused (:func:`check_not_training`) instead of writing the
    same checkpoints."""
    with holding(run / LOCK_FILE, _being_trained(run)):
        yield


def check_not_training(run: Path) -> None:
    """A RunError when a process trains ``run`` now (it holds :func:`training_lock`); every rank
    of a launch checks before rank 0 passes the process group's rendezvous to train."""
    check_free(run / LOCK_FILE, _being_trained(run))


def _being_trained(run: Path):
    def refused(holder: str) -> RunError:
        return RunError(
            f"cannot resume {run}: it is being trained now ({holder}); wait until that run "
            "ends, or stop it (Ctrl-C there writes a checkpoint), then resume"
        )

    return refused


START_FILES = (RECIPE_FILE, FINGERPRINT_FILE, INPUTS_FILE, LOG_FILE, LOCK_FILE)
"""All a new run directory holds until its first step, each written by the run's own start."""


def holds_only_its_start(run: Path) -> bool:
    """Whether ``run`` holds nothing but :data:`START_FILES`: no step ran in it, and nobody else
    put anything there."""
    try:
        return all(p.name in START_FILES and p.is_file() for p in run.iterdir())
    except OSError:  # gone, or unreadable: not ours to remove
        return False


def remove_failed_start(run: Path) -> None:
    """Remove the new run directory ``run`` (:func:`holds_only_its_start`, its lock and log
    closed) whose start failed on the user's input: its log holds nothing the error does not
    say, and each failed try would leave one more directory of it. Its frozen models' pins
    (:func:`pin_inputs_against_pruning`) go first; a file that appeared since keeps it."""
    pin_inputs_against_pruning(run, finished=True)
    try:
        for name in START_FILES:
            (run / name).unlink(missing_ok=True)
        run.rmdir()
    except OSError:  # what could not go stays: the error being said is the one that matters
        pass


def check_writable(run: Path) -> None:
    """A RunError, before anything loads, when ``run`` or what a resume appends to in it (its
    checkpoints, log, metrics and TensorBoard folder) cannot be written; nothing is changed."""
    from wmtp.folders import read_only_file_system, unwritable
    from wmtp.models.locate import CHECKPOINTS
    from wmtp.train.metrics import METRICS_FILE, TB_FOLDER

    if read_only_file_system(run):
        raise RunError(f"cannot resume {run}: it is on a read-only file system")
    appended = (CHECKPOINTS, LOG_FILE, METRICS_FILE, TB_FOLDER)
    refused = unwritable([run, *(run / name for name in appended)])
    if refused:
        names = [p.name if p != run else "the run directory itself" for p in refused]
        raise RunError(
            f"cannot resume {run}: this user cannot write {', '.join(names)}; nothing in it "
            "was changed (resume as the user who trained it, or make them writable)"
        )


def check_run_dir(run: str | Path) -> Path:
    """``run`` as a run directory (a ``latest`` link resolved); a RunError when it is not one."""
    path = Path(run)
    if not path.exists():
        dangling = " (a symlink to nothing)" if path.is_symlink() else ""
        raise RunError(f"{run}: no such run directory{dangling}")
    if not (path / RECIPE_FILE).is_file():
        raise RunError(f"{run}: not a run directory (no {RECIPE_FILE} in it)")
    return path.resolve()
