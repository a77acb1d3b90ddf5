"""Token weighting: TD errors, GAE, whitening, AWR weights, Rho-1 selection and their controls.

Torch-free to import (the registry imports ``wmtp.weighting.components`` for ``wmtp list``); the
functions load on first use. All functions take ``[batch, seq]`` tensors and compute in float32.
"""

from __future__ import annotations

from wmtp._lazy import lazy_getattr

_LAZY = {
    "td_errors": "wmtp.weighting.td",
    "gae": "wmtp.weighting.td",
    "whiten": "wmtp.weighting.normalize",
    "BatchWhitener": "wmtp.weighting.normalize",
    "EMAWhitener": "wmtp.weighting.normalize",
    "awr_weights": "wmtp.weighting.awr",
    "rho1_mask": "wmtp.weighting.rho1",
    "random_matched": "wmtp.weighting.ablations",
    "shuffled": "wmtp.weighting.ablations",
}


__getattr__ = lazy_getattr(__name__, _LAZY)


__all__ = sorted(_LAZY)
