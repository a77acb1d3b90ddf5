"""``[model.policy]``, ``[model.reference]``, ``[model.critic]``: architectures, weights, adapters.

A model's sizes come from a ``flavour`` (a row of ``wmtp.models.args.FLAVOURS``), overridden
field by field by explicit sizes; with neither, from the checkpoint at ``path``.
"""

import dataclasses
import functools
from typing import Annotated, Any, Literal, Union

from pydantic import BeforeValidator, Field

from wmtp.models.args import FLAVOURS, ModelArgs, RopeScaling
from wmtp.models.backends import BACKENDS, HALF_DTYPES
from wmtp.models.backends import CHOICES as ATTENTION_CHOICES
from wmtp.recipe._base import CHECKPOINT, NUMERICS, PERFORMANCE, Section, rule

Flavour = Literal[tuple(FLAVOURS)]  # type: ignore[valid-type]
DType = Literal["bfloat16", "float16", "float32"]
Attention = Literal[ATTENTION_CHOICES]  # type: ignore[valid-type]
"""``auto`` and the backends of ``wmtp.models.backends.BACKENDS``."""
LoraTarget = Literal["wq", "wk", "wv", "wo", "w1", "w2", "w3"]


def _unset_if_empty(value: Any) -> Any:
    """``""`` for unset: TOML has no null, so ``--set KEY=''`` is how a command line unsets."""
    return None if value == "" else value


def _empty_allowed(schema: dict[str, Any]) -> None:
    """An editor's schema takes ``""`` too (what :func:`_unset_if_empty` reads as unset)."""
    schema["anyOf"].append({"const": ""})


SIZE_FIELDS = (
    "dim",
    "n_layers",
    "n_heads",
    "n_kv_heads",
    "vocab_size",
    "multiple_of",
    "ffn_dim_multiplier",
    "ffn_dim",
    "norm_eps",
    "rope_theta",
    "rope_scaling",
    "max_seq_len",
)
"""Fields that override the flavour's sizes one by one (names of ``ModelArgs``)."""


@functools.cache
def _flavour_sizes(flavour: str) -> dict[str, Any]:
    """``FLAVOURS[flavour]`` as a dict, made once: every rule of a model section asks for it.
    Callers copy it before changing a key and never change a nested value."""
    return FLAVOURS[flavour].to_dict()


class RopeScalingSpec(Section):
    """Llama-3 style RoPE frequency scaling (long-context extension)."""

    category = "checkpoint"

    factor: Annotated[float, Field(gt=0)] = 8.0
    """Overall scale of the low frequencies."""
    low_freq_factor: Annotated[float, Field(gt=0)] = 1.0
    """Wavelength threshold (in context lengths) below which frequencies are scaled fully."""
    high_freq_factor: Annotated[float, Field(gt=0)] = 4.0
    """Wavelength threshold above which frequencies are kept."""
    original_max_position_embeddings: Annotated[int, Field(gt=0)] = 8192
    """Context length the model was pretrained with."""


class LoraSpec(Section):
    """Low-rank adapters: only the adapters train; the base weights stay frozen."""

    category = "checkpoint"

    rank: Annotated[int, Field(gt=0)] = 64
    """Rank r of each adapter pair A [r, in], B [out, r]."""
    alpha: Annotated[float, NUMERICS, Field(gt=0)] = 128.0
    """Scale: the adapter's output is multiplied by alpha / rank."""
    dropout: Annotated[float, NUMERICS, Field(ge=0, lt=1)] = 0.0
    """Dropout on the adapter's input during training."""
    targets: list[LoraTarget] = Field(
        default_factory=lambda: ["wq", "wk", "wv", "wo", "w1", "w2", "w3"], min_length=1
    )
    """Linear layers that get adapters: attention ``wq wk wv wo``, SwiGLU ``w1 w2 w3``."""


