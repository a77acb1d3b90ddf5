"""The recipe schema: the ``Recipe`` model and every section, re-exported from one place.

Sections live in ``wmtp.recipe.specs`` (one module per area); this module assembles them and
holds the rules that join sections (a pipeline's models, head weights per head, lengths).
Builders import their section type from here, e.g. ``from wmtp.recipe.schema import TDWeightingSpec``.
"""

from typing import Annotated, Union

from pydantic import Field

from wmtp.recipe._base import (
    CATEGORIES,
    CHECKPOINT,
    COSMETIC,
    NUMERICS,
    PERFORMANCE,
    Category,
    CategoryName,
    Section,
    category_of,
    rule,
)
from wmtp.recipe.specs.data import (
    DataSpec,
    DataSpecBase,
    DifficultySamplingSpec,
    HumanEvalDataSpec,
    JsonlDataSpec,
    PairsSpec,
    SamplingSpec,
    SplitSpec,
    UniformSamplingSpec,
)
from wmtp.recipe.specs.evaluation import EvaluationSpec
from wmtp.recipe.specs.experiment import (
    ByteTokenizerSpec,
    ExperimentSpec,
    HFTokenizerSpec,
    Pipeline,
    SentencePieceTokenizerSpec,
    TokenizerSpec,
)
from wmtp.recipe.specs.models import (
    SIZE_FIELDS,
    Attention,
    DType,
    LinearHeadSpec,
    LlamaMTPSpec,
    LoraSpec,
    MLPHeadSpec,
    ModelSpecBase,
    ModelsSpec,
    RopeScalingSpec,
    SigmoidHeadSpec,
    ValueHeadSpec,
    ValueModelSpec,
)
from wmtp.recipe.specs.training import CriticLossSpec, ParallelSpec, ScheduleSpec, TrainingSpec
from wmtp.recipe.specs.weighting import (
    NEEDS_CRITIC,
    BatchNormalizeSpec,
    EMANormalizeSpec,
    NormalizeSpec,
    RandomMatchedWeightingSpec,
    Rho1WeightingSpec,
    ShuffledWeightingSpec,
    TDWeightingSpec,
    UniformWeightingSpec,
    WeightingSpec,
)

ModelSpec = Union[LlamaMTPSpec, ValueModelSpec]
"""Any model section; both have ``model_args(vocab_size) -> wmtp.models.args.ModelArgs``."""

PIPELINE_MODELS: dict[str, tuple[str, ...]] = {
    "baseline": ("policy",),
    "ref_tuning": ("policy",),
    "ntp": ("policy",),
    "critic": ("critic",),
    "verifiable": ("policy", "critic"),
    "rho1": ("policy", "reference"),
    "evaluation": ("policy",),
}
"""The models each pipeline needs (``policy`` is the one trained, except for ``critic``)."""

TRAINING_PIPELINES = frozenset(PIPELINE_MODELS) - {"evaluation"}


