"""Model sizes: the flavour table, derived sizes, parameter and FLOP counts. No torch here.

``n_layers`` counts every transformer layer, as Meta's MTP checkpoints do: the trunk has
``n_layers - n_future_tokens`` layers, head 1 is one more layer (``layers[-1]``), and heads 2..n
are ``n_future_tokens - 1`` extra layers (``extra_heads``). ``n_future_tokens = 1`` is a plain LLaMA.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, replace

META_PARAMS_UNUSED = ("max_batch_size",)
"""``params.json`` keys of Meta's inference code that do not change the model's computation."""


@dataclass(frozen=True)
class RopeScaling:
    """Llama-3 style RoPE frequency scaling (long-context extension)."""

    factor: float = 8.0
    low_freq_factor: float = 1.0
    high_freq_factor: float = 4.0
    original_max_position_embeddings: int = 8192


@dataclass(frozen=True)
class ModelArgs:
    """Every size of a LLaMA MTP transformer. Derived sizes are properties, computed here only."""

    dim: int = 4096
    n_layers: int = 32
    n_heads: int = 32
    n_kv_heads: int | None = None
    """Key/value heads for grouped-query attention; ``None`` means ``n_heads`` (no GQA)."""
    vocab_size: int = 32000
    """``-1`` means "take it from the tokenizer" (Meta's params.json convention)."""
    multiple_of: int = 256
    ffn_dim_multiplier: float | None = None
    ffn_dim: int | None = None
    """Explicit SwiGLU hidden width; overrides the multiple_of / ffn_dim_multiplier rule."""
    norm_eps: float = 1e-5
    rope_theta: float = 10000.0
    rope_scaling: RopeScaling | None = None
    max_seq_len: int = 4096
    n_future_tokens: int = 1

    def __post_init__(self) -> None:
        _check_values(self)
        assert self.n_heads > 0 and self.dim % self.n_heads == 0, (
            f"n_heads = {self.n_heads} does not divide dim = {self.dim}"
        )
        assert self.n_heads % self.kv_heads == 0, (
            f"n_kv_heads = {self.kv_heads} does not divide n_heads = {self.n_heads}"
        )
        assert 1 <= self.n_future_tokens <= self.n_layers, (
            f"n_future_tokens = {self.n_future_tokens} is not in 1..n_layers = {self.n_layers}"
        )

    @property
    def kv_heads(self) -> int:
        return self.n_kv_heads if self.n_kv_heads is not None else self.n_heads

    @property
    def head_dim(self) -> int:
        return self.dim // self.n_heads

    @property
    def hidden_dim(self) -> int:
        """SwiGLU hidden width: LLaMA's 2/3 * 4 * dim rule, scaled, rounded up to multiple_of."""
        if self.ffn_dim is not None:
            return self.ffn_dim
        hidden = int(2 * (4 * self.dim) / 3)
        if self.ffn_dim_multiplier is not None:
            hidden = int(self.ffn_dim_multiplier * hidden)
        return self.multiple_of * math.ceil(hidden / self.multiple_of)

    @property
    def n_trunk_layers(self) -> int:
        return self.n_layers - self.n_future_tokens

    def with_vocab(self, vocab_size: int) -> ModelArgs:
        return replace(self, vocab_size=vocab_size)

    def with_heads(self, n_future_tokens: int) -> ModelArgs:
        """The same trunk with ``n_future_tokens`` heads: one layer per head added or dropped."""
        layers = self.n_layers - self.n_future_tokens + n_future_tokens
        return replace(self, n_layers=layers, n_future_tokens=n_future_tokens)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> ModelArgs:
        """Inverse of :meth:`to_dict` (a ``rope_scaling`` dict becomes ``RopeScaling``)."""
        data = dict(data)
        if isinstance(data.get("rope_scaling"), dict):
            data["rope_scaling"] = RopeScaling(**data["rope_scaling"])
        return cls(**data)

    @classmethod
    def from_params_json(cls, params: dict) -> ModelArgs:
        """Sizes from a Meta ``params.json``; a key wmtp cannot honour is a ValueError naming it.

        ``use_scaled_rope: true`` means what Meta's Llama-3 code (llama-models ``apply_scaling``)
        computes: factor 8, low 1, high 4, original 8192, fixed there (:class:`RopeScaling`'s
        defaults); Llama 4's ``rope_scaling_factor`` / ``rope_high_freq_factor`` are refused.
        ``vocab_size: -1`` stays ``-1`` (take it from the tokenizer or the embedding).
        """
        known = {f for f in cls.__dataclass_fields__ if f != "rope_scaling"}
        unknown = sorted(params.keys() - known - {"use_scaled_rope", *META_PARAMS_UNUSED})
        if unknown:
            raise ValueError(f"{', '.join(map(repr, unknown))}: not a size wmtp can honour")
        sizes = {k: v for k, v in params.items() if k in known}
        scaling = RopeScaling() if params.get("use_scaled_rope") else None
        return cls(**sizes, rope_scaling=scaling)

    def to_params_json(self) -> dict:
        """Meta's ``params.json`` of these sizes (inverse of :meth:`from_params_json`).

        ``ffn_dim`` appears only where ``multiple_of`` / ``ffn_dim_multiplier`` do not give it;
        RoPE scaling only as ``use_scaled_rope`` (Llama-3.1's factors): a ValueError otherwise.
        """
        if self.rope_scaling not in (None, RopeScaling()):
            raise ValueError(
                f"RoPE scaling {self.rope_scaling} is not Llama-3.1's: Meta's params.json can "
                "only say use_scaled_rope = true (factor 8, low 1, high 4, original 8192)"
            )
        params = asdict(self)
        del params["rope_scaling"]
        if replace(self, ffn_dim=None).hidden_dim == self.hidden_dim:
            del params["ffn_dim"]
        if self.rope_scaling is not None:
            params["use_scaled_rope"] = True
        return params


def layer_shapes(args: ModelArgs) -> dict[str, tuple[int, ...]]:
    """Each parameter of one transformer block (attention, SwiGLU, two RMSNorm weights) by its
    name within the block (Meta's, as ``LlamaMTP`` names it), and its shape."""
    d, ffn = args.dim, args.hidden_dim
    q, kv = args.n_heads * args.head_dim, args.kv_heads * args.head_dim
    return {
        "attention.wq.weight": (q, d),
        "attention.wk.weight": (kv, d),
        "attention.wv.weight": (kv, d),
        "attention.wo.weight": (d, q),
        "feed_forward.w1.weight": (ffn, d),
        "feed_forward.w2.weight": (d, ffn),
        "feed_forward.w3.weight": (ffn, d),
        "attention_norm.weight": (d,),
        "ffn_norm.weight": (d,),
    }


def parameter_shapes(args: ModelArgs) -> dict[str, tuple[int, ...]]:
    """Every parameter of a ``LlamaMTP`` of these sizes by its name, and its shape: what a
    checkpoint of them holds (Meta's names: trunk and head 1 ``layers``, heads 2..n
    ``extra_heads``). ``vocab_size`` -1 stays -1 in the embedding's rows."""
    blocks = [f"layers.{i}." for i in range(args.n_trunk_layers + 1)]
    blocks += [f"extra_heads.{j}." for j in range(args.n_future_tokens - 1)]
    shapes = {"tok_embeddings.weight": (args.vocab_size, args.dim)}
    shapes |= {
        block + name: shape for block in blocks for name, shape in layer_shapes(args).items()
    }
    return shapes | {"norm.weight": (args.dim,), "output.weight": (args.vocab_size, args.dim)}


def layer_params(args: ModelArgs) -> int:
    """Parameters of one transformer block (attention, SwiGLU, two RMSNorm weights)."""
    return sum(math.prod(shape) for shape in layer_shapes(args).values())


def param_count(args: ModelArgs, *, with_unembedding: bool = True) -> int:
    """Total parameters: embedding, all layers, final norm, and (untied) unembedding."""
    assert args.vocab_size > 0, "resolve vocab_size (-1 = from the tokenizer) before counting"
    embed = args.vocab_size * args.dim
    out = args.vocab_size * args.dim if with_unembedding else 0
    return embed + args.n_layers * layer_params(args) + args.dim + out


def training_flops_per_token(
    args: ModelArgs,
    seq_len: int,
    *,
    weight_grads: bool = True,
    backward: bool = True,
    unembedding: bool = True,
) -> float:
    """Model FLOPs of forward + backward per trained token (6N + attention), all heads counted.

    Dense matmuls cost 6 FLOPs per parameter per token (2 forward, 4 backward: 2 for the input
    gradients, 2 for the weight gradients, which a frozen base under LoRA skips:
    ``weight_grads=False`` counts 4); the embedding lookup costs none; every head runs the
    unembedding; causal attention adds 2 * n_layers * seq_len * dim forward (QK^T and PV, halved
    by causality) and twice that backward. ``backward=False``: a frozen model's forward only;
    ``unembedding=False``: a value model (its head is negligible).
    Recomputation (activation checkpointing) is never counted: these are model FLOPs.
    """
    dense = args.n_layers * (layer_params(args) - 2 * args.dim)  # the norms multiply nothing
    if unembedding:
        dense += args.n_future_tokens * args.vocab_size * args.dim
    attention = 2 * args.n_layers * seq_len * args.dim
    if not backward:
        return 2 * dense + attention
    return (6 if weight_grads else 4) * dense + 3 * attention


BF16_PEAK_TFLOPS = {
    "H100 SXM": 989.0,
    "H100 80GB HBM3": 989.0,
    "H100 PCIe": 756.0,
    "H200": 989.0,
    "A100": 312.0,
    "L4": 121.0,
    "A10": 125.0,
}
"""Dense bf16 tensor-core peaks (no sparsity) per device, TFLOP/s, from the vendors' datasheets:
the denominator of every MFU wmtp reports (training logs and benchmarks alike)."""


HBM_TB_PER_S = {
    "H100 SXM": 3.35,
    "H100 80GB HBM3": 3.35,
    "H100 PCIe": 2.0,
    "H200": 4.8,
    "A100": 2.0,
    "L4": 0.3,
    "A10": 0.6,
}
"""Device memory bandwidth per device, TB/s, from the vendors' datasheets: stated beside the
bandwidth ``wmtp bench decode`` measures, never used in its place."""


def bf16_peak_tflops(device_name: str) -> tuple[float, str] | None:
    """``(peak, datasheet entry)`` of the GPU called ``device_name``; ``None`` when unknown.

    MFU: :func:`mfu`."""
    return datasheet(BF16_PEAK_TFLOPS, device_name)


def datasheet(table: dict[str, float], device_name: str) -> tuple[float, str] | None:
    """``(figure, entry)`` of ``table``'s entry for the GPU called ``device_name``: the entry
    whose every word is in the name, else the first whose first word is; ``None`` when unknown."""
    for key, figure in table.items():
        if all(part in device_name for part in key.split()):
            return figure, key
    for key, figure in table.items():
        if key.split()[0] in device_name:
            return figure, key
    return None


def mfu(tokens_per_s: float, flops_per_token: float, peak_tflops: float, gpus: int = 1) -> float:
    """Model FLOPs utilisation, the one formula of the training logs and of every benchmark side
    (wmtp's and the peers'): tokens/s x model FLOPs per token (:func:`training_flops_per_token`:
    no weight gradients for frozen weights, recomputation never counted) / (peak x GPUs), the
    peak from :data:`BF16_PEAK_TFLOPS`. 0 where the peak is unknown (0)."""
    if peak_tflops <= 0:
        return 0.0
    return tokens_per_s * flops_per_token / (peak_tflops * 1e12 * gpus)


_WHOLE = ("dim", "n_layers", "n_heads", "n_kv_heads", "vocab_size", "multiple_of", "ffn_dim")
_WHOLE += ("max_seq_len", "n_future_tokens")
_REAL = ("norm_eps", "rope_theta", "ffn_dim_multiplier")


def _check_values(args: ModelArgs) -> None:
    """Each size a positive whole number and each scale a positive number (``vocab_size`` may be
    -1, optional ones None): a description file written by hand or by another tool says which
    value is wrong here, not as an error deep inside the model's construction."""
    for name in (*_WHOLE, *_REAL):
        value = getattr(args, name)
        if value is None and name in ("n_kv_heads", "ffn_dim", "ffn_dim_multiplier"):
            continue
        if name == "vocab_size" and value == -1:
            continue
        kinds = (int,) if name in _WHOLE else (int, float)
        if isinstance(value, bool) or not isinstance(value, kinds) or not value > 0:
            kind = "a positive whole number" if name in _WHOLE else "a positive number"
            raise ValueError(f"{name} = {value!r}: {kind} expected")


FLAVOURS: dict[str, ModelArgs] = {
    # Trains on a CPU in seconds; vocab from the tokenizer.
    "tiny": ModelArgs(
        dim=64,
        n_layers=4,
        n_heads=4,
        n_kv_heads=2,
        vocab_size=-1,
        multiple_of=32,
        max_seq_len=512,
        n_future_tokens=2,
    ),
    "small": ModelArgs(
        dim=256,
        n_layers=6,
        n_heads=8,
        n_kv_heads=4,
        vocab_size=-1,
        multiple_of=64,
        max_seq_len=1024,
        n_future_tokens=4,
    ),
    # Meta's 7B multi-token model (Llama-2 architecture, 4 heads).
    "llama2-7b-mtp": ModelArgs(
        dim=4096,
        n_layers=32,
        n_heads=32,
        vocab_size=32000,
        multiple_of=256,
        max_seq_len=4096,
        n_future_tokens=4,
    ),
    "llama2-7b": ModelArgs(dim=4096, n_layers=32, n_heads=32, vocab_size=32000, max_seq_len=4096),
    # princeton-nlp/Sheared-LLaMA-2.7B: the critic's backbone.
    "sheared-llama-2.7b": ModelArgs(
        dim=2560,
        n_layers=32,
        n_heads=20,
        vocab_size=32000,
        ffn_dim=6912,
        max_seq_len=4096,
    ),
    # The ~1B shape of the GPU benchmarks (hidden 2048, 16 layers, 16 heads, 8 KV heads).
    "llama-1b-bench": ModelArgs(
        dim=2048,
        n_layers=16,
        n_heads=16,
        n_kv_heads=8,
        vocab_size=32000,
        ffn_dim=5632,
        max_seq_len=2048,
    ),
}


def flavour(name: str) -> ModelArgs:
    """The flavour ``name``; a did-you-mean error for an unknown one."""
    if name in FLAVOURS:
        return FLAVOURS[name]
    import difflib

    from wmtp.errors import ComponentError

    close = difflib.get_close_matches(name, list(FLAVOURS), n=3)
    hint = f"; did you mean {', '.join(map(repr, close))}?" if close else ""
    raise ComponentError(f"unknown model flavour {name!r}{hint} (known: {', '.join(FLAVOURS)})")


__all__ = [
    "BF16_PEAK_TFLOPS",
    "FLAVOURS",
    "ModelArgs",
    "RopeScaling",
    "bf16_peak_tflops",
    "flavour",
    "layer_params",
    "layer_shapes",
    "param_count",
    "parameter_shapes",
    "training_flops_per_token",
]