class ModelSpecBase(Section):
    """What every model section shares: sizes, weights, dtype, attention backend, adapters."""

    category = "checkpoint"

    flavour: Annotated[
        Flavour | None,
        BeforeValidator(_unset_if_empty),
        Field(json_schema_extra=_empty_allowed),
    ] = None
    """Named sizes from ``wmtp.models.args.FLAVOURS``; explicit sizes below override it. ``""``
    unsets a flavour the recipe inherits (``--set model.policy.flavour=''``): over ``path``, the
    sizes are then the checkpoint's."""
    dim: Annotated[int, Field(gt=0)] | None = None
    """Model width (hidden size)."""
    n_layers: Annotated[int, Field(gt=0)] | None = None
    """Every transformer layer, the MTP heads' layers included."""
    n_heads: Annotated[int, Field(gt=0)] | None = None
    """Attention (query) heads."""
    n_kv_heads: Annotated[int, Field(gt=0)] | None = None
    """Key/value heads for grouped-query attention; unset means the flavour's (or ``n_heads``)."""
    vocab_size: Annotated[int, Field(ge=-1)] | None = None
    """Vocabulary size; ``-1`` takes it from the tokenizer."""
    multiple_of: Annotated[int, Field(gt=0)] | None = None
    """SwiGLU hidden width is rounded up to a multiple of this."""
    ffn_dim_multiplier: Annotated[float, Field(gt=0)] | None = None
    """Scales LLaMA's 8/3 * dim SwiGLU width before rounding."""
    ffn_dim: Annotated[int, Field(gt=0)] | None = None
    """Explicit SwiGLU hidden width (overrides multiple_of / ffn_dim_multiplier)."""
    norm_eps: Annotated[float, NUMERICS, Field(gt=0)] | None = None
    """RMSNorm epsilon."""
    rope_theta: Annotated[float, NUMERICS, Field(gt=0)] | None = None
    """RoPE base frequency (over ``path``: must be the checkpoint's, like ``rope_scaling`` and
    ``norm_eps``)."""
    rope_scaling: Annotated[RopeScalingSpec | None, NUMERICS] = None
    """Llama-3 RoPE scaling; unset means none."""
    max_seq_len: Annotated[int, NUMERICS, Field(gt=0)] | None = None
    """The model's context: the longest sequence ``wmtp eval`` and decoding may fill (RoPE is
    computed per position). Set over ``path``, it replaces the checkpoint's."""
    path: Annotated[str | None, NUMERICS] = None
    """Pretrained weights: a Meta directory (params.json + consolidated*.pth), a Hugging Face
    directory (config.json + model*.safetensors, or pytorch_model*.bin), or wmtp's own (``model.safetensors`` +
    ``wmtp_model.json``, as ``wmtp export --to wmtp`` writes; or a ``.safetensors`` file with
    ``wmtp_model.json`` beside it); unset means random initialisation."""
    format: Annotated[Literal["auto", "meta", "hf", "safetensors"], NUMERICS] = "auto"
    """Layout of ``path``; ``auto`` tells them apart by their files."""
    checkpoint: Annotated[str | None, NUMERICS] = None
    """Weights trained by wmtp, loaded after ``path``: a run directory, ``<run>/checkpoints/step-N``,
    or ``runs/<experiment>/latest`` (the newest run of an experiment under the runs directory)."""
    dtype: Annotated[DType, NUMERICS] = "bfloat16"
    """Compute dtype, and the storage dtype of frozen weights (a LoRA base too); a model that
    trains in full keeps fp32 master weights."""
    attention: Annotated[Attention, PERFORMANCE] = "auto"
    """Attention backend (``wmtp list attention``); ``auto`` runs, per layout (plain or packed
    batches), the fastest backend measured on this GPU that can run here (the ranking of
    ``wmtp bench attention --record``); where none was recorded, sdpa for plain batches and
    flash_attn (where it can run, else flex) for packed ones; sdpa off CUDA."""
    lora: LoraSpec | None = None
    """Low-rank adapters; unset trains (or keeps) the full weights."""

    @rule("attention", "dtype")
    def _attention_runs_in_dtype(self) -> str | None:
        backend = BACKENDS.get(self.attention)
        if backend is not None and backend.half_only and self.dtype not in HALF_DTYPES:
            return (
                f"attention = {self.attention!r} needs dtype = 'bfloat16' or 'float16', "
                f"not {self.dtype!r}"
            )
        return None

    @rule("flavour", "dim")
    def _sizes_are_known(self) -> str | None:
        if self.flavour or self.path or self.checkpoint:
            return None
        missing = [f for f in ("dim", "n_layers", "n_heads") if getattr(self, f) is None]
        if missing:
            return (
                f"flavour is unset and so are {', '.join(missing)}: give a flavour, the sizes "
                "(dim, n_layers, n_heads), or a path to read them from"
            )
        return None

    @rule("dim", "n_heads")
    def _heads_divide_dim(self) -> str | None:
        sizes = self.resolved_sizes()
        dim, n_heads = sizes.get("dim"), sizes.get("n_heads")
        if dim and n_heads and dim % n_heads:
            return f"dim = {dim} is not a multiple of n_heads = {n_heads}"
        return None

    @rule("n_kv_heads", "n_heads")
    def _kv_heads_divide_heads(self) -> str | None:
        sizes = self.resolved_sizes()
        n_heads, kv = sizes.get("n_heads"), sizes.get("n_kv_heads")
        if n_heads and kv and n_heads % kv:
            return f"n_heads = {n_heads} is not a multiple of n_kv_heads = {kv}"
        return None

    def resolved_sizes(self) -> dict[str, Any]:
        """The flavour's sizes with the explicit ones applied (only what is known)."""
        sizes = dict(_flavour_sizes(self.flavour)) if self.flavour else {}
        for name in (*SIZE_FIELDS, "n_future_tokens"):
            value = getattr(self, name, None)
            if value is not None:
                sizes[name] = value.model_dump() if isinstance(value, Section) else value
        return sizes

    def model_args(self, vocab_size: int | None = None) -> ModelArgs:
        """The ``ModelArgs`` of this model; ``vocab_size`` fills in ``-1`` (from the tokenizer).

        Needs the flavour or explicit ``dim``, ``n_layers``, ``n_heads``; a model whose sizes
        come from its checkpoint is read by ``wmtp.models.from_pretrained`` instead.
        """
        from wmtp.errors import RecipeError

        sizes = self.resolved_sizes()
        if not self.flavour and not all(k in sizes for k in ("dim", "n_layers", "n_heads")):
            raise RecipeError("model sizes come from its checkpoint; read them from there")
        if isinstance(sizes.get("rope_scaling"), dict):
            sizes["rope_scaling"] = RopeScaling(**sizes["rope_scaling"])
        fields = {f.name for f in dataclasses.fields(ModelArgs)}
        args = ModelArgs(**{k: v for k, v in sizes.items() if k in fields})
        if args.vocab_size == -1 and vocab_size is not None:
            args = args.with_vocab(vocab_size)
        return args


