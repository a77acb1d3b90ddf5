"""What a recipe will cost, from its numbers alone (no torch): batch, tokens, parameters, memory.

Only ``row_tokens`` (optional) brings in the data: without it every row is ``data.max_length``.
A recipe that trains nothing (the ``evaluation`` pipeline) has no batch or tokens per step: its
memory is that of decoding (below, "Memory per GPU of an evaluation").

Batch and tokens
    effective batch   = micro_batch_size * grad_accum_steps * world_size   (examples per step;
                        a pair pipeline's examples are two rows each: ``wmtp.pipelines``)
    tokens per step   = effective batch * rows per example * data.max_length   (an upper bound:
                        padding counted)

Parameters
    ``wmtp.models.args.param_count`` of each model (value models without the unembedding, plus
    their head); LoRA adds rank * (in + out) per targeted linear layer of every layer.

Memory per GPU of the trained model, in bytes (S = world_size for full_shard / shard_grad_op,
1 for no_shard; b = bytes of the model's dtype; P_t trained, P_f frozen parameters)

    states      = 16 * P_t / S               fp32 master weights 4 + fp32 gradients 4 + AdamW m, v 8;
                  + 4 * P_t * (1 - 1/S)      with grad_accum_steps > 1 on a sharded mesh: the
                                             unsharded fp32 gradients FSDP2 accumulates in
    frozen      = b * P_f / S                frozen base weights under LoRA, stored in the dtype
    gathered    = b * 2 * block_params       full_shard: two blocks unsharded at a time (prefetch)
                  b * (P_t + P_f)            shard_grad_op: parameters stay unsharded fwd -> bwd;
                                             no_shard: the compute copy (0 when dtype = float32)
    activations = T * (L_saved * (b * A_layer + M_layer) + b * A_layer)
                  with T = rows * R tokens, where R is
                  the row length: data.max_length, or ``row_tokens`` when given (the longest row
                  the data makes, found by ``wmtp validate --data``: padded batches are only as
                  long as their longest example);
                  A_layer = 6 * dim + 2 * kv_dim + 4 * ffn_dim (per token and layer:
                  RMSNorm inputs/outputs, q k v, attention output, SwiGLU w1, w3, silu, product),
                  + 2 * n_heads * R for eager attention (scores and probabilities);
                  M_layer = the sum of the adapted linears' input widths under LoRA with
                  dropout: each adapter keeps its dropout mask, a byte per input element
                  (compiled blocks recompute the dropped input from it; measured on one H200,
                  LoRA 7B, 2048 tokens: 1.9 GiB over 28 layers, the bytes this counts);
                  with activation checkpointing a checkpointed layer (every k-th block, as
                  ``parallel.activation_checkpointing = k`` picks them) keeps only its input
                  (dim) and one layer is recomputed at a time (the last A_layer term).
                  L_saved = trunk layers + 1 head with mtp_loss = per_head on one GPU (heads
                  run one at a time), all layers with chunked / joint, and with per_head under
                  FSDP (world_size > 1: one backward, every head layer kept).
    logits      = T * V * (b + 4)            per_head: one head's logits plus their fp32 upcast;
                                             chunked: ~0 (one logits block at a time);
                  + 4 * n * T * V            joint: the whole logits of every head, their fp32
                                             log-probabilities kept for the one backward (an
                                             upper bound: only target tokens are scored, and
                                             masked prompts are not targets)
    frozen models (critic, reference) = b * P / S each, no gradients or optimizer state.

Memory per GPU of an evaluation, in bytes (every process holds the whole policy; b = bytes of
its dtype, P its parameters)

    weights     = b * P
    kv_cache    = 2 * L * kv_heads * head_dim * b * rows * C
                  keys and values of every cached layer L (``wmtp.models.kv_cache``): the trunk
                  and head 1's layer, every head's with ``evaluation.speculative``; for the rows
                  decoded together: ``evaluation.batch_size`` slots, fewer where fewer rows
                  exist (a problem's ``n_samples``, one when greedy; every problem's share the
                  slots, ``max_problems`` of them, twice with ``include_seen``, except
                  speculative decoding, which decodes one problem at a time); C = the model's
                  ``max_seq_len``, a bound: a row holds its prompt and ``max_new_tokens``.
                  ``wmtp validate --env`` refuses an evaluation only where the least it needs
                  (C = ``max_new_tokens``) does not fit: the bound would refuse evaluations
                  that fit (HumanEval's prompts fill a fraction of a 4,096-token context).

These are estimates for planning: allocator fragmentation, CUDA context (~0.5-1 GiB),
communication buffers and temporary tensors come on top. ``parallel.compile`` saves fewer
activations than counted (inductor recomputes pointwise results in the backward): a compiled,
packed ``recipes/gpu_2x_fast.toml`` peaked at 43.9 GiB on 2 H200s against 65.7 estimated here.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from wmtp.models.args import ModelArgs, layer_params, layer_shapes, param_count

DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}
BYTE_TOKENIZER_VOCAB = 259
"""256 bytes + BOS, EOS, PAD (``wmtp.data.tokenizers.ByteTokenizer``)."""
ASSUMED_VOCAB = 32000
"""Vocabulary assumed when only the tokenizer file knows it (Llama-2's)."""
GIB = 1024**3


@dataclass(frozen=True)
class ModelCount:
    """Parameters of one model of the recipe."""

    role: str
    total: int
    trainable: int
    """Parameters the pipeline trains (0 for frozen models)."""
    args: ModelArgs | None
    """``None`` when the sizes come from the checkpoint."""


@dataclass(frozen=True)
class Memory:
    """Estimated bytes per GPU of the trained model, by part (see the module docstring)."""

    KEY: ClassVar[str] = "training.micro_batch_size"
    """The recipe key to change first where it does not fit (:func:`memory_shortfall`)."""
    CHANGE: ClassVar[str] = (
        "lower training.micro_batch_size (and raise grad_accum_steps to keep the batch), set "
        "parallel.activation_checkpointing, or shorten data.max_length"
    )

    states: float
    frozen: float
    gathered: float
    activations: float
    logits: float
    frozen_models: float

    @property
    def total(self) -> float:
        return (
            self.states
            + self.frozen
            + self.gathered
            + self.activations
            + self.logits
            + self.frozen_models
        )

    def parts(self) -> dict[str, float]:
        return {
            "states": self.states,
            "frozen": self.frozen,
            "gathered": self.gathered,
            "activations": self.activations,
            "logits": self.logits,
            "frozen_models": self.frozen_models,
            "total": self.total,
        }


@dataclass(frozen=True)
class EvalMemory:
    """Estimated bytes per GPU of an evaluation: the policy's weights and the KV cache of the
    rows decoded together (see the module docstring)."""

    KEY: ClassVar[str] = "evaluation.batch_size"
    CHANGE: ClassVar[str] = (
        "lower evaluation.batch_size (the rows decoded together, each with its KV cache)"
    )

    weights: float
    kv_cache: float
    rows: int
    """Rows decoded together, each with its KV cache."""
    positions: int
    """Positions each row's KV cache holds (the model's context)."""
    new_tokens: int = 0
    """``evaluation.max_new_tokens``: the fewest positions a row's KV cache holds."""

    @property
    def total(self) -> float:
        return self.weights + self.kv_cache

    @property
    def least(self) -> float:
        """What any evaluation of this section needs: the weights and every row's KV cache of
        ``max_new_tokens`` positions. ``total`` counts the whole context, which a row fills
        only with a prompt of ``max_seq_len - max_new_tokens`` tokens."""
        return self.weights + self.kv_cache * min(1.0, self.new_tokens / self.positions)

    def parts(self) -> dict[str, float]:
        return {"weights": self.weights, "kv_cache": self.kv_cache, "total": self.total}


@dataclass(frozen=True)
class Estimate:
    """Derived quantities of a recipe at a world size."""

    world_size: int
    effective_batch: int | None
    """``None`` for a recipe that trains nothing (evaluation), as ``tokens_per_step``."""
    tokens_per_step: int | None
    models: list[ModelCount] = field(default_factory=list)
    memory: Memory | EvalMemory | None = None
    """Training's, or an evaluation's; ``None`` when the model's sizes come from its
    checkpoint."""
    notes: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        out = {
            "world_size": self.world_size,
            "effective_batch": self.effective_batch,
            "tokens_per_step": self.tokens_per_step,
            "parameters": {
                m.role: {"total": m.total, "trainable": m.trainable} for m in self.models
            },
            "memory_gib_per_gpu": (
                {k: round(v / GIB, 3) for k, v in self.memory.parts().items()}
                if self.memory
                else None
            ),
            "notes": self.notes,
        }
        if isinstance(self.memory, EvalMemory):
            out["decoding"] = {"rows": self.memory.rows, "positions": self.memory.positions}
        return out


def estimate(recipe: Any, world_size: int = 1, *, row_tokens: int | None = None) -> Estimate:
    """Batch, tokens, parameter counts and memory per GPU of ``recipe`` on ``world_size`` GPUs
    (for a recipe that trains nothing: parameters and the memory of its evaluation).

    ``row_tokens`` sizes the activations and logits (rows of that many tokens instead of
    ``data.max_length``, see the module docstring); tokens per step stay the max_length bound.
    """
    assert world_size >= 1, world_size
    assert row_tokens is None or row_tokens >= 1, row_tokens
    pipeline = recipe.pipeline  # wmtp.pipelines: what it uses, trains, and reads per example
    notes: list[str] = []
    models = _counted_models(recipe, notes)
    if pipeline.trains is None:
        policy = next((m for m in models if m.role == "policy"), None)
        memory = _eval_memory(recipe, policy, notes)
        return Estimate(world_size, None, None, models, memory, notes)
    row_length = recipe.data.max_length if row_tokens is None else row_tokens
    t = recipe.training
    rows_per_micro = t.micro_batch_size * pipeline.rows_per_example
    effective = t.micro_batch_size * t.grad_accum_steps * world_size
    tokens = effective * recipe.data.max_length * pipeline.rows_per_example
    memory = None
    trained = next((m for m in models if m.role == pipeline.trains), None)
    if trained is not None and trained.args is not None:
        frozen = [m for m in models if m.role != trained.role and m.role in pipeline.uses]
        memory = _memory(recipe, trained, frozen, world_size, rows_per_micro, row_length)
        notes += _memory_notes(recipe, trained)
    return Estimate(world_size, effective, tokens, models, memory, notes)


def _counted_models(recipe: Any, notes: list[str]) -> list[ModelCount]:
    """The parameters of each model the recipe has (a note for one its pipeline does not use)."""
    pipeline = recipe.pipeline
    vocab = _vocab(recipe, notes)
    models = []
    for role in ("policy", "reference", "critic"):
        spec = getattr(recipe.model, role)
        if spec is None:
            continue
        trained = role == pipeline.trains
        models.append(count_model(role, spec, vocab, trained=trained, notes=notes))
        if role not in pipeline.uses:
            notes.append(f"model.{role} is not used by the {recipe.experiment.pipeline} pipeline")
    return models


def _eval_memory(recipe: Any, policy: ModelCount | None, notes: list[str]) -> EvalMemory | None:
    """The memory per GPU of evaluating the policy (see the module docstring); ``None`` when its
    sizes come from its checkpoint."""
    if policy is None or policy.args is None:
        return None
    args, spec = policy.args, recipe.evaluation
    b = DTYPE_BYTES[recipe.model.policy.dtype]
    layers = args.n_layers if spec.speculative else args.n_trunk_layers + 1
    rows, positions = _decoded_rows(spec), args.max_seq_len
    kv_cache = 2 * layers * args.kv_heads * args.head_dim * b * rows * positions
    notes.append(
        f"KV cache counted at model.policy.max_seq_len = {positions:,} positions a row (a bound: "
        f"a row holds its prompt and evaluation.max_new_tokens = {spec.max_new_tokens:,})"
    )
    return EvalMemory(b * policy.total, kv_cache, rows, positions, spec.max_new_tokens)


def _decoded_rows(spec: Any) -> int:
    """The rows an ``[evaluation]`` section decodes together, at most (``wmtp.eval.completions``):
    a problem's samples (one when greedy), every problem's sharing ``batch_size`` slots, except
    speculative decoding's, one problem at a time."""
    per_problem = 1 if spec.temperature == 0 else spec.n_samples
    if spec.speculative:
        return min(spec.batch_size, per_problem)
    if spec.max_problems is None:
        return spec.batch_size
    problems = spec.max_problems * (2 if spec.include_seen else 1)
    return min(spec.batch_size, problems * per_problem)


def memory_shortfall(cost: Estimate, available: int, what: str, processes: int = 1) -> str | None:
    """Why ``cost`` (per process) times ``processes`` does not fit ``available`` bytes of
    ``what`` (``"this machine's memory"``, ``"the GPU's memory"``), with what to change (its
    ``KEY`` first); None when it fits or nothing is estimated."""
    if cost.memory is None:
        return None
    evaluating = isinstance(cost.memory, EvalMemory)
    needed = cost.memory.least if evaluating else cost.memory.total
    if needed * processes <= available:
        return None
    each = f"{needed / GIB:.1f} GiB"
    need = each if processes == 1 else f"{processes} processes x {each}"
    what_is_counted = (
        "the least an evaluation needs, its rows' KV caches at evaluation.max_new_tokens positions"
        if evaluating
        else "the memory estimate"
    )
    return (
        f"{what_is_counted} ({need}, `wmtp validate`) is more than {what} "
        f"({available / GIB:.1f} GiB): {cost.memory.CHANGE}"
    )


def host_memory() -> int:
    """This machine's memory in bytes (what a CPU run's processes share)."""
    import os

    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def _vocab(recipe: Any, notes: list[str]) -> int:
    if recipe.tokenizer.kind == "byte":
        return BYTE_TOKENIZER_VOCAB
    for role in ("policy", "reference", "critic"):
        spec = getattr(recipe.model, role)
        vocab = spec.resolved_sizes().get("vocab_size") if spec else None
        if vocab and vocab > 0:
            return vocab
    vocab = _tokenizer_vocab(recipe.tokenizer)
    if vocab is not None:
        return vocab
    notes.append(f"vocabulary assumed {ASSUMED_VOCAB} (the tokenizer file knows it)")
    return ASSUMED_VOCAB


def _tokenizer_vocab(spec: Any) -> int | None:
    """The vocabulary of the recipe's tokenizer file where it is there and readable (a missing
    or unreadable file is the inputs' check's to report)."""
    from wmtp.data.tokenizers import load_tokenizer
    from wmtp.errors import WmtpError

    path = Path(spec.path).expanduser() if getattr(spec, "path", None) else None
    if path is None or not path.exists():
        return None
    try:
        return load_tokenizer(spec.kind, path).vocab_size
    except (WmtpError, OSError, RuntimeError, ValueError):
        return None


def count_model(role: str, spec: Any, vocab: int, *, trained: bool, notes: list[str]) -> ModelCount:
    """Total and trainable parameters of the model of ``spec``."""
    args = _model_sizes(spec, vocab)
    if args is None:
        notes.append(
            f"model.{role}: sizes come from its checkpoint, not readable here; not counted"
        )
        return ModelCount(role, 0, 0, None)
    if spec.kind == "value_model":
        total = param_count(args, with_unembedding=False) + value_head_params(spec.head, args.dim)
    else:
        total = param_count(args)
    lora = lora_params(spec.lora, args) if spec.lora is not None else 0
    trainable = (lora if spec.lora is not None else total) if trained else 0
    if spec.kind == "value_model" and spec.lora is not None and trained:
        trainable += value_head_params(spec.head, args.dim)
    return ModelCount(role, total + lora, trainable, args)


def _model_sizes(spec: Any, vocab: int) -> ModelArgs | None:
    """The recipe's sizes (flavour, explicit ones), else those its ``path`` describes (its
    ``params.json``, ``config.json`` or ``wmtp_model.json``, read without the weights), with the
    recipe's heads; ``None`` when neither is there."""
    from wmtp.errors import CheckpointError, RecipeError
    from wmtp.models.descriptions import described_args

    try:
        return spec.model_args(vocab)
    except RecipeError:  # sizes come from the checkpoint
        pass
    if not spec.path:
        return None
    try:
        args = described_args(Path(spec.path).expanduser(), spec.format)
    except CheckpointError:
        return None
    args = args.with_heads(getattr(spec, "n_future_tokens", None) or args.n_future_tokens)
    return args.with_vocab(vocab) if args.vocab_size == -1 else args


def _linear_shapes(args: ModelArgs) -> dict[str, tuple[int, int]]:
    """Each LoRA target's ``(in, out)`` features, from the block's weights (``layer_shapes``:
    ``attention.wq.weight`` of shape ``(out, in)`` is target ``wq``)."""
    return {
        name.split(".")[1]: (shape[1], shape[0])
        for name, shape in layer_shapes(args).items()
        if len(shape) == 2
    }


def lora_params(lora: Any, args: ModelArgs) -> int:
    """Adapter parameters: rank * (in + out) per targeted linear layer, in every layer."""
    shapes = _linear_shapes(args)
    per_layer = sum(lora.rank * sum(shapes[t]) for t in lora.targets)
    return args.n_layers * per_layer


def lora_mask_bytes(lora: Any, args: ModelArgs) -> int:
    """Bytes per token and layer of the adapters' dropout masks (M_layer): one per input
    element of each adapted linear; none without dropout."""
    if lora is None or lora.dropout == 0:
        return 0
    shapes = _linear_shapes(args)
    return sum(shapes[t][0] for t in lora.targets)


def value_head_params(head: Any, dim: int) -> int:
    """Weights and biases of a value head from ``dim`` to one value."""
    hidden = head.hidden_widths(dim) if head.kind == "mlp" else []
    widths = [dim, *hidden, 1]
    return sum(a * b + b for a, b in itertools.pairwise(widths))


def _memory(
    recipe: Any,
    trained: ModelCount,
    frozen: list[ModelCount],
    world: int,
    rows: int,
    row_length: int,
) -> Memory:
    spec = getattr(recipe.model, trained.role)
    args = trained.args
    assert args is not None
    b = DTYPE_BYTES[spec.dtype]
    sharding = recipe.parallel.sharding
    shards = 1 if sharding == "no_shard" else world
    p_t, p_f = trained.trainable, trained.total - trained.trainable
    states = 16 * p_t / shards
    if world > 1 and shards > 1 and recipe.training.grad_accum_steps > 1:
        # FSDP2 accumulates unsynchronised micro-batches in unsharded fp32 gradients; the sharded
        # gradients (set to None at every step) are not alive at the same time.
        states += 4 * p_t - 4 * p_t / shards
    frozen_weights = b * p_f / shards
    if sharding == "full_shard":
        gathered = b * 2 * layer_params(args)
    elif sharding == "shard_grad_op" or b != 4:
        gathered = b * (p_t + p_f)
    else:
        gathered = 0.0
    tokens = rows * row_length
    elements, saved_whole = _activation_elements(recipe, spec, args, row_length, world)
    masks = saved_whole * lora_mask_bytes(spec.lora, args)
    activations = tokens * (b * elements + masks)
    logits = _logits_bytes(recipe.training.mtp_loss, spec.kind, tokens, args, b)
    frozen_models = sum(
        DTYPE_BYTES[getattr(recipe.model, m.role).dtype] * m.total / shards for m in frozen
    )
    return Memory(states, frozen_weights, gathered, activations, logits, frozen_models)


def _memory_notes(recipe: Any, trained: ModelCount) -> list[str]:
    """Where the memory estimate is known to be a bound rather than a figure."""
    notes = []
    if recipe.training.mtp_loss == "joint" and getattr(recipe.model, trained.role).kind != (
        "value_model"
    ):
        notes.append("mtp_loss = joint: logits counted as if every token were a target (a bound)")
    if recipe.parallel.compile:
        notes.append("parallel.compile saves fewer activations than counted (a bound)")
    return notes


def _logits_bytes(mtp_loss: str, kind: str, tokens: int, args: ModelArgs, b: int) -> float:
    """Logits alive at the peak (see the module docstring); a value model has none."""
    if kind == "value_model" or mtp_loss == "chunked":
        return 0.0
    one_head = tokens * args.vocab_size * (b + 4)  # the logits and their fp32 upcast
    if mtp_loss == "per_head":
        return one_head
    # joint: every head's fp32 log-probabilities wait for the one backward, while the last head
    # also holds its transients. Every token counted as a target: an upper bound.
    return args.n_future_tokens * tokens * args.vocab_size * 4 + one_head


def _activation_elements(
    recipe: Any, spec: Any, args: ModelArgs, row_length: int, world: int = 1
) -> tuple[float, int]:
    """Saved activation elements per token of rows of ``row_length``, and how many layers save
    everything (the uncheckpointed ones, plus the one recomputed at a time; see the module
    docstring)."""
    per_layer = 6 * args.dim + 2 * args.kv_heads * args.head_dim + 4 * args.hidden_dim
    if spec.attention == "eager":
        per_layer += 2 * args.n_heads * row_length
    heads_one_at_a_time = recipe.training.mtp_loss == "per_head" and world == 1
    if spec.kind == "value_model" or not heads_one_at_a_time:
        layers = args.n_layers
    else:
        layers = args.n_trunk_layers + 1
    ac = recipe.parallel.activation_checkpointing
    every = 1 if ac is True else (0 if ac is False else int(ac))
    checkpointed = layers // every if every else 0
    whole = layers - checkpointed + (1 if checkpointed else 0)
    return checkpointed * args.dim + whole * per_layer, whole
