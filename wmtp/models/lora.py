"""Low-rank adapters: ``y = W x + (alpha / r) * B A dropout(x)``, only A and B train.

A LoRALinear *is* an ``nn.Linear`` (same ``weight`` name, so base checkpoints still load) with
``lora_A [r, in]`` and ``lora_B [out, r]`` beside it. ``B`` starts at zero, so a fresh adapter
changes nothing; ``A`` is drawn by ``kaiming_uniform_(a=sqrt(5))`` (uniform on +-1/sqrt(in)).
Rank, alpha, dropout, targets and both initialisations mean what Hugging Face PEFT's
``LoraConfig(r, lora_alpha, lora_dropout, target_modules)`` means by default (no rsLoRA, no DoRA;
``tests/models/test_lora_vs_peft.py``); only ``wq``/``wk``'s ``B`` rows are in Meta's RoPE order,
as their weights are. Merging folds ``B A`` into ``W`` (in fp32) for inference; unmerging takes
it out. Adapters are saved and loaded on their own, with their settings in a json beside them.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from wmtp.errors import CheckpointError

TARGETS = ("wq", "wk", "wv", "wo", "w1", "w2", "w3")
LORA_WEIGHTS = "lora.safetensors"
LORA_CONFIG = "lora.json"


class LoRALinear(nn.Linear):
    """A bias-free Linear with a low-rank adapter."""

    def __init__(self, base: nn.Linear, rank: int, alpha: float, dropout: float = 0.0):
        assert base.bias is None, "LoRA targets are bias-free LLaMA projections"
        super().__init__(base.in_features, base.out_features, bias=False, device="meta")
        self.weight = base.weight
        self.rank, self.alpha, self.scale = rank, alpha, alpha / rank
        like = {"dtype": base.weight.dtype, "device": base.weight.device}
        self.lora_A = nn.Parameter(torch.empty(rank, base.in_features, **like))
        self.lora_B = nn.Parameter(torch.zeros(base.out_features, rank, **like))
        nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.merged = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.with_adapter(x, F.linear(x, self.weight))

    def with_adapter(self, x: torch.Tensor, base_out: torch.Tensor) -> torch.Tensor:
        """``base_out`` (the frozen weight's output for ``x``) plus the adapter's term, unless
        the adapter is merged into the weight."""
        if self.merged:
            return base_out
        return base_out + F.linear(F.linear(self.dropout(x), self.lora_A), self.lora_B) * self.scale

    def delta(self) -> torch.Tensor:
        """``scale * B A`` in fp32 (``[out, in]``)."""
        return (self.lora_B.float() @ self.lora_A.float()) * self.scale

    @torch.no_grad()
    def merge(self) -> None:
        if not self.merged:
            self.weight.copy_((self.weight.float() + self.delta()).to(self.weight.dtype))
            self.merged = True

    @torch.no_grad()
    def unmerge(self) -> None:
        if self.merged:
            self.weight.copy_((self.weight.float() - self.delta()).to(self.weight.dtype))
            self.merged = False


def apply_lora(
    model: nn.Module,
    *,
    rank: int,
    alpha: float,
    dropout: float = 0.0,
    targets: tuple[str, ...] | list[str] = TARGETS,
    also_train: tuple[str, ...] = (),
) -> list[str]:
    """Put adapters on every Linear named in ``targets``; freeze every other parameter except
    those whose names start with a prefix in ``also_train`` (a value model's ``head.``).

    Returns the names of the adapted modules.
    """
    unknown = sorted(set(targets) - set(TARGETS))
    assert not unknown, f"LoRA targets {unknown} not in {TARGETS}"
    adapted = []
    for name, module in list(model.named_modules()):
        leaf = name.rsplit(".", 1)[-1]
        if leaf in targets and type(module) is nn.Linear:
            parent = model.get_submodule(name.rsplit(".", 1)[0]) if "." in name else model
            setattr(parent, leaf, LoRALinear(module, rank, alpha, dropout))
            adapted.append(name)
    assert adapted, f"no Linear named {list(targets)} in the model"
    for pname, param in model.named_parameters():
        param.requires_grad_(".lora_" in pname or pname.startswith(tuple(also_train)))
    model.lora_config = {
        "rank": rank,
        "alpha": alpha,
        "dropout": dropout,
        "targets": list(targets),
        "also_train": list(also_train),
    }
    return adapted


def lora_modules(model: nn.Module) -> list[LoRALinear]:
    return [m for m in model.modules() if isinstance(m, LoRALinear)]


def merge_lora(model: nn.Module) -> None:
    """Fold every adapter into its base weight (inference; adapters stop contributing)."""
    for module in lora_modules(model):
        module.merge()


def fold_lora(model: nn.Module) -> int:
    """Merge every adapter and put a plain ``nn.Linear`` holding the merged weight in its place:
    the model has no adapters left (its state dict is the base model's names). For exports;
    returns how many adapters were folded."""
    folded = 0
    for name, module in list(model.named_modules()):
        if not isinstance(module, LoRALinear):
            continue
        module.merge()
        plain = nn.Linear(module.in_features, module.out_features, bias=False, device="meta")
        plain.weight = module.weight
        parent = model.get_submodule(name.rsplit(".", 1)[0]) if "." in name else model
        setattr(parent, name.rsplit(".", 1)[-1], plain)
        folded += 1
    if folded:
        del model.lora_config
    return folded


def unmerge_lora(model: nn.Module) -> None:
    """Take merged adapters back out of the base weights."""
    for module in lora_modules(model):
        module.unmerge()


def lora_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """What trains under LoRA, by parameter name: the adapters, and the parameters ``apply_lora``
    kept trainable (``also_train``, e.g. a value model's head). A LoRA checkpoint saves this."""
    also = tuple(getattr(model, "lora_config", {}).get("also_train", ()))
    return {
        k: v
        for k, v in model.state_dict().items()
        if ".lora_" in k or (also and k.startswith(also))
    }


def save_lora(model: nn.Module, directory: str | Path) -> Path:
    """Write the adapters alone (``lora.safetensors``) and their settings (``lora.json``)."""
    from wmtp.models import safetensors_file

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().contiguous().cpu() for k, v in lora_state_dict(model).items()}
    safetensors_file.save(tensors, directory / LORA_WEIGHTS)
    (directory / LORA_CONFIG).write_text(json.dumps(model.lora_config, indent=2))
    return directory


def load_lora(model: nn.Module, directory: str | Path) -> None:
    """Add adapters saved by :func:`save_lora` to a model without any (settings from the json).

    Every key and shape is checked before the model changes.
    """
    from safetensors.torch import load_file

    from wmtp.models.checkpoint import check_shapes

    directory = Path(directory)
    for file in (LORA_WEIGHTS, LORA_CONFIG):
        if not (directory / file).is_file():
            raise CheckpointError(f"LoRA adapters {directory}: {file} is missing")
    if lora_modules(model):
        raise CheckpointError(f"LoRA adapters {directory}: the model already has adapters")
    config = json.loads((directory / LORA_CONFIG).read_text())
    tensors = load_file(str(directory / LORA_WEIGHTS))
    check_shapes(_adapter_shapes(model, config["rank"], config["targets"]), tensors, str(directory))
    apply_lora(model, **config)
    adapters = lora_state_dict(model)
    with torch.no_grad():
        for name, tensor in tensors.items():
            adapters[name].copy_(tensor)


def _adapter_shapes(model: nn.Module, rank: int, targets) -> dict[str, tuple[int, int]]:
    """The adapter keys and shapes that :func:`apply_lora` would create."""
    shapes = {}
    for name, module in model.named_modules():
        if name.rsplit(".", 1)[-1] in targets and type(module) is nn.Linear:
            shapes[f"{name}.lora_A"] = (rank, module.in_features)
            shapes[f"{name}.lora_B"] = (module.out_features, rank)
    return shapes


__all__ = [
    "TARGETS",
    "LoRALinear",
    "apply_lora",
    "fold_lora",
    "load_lora",
    "lora_state_dict",
    "merge_lora",
    "save_lora",
    "unmerge_lora",
]