class LlamaMTPSpec(ModelSpecBase):
    """A LLaMA transformer with n future-token heads (Meta's multi-token prediction model)."""

    kind: Literal["llama_mtp"] = "llama_mtp"
    """Model type."""
    n_future_tokens: Annotated[int, Field(ge=1)] | None = None
    """Output heads: head k predicts token t+k. Unset means the flavour's (1 for plain LLaMA)."""

    @rule("n_future_tokens", "n_layers")
    def _future_tokens_fit_layers(self) -> str | None:
        sizes = self.resolved_sizes()
        n, layers = sizes.get("n_future_tokens"), sizes.get("n_layers")
        if n is not None and layers is not None and n > layers:
            return (
                f"n_future_tokens = {n} needs at least as many layers, but n_layers = {layers} "
                "(each head is one of the model's layers)"
            )
        return None

    @property
    def heads(self) -> int:
        """Number of future-token heads (1 when unknown until the checkpoint is read)."""
        return int(self.resolved_sizes().get("n_future_tokens") or 1)


class LinearHeadSpec(Section):
    """One linear layer from the final hidden state to a scalar value."""

    category = "checkpoint"

    kind: Literal["linear"] = "linear"
    """Value head type."""


class SigmoidHeadSpec(Section):
    """A linear layer followed by a sigmoid: values in (0, 1), losses use the pre-sigmoid score."""

    category = "checkpoint"

    kind: Literal["sigmoid"] = "sigmoid"
    """Value head type."""


class MLPHeadSpec(Section):
    """A small MLP from the final hidden state to a scalar value."""

    category = "checkpoint"

    kind: Literal["mlp"] = "mlp"
    """Value head type."""
    hidden: Annotated[list[Annotated[int, Field(gt=0)]], Field(min_length=1)] | None = None
    """Widths of the hidden layers; unset means dim/4 and dim/8 (dim -> dim/4 -> dim/8 -> 1)."""
    activation: Annotated[Literal["gelu", "relu", "silu"], NUMERICS] = "gelu"
    """Activation between layers."""
    dropout: Annotated[float, NUMERICS, Field(ge=0, lt=1)] = 0.0
    """Dropout between layers during training."""

    def hidden_widths(self, dim: int) -> list[int]:
        """The hidden widths for a model of width ``dim``: ``hidden``, or dim/4 and dim/8
        (as ``wmtp.models.value.MLPValueHead`` builds them)."""
        return list(self.hidden) if self.hidden else [max(dim // 4, 1), max(dim // 8, 1)]


ValueHeadSpec = Annotated[
    Union[LinearHeadSpec, SigmoidHeadSpec, MLPHeadSpec], Field(discriminator="kind")
]


class ValueModelSpec(ModelSpecBase):
    """A LLaMA trunk with a value head: the critic, one value per token."""

    kind: Literal["value_model"] = "value_model"
    """Model type."""
    head: Annotated[ValueHeadSpec, CHECKPOINT] = Field(default_factory=LinearHeadSpec)
    """Value head on top of the final hidden state."""

    def model_args(self, vocab_size: int | None = None) -> ModelArgs:
        """The backbone's ``ModelArgs`` (one output position: ``n_future_tokens = 1``)."""
        return dataclasses.replace(super().model_args(vocab_size), n_future_tokens=1)


class ModelsSpec(Section):
    """The models of a recipe: the policy that trains, and the frozen helpers it may need."""

    policy: LlamaMTPSpec | None = None
    """The model that is trained (or evaluated)."""
    reference: LlamaMTPSpec | None = None
    """Frozen reference model for Rho-1 token selection."""
    critic: ValueModelSpec | None = None
    """Value model: trained by the ``critic`` pipeline, frozen for TD weighting."""
