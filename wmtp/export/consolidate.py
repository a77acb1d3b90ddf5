"""Consolidated weights of a training checkpoint, on the CPU, without a GPU or a process group.

Every trainer checkpoint carries them (``model.safetensors``, or ``lora.safetensors`` when LoRA
trained), written by rank 0. A checkpoint without that file still has ``state/``: the model and
optimizer state that ``torch.distributed.checkpoint`` (DCP) wrote, one file per rank of any world
size. DCP reads it back in one process (``no_dist=True``), each tensor whole, from the shapes
and dtypes its ``.metadata`` records; only the ``model`` entries are read, never the optimizer's.
"""

from __future__ import annotations

from pathlib import Path

from wmtp.export.source import Source
from wmtp.models.checkpoint import read_dcp_model_state
from wmtp.models.locate import DCP_STATE, FULL_WEIGHTS, LORA_WEIGHTS, RECIPE_FILE


def weights_directory(source: Source, spec, staging: Path, recipe_text: str) -> Path:
    """A directory whose consolidated weights wmtp's loader reads: the checkpoint itself, or
    ``staging`` holding the file the trainer would have written, made from ``state/``, beside
    ``recipe_text``: the export's recipe, the checkpoint's own with the user's ``--set`` (a LoRA
    base found at another path, checked against the checkpoint's run already:
    ``source.check_adapters_base``).

    ``spec`` is the trained model's recipe section: under LoRA over a ``path`` the file holds
    the adapters (and, for a value model, its head, which trains beside them), else every
    parameter (LoRA over a random initialisation: its base too, which only ``state/`` holds).
    """
    if source.consolidated is not None or not source.trained:
        return source.weights
    state = read_dcp_model_state(source.weights / DCP_STATE)
    name = FULL_WEIGHTS
    if spec.lora is not None and spec.path:
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


__all__ = ["weights_directory"]
