"""Registers the weighting kinds: ``uniform``, ``td``, ``rho1``, ``random_matched``, ``shuffled``.

Each builder receives only its ``[weighting]`` section and returns a weighting object; the
pipelines decide what to feed it (critic values for the TD family, per-token excess losses for
Rho-1). Torch is imported when a builder runs, not when this module is imported (``wmtp list``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from wmtp.recipe.specs.weighting import (
    RandomMatchedWeightingSpec,
    Rho1WeightingSpec,
    ShuffledWeightingSpec,
    TDWeightingSpec,
    UniformWeightingSpec,
)
from wmtp.registry import register

if TYPE_CHECKING:
    from wmtp.weighting.weightings import Rho1Selection, TDWeighting, UniformWeighting


@register("weighting", "uniform", spec=UniformWeightingSpec)
def build_uniform(spec: UniformWeightingSpec) -> UniformWeighting:
    """Every valid target token weighs 1."""
    from wmtp.weighting.weightings import UniformWeighting

    return UniformWeighting()


@register("weighting", "td", spec=TDWeightingSpec)
def build_td(spec: TDWeightingSpec) -> TDWeighting:
    """Critic values -> TD errors -> GAE -> whitening -> AWR weights."""
    from wmtp.weighting.weightings import TDWeighting

    return TDWeighting(spec)


@register("weighting", "random_matched", spec=RandomMatchedWeightingSpec)
def build_random_matched(spec: RandomMatchedWeightingSpec) -> TDWeighting:
    """The TD weights of the batch, redrawn at random from their own distribution (a control)."""
    from wmtp.weighting.weightings import TDWeighting

    return TDWeighting(spec, control="random_matched")


@register("weighting", "shuffled", spec=ShuffledWeightingSpec)
def build_shuffled(spec: ShuffledWeightingSpec) -> TDWeighting:
    """The TD weights of the batch, permuted among its valid tokens (a control)."""
    from wmtp.weighting.weightings import TDWeighting

    return TDWeighting(spec, control="shuffled")


@register("weighting", "rho1", spec=Rho1WeightingSpec)
def build_rho1(spec: Rho1WeightingSpec) -> Rho1Selection:
    """Per head, keep the top k% of valid tokens of the batch by excess loss over the reference."""
    from wmtp.weighting.weightings import Rho1Selection

    return Rho1Selection(k_percent=spec.k_percent)
