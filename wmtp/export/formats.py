"""``--to meta`` and ``--to wmtp``, and what each target format can hold.

- ``meta``: ``params.json`` + ``consolidated.pth`` in the layout of Meta's multi-token release
  (trunk ``layers[:-1]``, head 1 ``layers[-1]``, heads 2..n ``extra_heads``, one ``norm`` and
  ``output``): the inverse of wmtp's Meta reader, and what Meta's ``Llama.build`` loads
  (``ModelArgs(max_seq_len=..., max_batch_size=..., **params)``): only keys its ``ModelArgs``
  has, none it passes itself, no ``null``. Its ``params.json`` cannot say a value head,
  adapters, or RoPE scaling beyond ``use_scaled_rope`` with Meta's factor keys.
- ``wmtp``: ``model.safetensors`` + ``wmtp_model.json`` (``save_wmtp``; a value model with its
  head), or, with ``--no-merge-lora``, the adapters alone (``lora.safetensors`` + ``lora.json``)
  as a checkpoint over the recipe's base model.
"""

from __future__ import annotations

import json
from pathlib import Path

from wmtp.errors import ExportError
from wmtp.export.progress import tensor_progress

TARGETS = ("hf", "meta", "wmtp")
RECIPE_FORMAT = {"hf": "hf", "meta": "meta", "wmtp": "safetensors"}
"""``model.*.format`` of a recipe that reads each export."""


def check_target_holds(spec, to: str, merge_lora: bool, where: str) -> None:
    """An ExportError, before any model is built, when ``to`` cannot hold the recipe section
    ``spec``'s model as asked."""
    if spec.kind == "value_model" and to != "wmtp":
        held = "a Hugging Face LlamaForCausalLM" if to == "hf" else "Meta's params.json layout"
        raise ExportError(
            f"--to {to}: {where} is a value model (kind = 'value_model', a {spec.head.kind} "
            f"value head), which {held} cannot hold; export it with --to wmtp"
        )
    if spec.lora is None and not merge_lora:
        raise ExportError(
            f"--no-merge-lora: {where} trained no LoRA adapters (no lora in its recipe "
            "section), so there are none to keep apart: leave out --no-merge-lora"
        )
    if spec.lora is not None and not merge_lora and to != "wmtp":
        raise ExportError(
            f"--to {to} --no-merge-lora: {where} trained LoRA adapters, and {to} holds plain "
            "weights only: merge them (--merge-lora, the default), or keep them apart with "
            "--to wmtp"
        )
    if spec.lora is not None and not merge_lora and not spec.path:
        raise ExportError(
            f"--no-merge-lora: {where} trained LoRA adapters over a random initialisation (no "
            "path in its recipe section), which no model folder holds: adapters kept apart "
            "would have no base to load over; merge them (--merge-lora, the default)"
        )


META_RUNTIME_KEYS = ("max_seq_len", "max_batch_size")
"""Arguments Meta's ``Llama.build`` passes to ``ModelArgs`` itself, beside ``**params``: in
``params.json`` they make its loader fail ("got multiple values for keyword argument")."""


def meta_params(args) -> dict:
    """``params.json`` of ``args`` as Meta's code reads it (the module docstring); an ExportError
    where Meta's layout cannot say them. A wmtp reader of it takes ``max_seq_len``'s default."""
    try:
        params = args.to_params_json()
    except ValueError as exc:
        raise ExportError(f"--to meta: {exc}; export it with --to hf or --to wmtp") from None
    params = {k: v for k, v in params.items() if v is not None and k not in META_RUNTIME_KEYS}
    return _ffn_width_in_metas_keys(params, args)


def _ffn_width_in_metas_keys(params: dict, args) -> dict:
    """Meta's ``ModelArgs`` has no ``ffn_dim``: its SwiGLU width is LLaMA's rule (``int(8 * dim
    / 3)``) times ``ffn_dim_multiplier``, rounded up to a multiple of ``multiple_of``. That
    multiple = the width, with a multiplier below 1 where the rule is wider, gives any width."""
    import dataclasses

    from wmtp.models.args import ModelArgs

    width = params.pop("ffn_dim", None)
    if width is None:
        return params
    plain = dataclasses.replace(args, ffn_dim=None, ffn_dim_multiplier=None, multiple_of=1)
    rule = plain.hidden_dim  # int(8 * dim / 3), unrounded
    params.pop("ffn_dim_multiplier", None)
    params["multiple_of"] = width
    if rule > width:
        params["ffn_dim_multiplier"] = width / rule
    assert ModelArgs.from_params_json(params).hidden_dim == width, (params, width)
    return params


def write_meta_model(model, directory: Path, *, dtype, progress=True, console=None) -> list[str]:
    """``params.json`` + ``consolidated.pth`` (Meta's names are wmtp's) in ``dtype``."""
    import torch

    params = meta_params(model.args)
    sd = model.state_dict()
    total = sum(v.numel() for v in sd.values()) * dtype.itemsize
    tensors = {}
    with tensor_progress(total, progress, console) as bar:
        bar.describe("writing consolidated.pth")
        for name, tensor in sd.items():
            tensors[name] = tensor.detach().to("cpu", dtype).contiguous()
            bar.advance(tensors[name].numel() * dtype.itemsize)
        torch.save(tensors, directory / "consolidated.pth")
    (directory / "params.json").write_text(json.dumps(params, indent=2) + "\n")
    return ["consolidated.pth", "params.json"]


def write_wmtp_model(model, directory: Path, *, adapters_only: bool = False) -> list[str]:
    """wmtp's own format (the model as built, in its dtype), or its LoRA adapters alone."""
    if adapters_only:
        from wmtp.models.lora import LORA_CONFIG, LORA_WEIGHTS, save_lora

        save_lora(model, directory)
        return [LORA_WEIGHTS, LORA_CONFIG]
    from wmtp.models.checkpoint import ARGS_FILE, WEIGHTS_FILE, save_wmtp
    from wmtp.models.value import ValueModel

    if isinstance(model, ValueModel):
        model.save(directory)
    else:
        save_wmtp(model, directory)
    return [WEIGHTS_FILE, ARGS_FILE]


__all__ = [
    "META_RUNTIME_KEYS",
    "RECIPE_FORMAT",
    "TARGETS",
    "check_target_holds",
    "meta_params",
    "write_meta_model",
    "write_wmtp_model",
]