class Recipe(Section):
    """A whole experiment: what to train, on what, how, and how to evaluate it."""

    extends: Annotated[str | list[str] | None, COSMETIC] = None
    """Recipes this one builds on, relative to this file; later ones and then this file take
    precedence. Resolved by the loader: always unset in a loaded recipe."""
    experiment: ExperimentSpec
    """Name, pipeline and seed."""
    tokenizer: Annotated[TokenizerSpec, CHECKPOINT]
    """The tokenizer shared by every model."""
    model: ModelsSpec = Field(default_factory=ModelsSpec)
    """The policy, reference and critic models."""
    parallel: ParallelSpec = Field(default_factory=ParallelSpec)
    """Devices, sharding, activation checkpointing, compilation."""
    training: TrainingSpec = Field(default_factory=TrainingSpec)
    """Optimisation."""
    weighting: WeightingSpec = Field(default_factory=UniformWeightingSpec)
    """Token weights of the MTP loss."""
    data: DataSpec = Field(default_factory=HumanEvalDataSpec)
    """Training data."""
    evaluation: EvaluationSpec = Field(default_factory=EvaluationSpec)
    """pass@k evaluation."""

    @rule("experiment.pipeline", "model")
    def _pipeline_has_its_models(self) -> str | None:
        pipeline = self.experiment.pipeline
        missing = [m for m in PIPELINE_MODELS[pipeline] if getattr(self.model, m) is None]
        if missing:
            tables = ", ".join(f"[model.{m}]" for m in missing)
            return f"experiment.pipeline = {pipeline!r} needs {tables}"
        return None

    @rule("weighting.kind", "model.critic")
    def _td_weighting_has_critic(self) -> str | None:
        if self.weighting.kind in NEEDS_CRITIC and self.model.critic is None:
            return f"weighting.kind = {self.weighting.kind!r} needs a critic: add [model.critic]"
        return None

    @rule("weighting.kind", "model.reference")
    def _rho1_weighting_has_reference(self) -> str | None:
        if self.weighting.kind == "rho1" and self.model.reference is None:
            return "weighting.kind = 'rho1' needs a reference model: add [model.reference]"
        return None

    @rule("training.max_steps", "training.epochs")
    def _training_has_length(self) -> str | None:
        t = self.training
        if (
            self.experiment.pipeline in TRAINING_PIPELINES
            and t.max_steps is None
            and t.epochs is None
        ):
            return (
                f"experiment.pipeline = {self.experiment.pipeline!r} trains: "
                "give training.max_steps or training.epochs"
            )
        return None

    @rule("training.head_weights", "model.policy.n_future_tokens")
    def _head_weight_per_head(self) -> str | None:
        weights, policy = self.training.head_weights, self.model.policy
        if weights is None or policy is None:
            return None
        n = policy.resolved_sizes().get("n_future_tokens")
        if n is not None and len(weights) != n:
            return (
                f"training.head_weights has {len(weights)} entries but "
                f"model.policy.n_future_tokens = {n}"
            )
        return None

    @rule("data.max_length", "model.policy.max_seq_len")
    def _data_fits_context(self) -> str | None:
        for role in ("policy", "reference", "critic"):
            spec = getattr(self.model, role)
            limit = spec.resolved_sizes().get("max_seq_len") if spec else None
            if limit is not None and self.data.max_length > limit:
                return (
                    f"data.max_length = {self.data.max_length} is longer than "
                    f"model.{role}.max_seq_len = {limit}"
                )
        return None

    @rule("experiment.pipeline", "data.pairs")
    def _critic_has_pairs(self) -> str | None:
        if self.experiment.pipeline == "critic" and self.data.pairs is None:
            return "experiment.pipeline = 'critic' trains on pairs: add [data.pairs]"
        return None

    @rule("model.reference.vocab_size", "model.policy.vocab_size")
    def _vocabularies_agree(self) -> str | None:
        sizes = {}
        for role in ("policy", "reference", "critic"):
            spec = getattr(self.model, role)
            vocab = spec.resolved_sizes().get("vocab_size") if spec else None
            if vocab is not None and vocab > 0:
                sizes[role] = vocab
        if len(set(sizes.values())) > 1:
            listed = ", ".join(f"model.{r}.vocab_size = {v}" for r, v in sizes.items())
            return f"every model shares the tokenizer, but {listed}"
        return None

    @property
    def trained_role(self) -> str | None:
        """Which model the pipeline trains: ``critic``, ``policy``, or none (evaluation)."""
        pipeline = self.experiment.pipeline
        if pipeline == "evaluation":
            return None
        return "critic" if pipeline == "critic" else "policy"


__all__ = [
    "CATEGORIES",
    "CHECKPOINT",
    "COSMETIC",
    "NEEDS_CRITIC",
    "NUMERICS",
    "PERFORMANCE",
    "PIPELINE_MODELS",
    "SIZE_FIELDS",
    "TRAINING_PIPELINES",
    "Attention",
    "BatchNormalizeSpec",
    "ByteTokenizerSpec",
    "Category",
    "CategoryName",
    "CriticLossSpec",
    "DType",
    "DataSpec",
    "DataSpecBase",
    "DifficultySamplingSpec",
    "EMANormalizeSpec",
    "EvaluationSpec",
    "ExperimentSpec",
    "HFTokenizerSpec",
    "HumanEvalDataSpec",
    "JsonlDataSpec",
    "LinearHeadSpec",
    "LlamaMTPSpec",
    "LoraSpec",
    "MLPHeadSpec",
    "ModelSpec",
    "ModelSpecBase",
    "ModelsSpec",
    "NormalizeSpec",
    "PairsSpec",
    "ParallelSpec",
    "Pipeline",
    "RandomMatchedWeightingSpec",
    "Recipe",
    "Rho1WeightingSpec",
    "RopeScalingSpec",
    "SamplingSpec",
    "ScheduleSpec",
    "Section",
    "SentencePieceTokenizerSpec",
    "ShuffledWeightingSpec",
    "SigmoidHeadSpec",
    "SplitSpec",
    "TDWeightingSpec",
    "TokenizerSpec",
    "TrainingSpec",
    "UniformSamplingSpec",
    "UniformWeightingSpec",
    "ValueHeadSpec",
    "ValueModelSpec",
    "WeightingSpec",
    "category_of",
]
