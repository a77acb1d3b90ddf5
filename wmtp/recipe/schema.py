"""The recipe schema: the ``Recipe`` model and every section, re-exported from one place.

Sections live in ``wmtp.recipe.specs`` (one module per area); this module assembles them and
holds the rules that join sections (a pipeline's models, weighting and data from its
``wmtp.pipelines`` descriptor; head weights per head; lengths).
Builders import their section type from here, e.g. ``from wmtp.recipe.schema import TDWeightingSpec``.
"""

from typing import Annotated, Union

from pydantic import Field

from wmtp.pipelines import PIPELINES, PipelineInfo
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
from wmtp.recipe.specs.training import (
    FLOAT8_TOKEN_MULTIPLE,
    CriticLossSpec,
    ParallelSpec,
    ScheduleSpec,
    TrainingSpec,
)
from wmtp.recipe.specs.weighting import (
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

    @property
    def pipeline(self) -> PipelineInfo:
        """What ``experiment.pipeline`` needs, trains and logs (``wmtp.pipelines``)."""
        return PIPELINES[self.experiment.pipeline]

    @rule("experiment.pipeline", "model")
    def _pipeline_has_its_models(self) -> str | None:
        pipeline = self.pipeline
        missing = [m for m in pipeline.uses if getattr(self.model, m) is None]
        if missing:
            tables = ", ".join(f"[model.{m}]" for m in missing)
            return f"experiment.pipeline = {pipeline.name!r} needs {tables}"
        return None

    @rule("weighting.kind", "experiment.pipeline")
    def _pipeline_accepts_weighting(self) -> str | None:
        pipeline, kind = self.pipeline, self.weighting.kind
        if pipeline.accepts(kind):
            return None
        allowed = " or ".join(repr(w) for w in pipeline.weightings)
        users = [p.name for p in PIPELINES.values() if kind in p.weightings]
        hint = (
            f" (weighting {kind!r} is for pipeline {' or '.join(map(repr, users))})"
            if users
            else ""
        )
        return (
            f"weighting.kind = {kind!r} does nothing in experiment.pipeline = {pipeline.name!r}: "
            f"it takes weighting.kind = {allowed}{hint}"
        )

    @rule("training.max_steps", "training.epochs")
    def _training_has_length(self) -> str | None:
        t = self.training
        if self.pipeline.trains is not None and t.max_steps is None and t.epochs is None:
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
        if self.pipeline.heads is not None:
            if len(weights) != self.pipeline.heads:
                return (
                    f"training.head_weights has {len(weights)} entries but pipeline "
                    f"{self.pipeline.name!r} trains {self.pipeline.heads} head(s)"
                )
        elif n is not None and len(weights) != n:
            return (
                f"training.head_weights has {len(weights)} entries but "
                f"model.policy.n_future_tokens = {n}"
            )
        return None

    @rule("data.max_length", "model.policy.max_seq_len", training=True)
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

    @rule("data.max_length", "parallel.float8", training=True)
    def _float8_rows_fit_its_matmuls(self) -> str | None:
        multiple = FLOAT8_TOKEN_MULTIPLE
        if self.parallel.float8 is False or self.data.max_length % multiple == 0:
            return None
        lower = self.data.max_length // multiple * multiple
        return (
            f"data.max_length = {self.data.max_length}: parallel.float8 pads rows to a multiple "
            f"of {multiple} tokens (its weight gradients multiply over them), and a row may be "
            f"as long as data.max_length; set it to a multiple of {multiple} "
            f"({lower or multiple} or {lower + multiple})"
        )

    @rule("training.eval_every", "data.split.heldout_fraction")
    def _something_to_evaluate(self) -> str | None:
        split = self.data.split
        if self.training.eval_every and not split.heldout_fraction and split.heldout_path is None:
            return (
                f"training.eval_every = {self.training.eval_every} evaluates held-out rows, but "
                "data.split.heldout_fraction = 0 and no data.split.heldout_path hold any out: "
                "set training.eval_every = 0, or hold rows out"
            )
        return None

    @rule("experiment.pipeline", "data.pairs")
    def _pairs_for_pair_pipelines(self) -> str | None:
        if self.pipeline.examples == "pairs" and self.data.pairs is None:
            return (
                f"experiment.pipeline = {self.experiment.pipeline!r} trains on pairs: "
                "add [data.pairs]"
            )
        return None

    @rule("data.packing", "experiment.pipeline")
    def _no_packing_for_pairs(self) -> str | None:
        if self.pipeline.examples == "pairs" and self.data.packing:
            return (
                f"data.packing = true, but experiment.pipeline = {self.experiment.pipeline!r} "
                "trains on (correct, incorrect) pairs, one pair per row: there is nothing to "
                "pack; set data.packing = false (here or in the recipe it extends)"
            )
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

    def checks_training(self, context: dict | None) -> bool:
        """Whether the recipe is read to train: its pipeline trains a model, and it is not read
        to evaluate the weights it trained (``load_recipe(..., evaluating=True)``)."""
        return self.pipeline.trains is not None and super().checks_training(context)

    @property
    def trained_role(self) -> str | None:
        """Which model the pipeline trains: ``policy``, ``critic``, or none (evaluation)."""
        return self.pipeline.trains


__all__ = [
    "CATEGORIES",
    "CHECKPOINT",
    "COSMETIC",
    "NUMERICS",
    "PERFORMANCE",
    "SIZE_FIELDS",
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
