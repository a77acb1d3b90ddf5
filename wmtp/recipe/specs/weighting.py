"""``[weighting]``: how much each target token counts in the MTP loss."""

from typing import Annotated, Literal, Union

from pydantic import Field

from wmtp.recipe._base import Section, rule


class UniformWeightingSpec(Section):
    """Every valid target token weighs 1: ordinary (MTP) fine-tuning."""

    kind: Literal["uniform"] = "uniform"
    """Weighting type."""


class BatchNormalizeSpec(Section):
    """Whiten advantages with the statistics of the optimizer step's batch (all its micro-batches,
    all ranks)."""

    kind: Literal["batch"] = "batch"
    """Normalisation type."""


class EMANormalizeSpec(Section):
    """Whiten advantages with exponential moving averages of mean and variance, updated once per
    optimizer step from its batch (all micro-batches, all ranks)."""

    kind: Literal["ema"] = "ema"
    """Normalisation type."""
    momentum: Annotated[float, Field(gt=0, le=1)] = 0.1
    """Weight of the newest step's batch in the moving averages."""
    warmup_steps: Annotated[int, Field(ge=0)] = 10
    """Optimizer steps that whiten with their own batch's statistics while the averages settle."""


NormalizeSpec = Annotated[Union[BatchNormalizeSpec, EMANormalizeSpec], Field(discriminator="kind")]


class TDWeightingSpec(Section):
    """Critic TD/GAE advantages turned into token weights: w = exp(clamp(z / beta, ln min, ln max))."""

    kind: Literal["td"] = "td"
    """Weighting type."""
    gamma: Annotated[float, Field(ge=0, le=1)] = 1.0
    """Discount of the TD errors."""
    lam: Annotated[float, Field(ge=0, le=1)] = 0.95
    """GAE lambda."""
    beta: Annotated[float, Field(gt=0)] = 1.0
    """Temperature of the exponential (AWR): smaller is sharper."""
    min_weight: Annotated[float, Field(gt=0)] = 0.1
    """Smallest token weight (the exponent is clamped to ln(min_weight))."""
    max_weight: Annotated[float, Field(gt=0)] = 3.0
    """Largest token weight (the exponent is clamped to ln(max_weight))."""
    normalize: NormalizeSpec = Field(default_factory=EMANormalizeSpec)
    """How advantages are whitened before the exponential."""

    @rule("min_weight", "max_weight")
    def _weight_range(self) -> str | None:
        if self.min_weight >= self.max_weight:
            return f"min_weight = {self.min_weight} must be below max_weight = {self.max_weight}"
        return None


class RandomMatchedWeightingSpec(TDWeightingSpec):
    """Ablation: random weights with the per-batch distribution of the TD weights (needs the critic)."""

    kind: Literal["random_matched"] = "random_matched"  # type: ignore[assignment]
    """Weighting type."""


class ShuffledWeightingSpec(TDWeightingSpec):
    """Ablation: the batch's TD weights, permuted among all its valid tokens."""

    kind: Literal["shuffled"] = "shuffled"  # type: ignore[assignment]
    """Weighting type."""


class Rho1WeightingSpec(Section):
    """Rho-1: keep the top k% of tokens by excess loss over the reference model (weight 1)."""

    kind: Literal["rho1"] = "rho1"
    """Weighting type."""
    k_percent: Annotated[float, Field(gt=0, le=1)] = 0.6
    """Fraction (not a percentage: 0.6 keeps 60%) of the valid target tokens each head keeps in
    each micro-batch, the largest excess losses first; at most 9 decimal places are read exactly
    (a longer decimal: the nearest fraction with a denominator up to 10^9)."""


WeightingSpec = Annotated[
    Union[
        UniformWeightingSpec,
        TDWeightingSpec,
        Rho1WeightingSpec,
        RandomMatchedWeightingSpec,
        ShuffledWeightingSpec,
    ],
    Field(discriminator="kind"),
]
"""Token weighting, chosen by ``kind``."""
