"""The KV-cache decode state, over the model's own inference path (``wmtp.models``).

Until the model exposes a KV cache, ``supports_kv_cache`` is False and generation recomputes
(``wmtp.eval.decoding.RecomputeState``).
"""

from __future__ import annotations

import torch


def supports_kv_cache(model: torch.nn.Module) -> bool:
    """Whether ``model`` has the KV-cache inference path this state drives."""
    return False


class KVCacheState:  # filled in once the model's KV cache lands
    def __init__(self, model: torch.nn.Module, batch_size: int, *, max_length: int):
        raise NotImplementedError("the model has no KV cache yet")
