"""``--to hf``: a plain Hugging Face ``LlamaForCausalLM`` directory, the extra heads beside it.

``transformers.AutoModelForCausalLM.from_pretrained(DIR)`` loads it with no custom code: the
trunk and head 1 are its layers (head 1 is ``model.layers[-1]``), in ``model.safetensors`` or,
past ``max_shard_bytes``, in ``model-0000i-of-0000n.safetensors`` with
``model.safetensors.index.json``; ``config.json`` and ``generation_config.json`` carry the sizes
and the tokenizer's special ids. With every head kept, ``mtp_heads.safetensors`` and
``mtp_heads.json`` hold heads 2..n (``wmtp.models.hf_convert``), which wmtp reads back.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import torch

from wmtp.export.progress import TensorProgress, tensor_progress
from wmtp.models.descriptions import HF_INDEX, MTP_HEADS_INFO, MTP_HEADS_WEIGHTS
from wmtp.models.hf_convert import (
    EXTRA_HEADS,
    hf_config,
    hf_name,
    mtp_heads_info,
    to_hf,
)

DEFAULT_MAX_SHARD_BYTES = 5 * 2**30
"""Shard size of ``transformers``' ``save_pretrained`` (5 GB) for one safetensors file."""


def write_hf_model(
    model,
    directory: Path,
    *,
    dtype: torch.dtype,
    token_ids: dict[str, int],
    max_shard_bytes: int = DEFAULT_MAX_SHARD_BYTES,
    progress: bool = True,
    console=None,
) -> list[str]:
    """Write ``model`` (every head it holds) as the module docstring says; the file names."""
    a = model.args
    sd = model.state_dict()
    main = [k for k in sd if not k.startswith(EXTRA_HEADS)]
    extra = [k for k in sd if k.startswith(EXTRA_HEADS)]
    shards = plan_shards(main, sd, dtype, max_shard_bytes)
    total = sum(sd[k].numel() for k in sd) * dtype.itemsize
    files = []
    with tensor_progress(total, progress, console) as bar:
        for file, names in shards.items():
            _save(file, _converted(names, sd, dtype, a, bar), directory, bar)
            files.append(file)
        if extra:
            _save(MTP_HEADS_WEIGHTS, _converted(extra, sd, dtype, a, bar), directory, bar)
            _write_json(directory / MTP_HEADS_INFO, mtp_heads_info(a))
            files += [MTP_HEADS_WEIGHTS, MTP_HEADS_INFO]
    if len(shards) > 1:
        _write_json(directory / HF_INDEX, _index(shards, sd, dtype))
        files.append(HF_INDEX)
    one_head = dataclasses.replace(a, n_layers=a.n_trunk_layers + 1, n_future_tokens=1)
    dtype_name = str(dtype).removeprefix("torch.")
    config = {**hf_config(one_head, dtype_name), "dtype": dtype_name, **token_ids}
    _write_json(directory / "config.json", config)
    _write_json(directory / "generation_config.json", {**token_ids, "do_sample": False})
    return [*files, "config.json", "generation_config.json"]


def plan_shards(
    names: list[str], sd: dict[str, torch.Tensor], dtype: torch.dtype, max_bytes: int
) -> dict[str, list[str]]:
    """File name -> tensor names, in order, each file at most ``max_bytes`` (unless one tensor
    alone is larger); a single file is ``model.safetensors``."""
    groups: list[list[str]] = [[]]
    size = 0
    for name in names:
        nbytes = sd[name].numel() * dtype.itemsize
        if groups[-1] and size + nbytes > max_bytes:
            groups.append([])
            size = 0
        groups[-1].append(name)
        size += nbytes
    if len(groups) == 1:
        return {"model.safetensors": groups[0]}
    n = len(groups)
    return {f"model-{i:05d}-of-{n:05d}.safetensors": g for i, g in enumerate(groups, start=1)}


def _converted(names, sd, dtype, a, bar: TensorProgress) -> dict[str, torch.Tensor]:
    """HF names and row order, in ``dtype`` (q/k permuted after the cast: exact either way)."""
    out = {}
    for name in names:
        hf_name, tensor = to_hf(name, sd[name].detach().to("cpu", dtype), a)
        out[hf_name] = tensor.contiguous()
        bar.advance(tensor.numel() * tensor.element_size())
    return out


def _save(file: str, tensors: dict[str, torch.Tensor], directory: Path, bar) -> None:
    from wmtp.models import safetensors_file

    bar.describe(f"writing {file}")
    safetensors_file.save(tensors, directory / file, metadata={"format": "pt"})


def _index(shards: dict[str, list[str]], sd, dtype: torch.dtype) -> dict:
    names = [n for group in shards.values() for n in group]
    total = sum(sd[n].numel() for n in names) * dtype.itemsize
    weight_map = {hf_name(n): file for file, group in shards.items() for n in group}
    return {"metadata": {"total_size": total}, "weight_map": weight_map}


def _write_json(file: Path, data: dict) -> None:
    file.write_text(json.dumps(data, indent=2) + "\n")


__all__ = ["DEFAULT_MAX_SHARD_BYTES", "plan_shards", "write_hf_model"]
