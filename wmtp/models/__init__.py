"""LLaMA multi-token-prediction models. Torch-free to import: heavy parts load on first use.

``wmtp.models.args`` (sizes, flavours, parameter counts) never imports torch, so recipe commands can
use it; ``from_pretrained`` and the modules load lazily.
"""

from __future__ import annotations

from wmtp._lazy import lazy_getattr
from wmtp.models.args import FLAVOURS, ModelArgs, flavour, param_count

_LAZY = {
    # name -> module that defines it (filled in as the model package grows)
    "from_pretrained": "wmtp.models.checkpoint",
    "LlamaMTP": "wmtp.models.llama_mtp",
    "SeqInfo": "wmtp.models.attention",
    "ResolvedAttention": "wmtp.models.attention",
    "ValueModel": "wmtp.models.value",
    "Decoder": "wmtp.models.kv_cache",
    "apply_lora": "wmtp.models.lora",
    "save_wmtp": "wmtp.models.checkpoint",
}


__getattr__ = lazy_getattr(__name__, _LAZY)


__all__ = [
    "FLAVOURS",
    "Decoder",
    "LlamaMTP",
    "ModelArgs",
    "ResolvedAttention",
    "SeqInfo",
    "ValueModel",
    "apply_lora",
    "flavour",
    "from_pretrained",
    "param_count",
    "save_wmtp",
]
