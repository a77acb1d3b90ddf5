"""Consolidated weights of a training checkpoint, on the CPU, without a GPU or a process group.

Every trainer checkpoint carries them (``model.safetensors``, or ``lora.safetensors`` when LoRA
trained), written by rank 0. A checkpoint without that file still has ``state/``: the model and
optimizer state that ``torch.distributed.checkpoint`` (DCP) wrote, one file per rank of any world
size. DCP reads it back in one process (``no_dist=True``), each tensor whole, from the shapes
and dtypes its ``.metadata`` records; only the ``model`` entries are read, never the optimizer's.
"""

from __future__ import annotations

import contextlib
import warnings
from pathlib import Path

import torch

from wmtp.errors import CheckpointError
from wmtp.export.source import Source
from wmtp.models.locate import DCP_STATE, FULL_WEIGHTS, LORA_WEIGHTS, RECIPE_FILE

MODEL_PREFIX = "model."
"""The trainer saves ``{"model": ..., "optimizer": ...}``; DCP flattens keys to ``model.<fqn>``."""


def weights_directory(source: Source, spec, staging: Path, recipe_text: str) -> Path:
    """A directory whose consolidated weights wmtp's loader reads: the checkpoint itself, or
    ``staging`` holding the file the trainer would have written, made from ``state/``, beside
    ``recipe_text``: the export's recipe, the checkpoint's own with the user's ``--set`` (a LoRA
    base found at another path, checked against the checkpoint's run already:
    ``source.check_adapters_base``).

    ``spec`` is the trained model's recipe section: under LoRA the file holds the adapters
    (and, for a value model, its head, which trains beside them), else every parameter.
    """
    if source.consolidated is not None or not source.trained:
        return source.weights
    state = read_dcp_model_state(source.weights / DCP_STATE)
    name = FULL_WEIGHTS
    if spec.lora is not None:
        also_trained = (
            ("head.",) if spec.kind == "value_model" else ()
        )  # as apply_lora's also_train
        state = {k: v for k, v in state.items() if ".lora_" in k or k.startswith(also_trained)}
        name = LORA_WEIGHTS
    from wmtp.models import safetensors_file

    staging.mkdir(parents=True)
    safetensors_file.save({k: v.contiguous() for k, v in state.items()}, staging / name)
    (staging / RECIPE_FILE).write_text(recipe_text)
    return staging


def read_dcp_model_state(state_dir: Path) -> dict[str, torch.Tensor]:
    """Every model tensor of a DCP checkpoint, whole, on the CPU (in the dtypes it was saved)."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint import FileSystemReader
    from torch.distributed.checkpoint.metadata import TensorStorageMetadata

    try:
        metadata = FileSystemReader(str(state_dir)).read_metadata()
    except Exception as exc:  # DCP raises plain errors for a missing or torn .metadata
        raise CheckpointError(f"{state_dir}: not a readable DCP checkpoint ({exc})") from exc
    model = {
        key.removeprefix(MODEL_PREFIX): torch.empty(meta.size, dtype=meta.properties.dtype)
        for key, meta in metadata.state_dict_metadata.items()
        if key.startswith(MODEL_PREFIX) and isinstance(meta, TensorStorageMetadata)
    }
    if not model:
        raise CheckpointError(f"{state_dir}: holds no model state (keys {MODEL_PREFIX}*)")
    try:
        with _one_process_is_the_intent():
            dcp.load({"model": model}, checkpoint_id=str(state_dir), no_dist=True)
    except Exception as exc:
        raise CheckpointError(f"{state_dir}: cannot be read ({exc})") from exc
    return model


@contextlib.contextmanager
def _one_process_is_the_intent():
    """DCP warns that it assumes one process without a process group: that is the point here."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*assuming the intent is to load in a single")
        yield


__all__ = ["read_dcp_model_state", "weights_directory"]
