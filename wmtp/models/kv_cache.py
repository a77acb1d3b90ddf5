"""Inference with a key/value cache: prefill a prompt, then decode a few tokens at a time.

Kept apart from the training path: the model's modules are reused, but this file holds the
cached attention step. Every block the decoder runs (the trunk layers and each kept head's
layer) gets its own cache; a head's layer attends over its own keys of the trunk output, as in
the full forward. New queries are the last positions of the cached keys, so every backend's
bottom-right causal alignment applies (sdpa: no mask for one token; a small mask only for
multi-token chunks).

A ``Decoder`` keeps one position for all its rows (a prompt prefilled once). On a GPU,
``make_decoder`` returns a ``StaticDecoder``: its fixed-shape steps are compiled once (Inductor)
and replayed from CUDA graphs captured once per model and shape, then reused by every later
decoder of that shape. Its rows may each sit at their own position, held on the device
(``step_rows``): rows that advance by different numbers of tokens (batched speculative
decoding's) or that start at different times (continuous batching: ``load_rows`` copies a freshly
prefilled prompt into a freed row), with nothing read back to the host between steps.
Decoding loops chain their steps (``chain_rows``): each step's tail writes the tokens the next
step feeds and moves every row's position inside the step's own graph, so a decoding step is one
graph replay and one small read, with no eager kernel between replays.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import time
import weakref
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import NamedTuple

import torch
import torch.nn.functional as F

from wmtp.errors import RunError
from wmtp.models.fused_projections import (
    FusedBlock,
    StackedLayers,
    fused_bytes,
    fused_projections,
    stacked_layers,
)
from wmtp.models.llama_mtp import (
    LlamaMTP,
    Rope,
    TransformerBlock,
    apply_rope,
    rms_norm,
    rope_frequencies,
    rope_tables,
)
from wmtp.parallel.checkpointing import compile_failure

log = logging.getLogger(__name__)


class KVCache:
    """Keys and values of one block: ``[B, max_len, K, D]`` each, filled up to ``length``;
    ``fused``: the block's fused projections, where a ``StaticDecoder`` runs with them."""

    def __init__(self, batch: int, max_len: int, kv_heads: int, head_dim: int, *, dtype, device):
        shape = (batch, max_len, kv_heads, head_dim)
        self.k_BSKD = torch.zeros(shape, dtype=dtype, device=device)
        self.v_BSKD = torch.zeros(shape, dtype=dtype, device=device)
        self.fused: FusedBlock | None = None

    def rows(self, start: int, count: int) -> KVCache:
        """Rows ``start..start+count-1`` as a cache of their own, sharing this one's memory."""
        view = object.__new__(KVCache)
        view.k_BSKD = self.k_BSKD[start : start + count]
        view.v_BSKD = self.v_BSKD[start : start + count]
        view.fused = None
        return view

    def append(self, start: int, k_BSKD: torch.Tensor, v_BSKD: torch.Tensor):
        """Store new keys/values at ``start``; return every key/value up to them."""
        end = start + k_BSKD.shape[1]
        self.k_BSKD[:, start:end] = k_BSKD
        self.v_BSKD[:, start:end] = v_BSKD
        return self.k_BSKD[:, :end], self.v_BSKD[:, :end]


def cached_block(block: TransformerBlock, x_BSD, rope: Rope, cache: KVCache, start: int):
    """One block on new positions ``start..start+S-1``, attending to all cached ones (with
    ``cache.fused``: q/k/v and w1/w3 as one matmul each)."""
    attention = block.attention
    q_BSHD, k_BSKD, v_BSKD = _project_qkv(block, block.attention_norm(x_BSD), rope, cache.fused)
    k_all, v_all = cache.append(start, k_BSKD, v_BSKD)
    out_BSHD = attention.attend(q_BSHD, k_all, v_all, None)
    h_BSD = x_BSD + attention.wo(out_BSHD.flatten(2))  # [B, S, H, D] -> [B, S, H*D]
    return h_BSD + _feed_forward(block, block.ffn_norm(h_BSD), cache.fused)


def planless_attention(device: torch.device) -> contextlib.AbstractContextManager:
    """SDPA without its cuDNN kernel on a GPU (flash, then memory-efficient, then math).

    cuDNN attention builds an execution plan for every new pair of query/key lengths. Training
    meets a few shapes, decoding a new one at every token and every prompt: on the H100 eager
    decoding of a 0.9B model ran at 15 tokens/s with cuDNN re-planning each step, and at 79
    without cuDNN (bench/results/h100_decode.md). The other kernels need no plan.
    """
    if device.type != "cuda":
        return contextlib.nullcontext()
    from torch.nn.attention import SDPBackend, sdpa_kernel

    return sdpa_kernel(
        [SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH]
    )


class BlockCaches(NamedTuple):
    """The caches of the trunk layers (in order) and of each kept head's layer (head -> cache).
    Each kind's caches are consecutive rows of one, a decoder's batch each: ``trunk_stack``
    (layers in order; a row start copies a prompt into every layer at once) and ``head_stack``
    (kept heads in order, which ``stacked_block`` runs all of at once)."""

    trunk: list[KVCache]
    heads: dict[int, KVCache]
    head_stack: KVCache
    trunk_stack: KVCache


def block_caches(
    model: LlamaMTP, batch_size: int, length: int, kept_heads: Sequence[int]
) -> BlockCaches:
    """Empty caches of ``length`` positions for the trunk and the ``kept_heads``' layers only."""
    param = next(model.parameters())
    a = model.args

    def cache(rows: int) -> KVCache:
        shape = (rows, length, a.kv_heads, a.head_dim)
        return KVCache(*shape, dtype=param.dtype, device=param.device)

    stack = cache(batch_size * len(kept_heads))
    heads = {k: stack.rows(i * batch_size, batch_size) for i, k in enumerate(kept_heads)}
    layers = len(model.layers) - 1
    trunk_stack = cache(batch_size * layers)
    trunk = [trunk_stack.rows(i * batch_size, batch_size) for i in range(layers)]
    return BlockCaches(trunk, heads, stack, trunk_stack)


def on_device(values, device: torch.device) -> torch.Tensor:
    """``values`` (a list, or a CPU tensor) on ``device`` without waiting for the work queued
    there: on CUDA through pinned memory (a copy from pageable memory, as ``torch.tensor(...,
    device=...)`` and a Python scalar written through an index make, waits for every queued
    step first)."""
    host = torch.as_tensor(values)
    if device.type != "cuda":
        return host.to(device)
    return host.pin_memory().to(device, non_blocking=True)


def _last_index(tokens_BS: torch.Tensor) -> torch.Tensor:
    """``[S - 1]`` on the tokens' device, made there (no copy from the host)."""
    last = tokens_BS.shape[1] - 1
    return torch.full((1,), last, dtype=torch.long, device=tokens_BS.device)


class Decoder:
    """Incremental decoding of a LlamaMTP: ``prefill(prompt)``, then ``step(tokens)``.

    ``heads`` picks the heads whose logits are returned (default all: self-speculative decoding
    drafts with heads 2..n). ``kept_heads`` are the heads whose caches advance at every step (default
    all, so any head can be asked later); plain decoding keeps head 1 only and runs no other head's
    layer.
    """

    def __init__(
        self,
        model: LlamaMTP,
        batch_size: int,
        max_len: int,
        kept_heads: Sequence[int] | None = None,
    ):
        self.model = model
        self.max_len = max_len
        self.kept_heads = tuple(kept_heads or range(1, model.n_heads + 1))
        self.inv_freq_F = rope_frequencies(model.args, next(model.parameters()).device)
        caches = self._caches(batch_size)
        self.trunk_caches, self.head_caches = caches.trunk, caches.heads
        self.length = 0

    def _caches(self, batch_size: int) -> BlockCaches:
        return block_caches(self.model, batch_size, self.max_len, self.kept_heads)

    def caches(self) -> list[KVCache]:
        """Every block's cache: the trunk's in order, then each kept head's."""
        return [*self.trunk_caches, *(self.head_caches[k] for k in self.kept_heads)]

    @torch.no_grad()
    def prefill(
        self, tokens_BS: torch.Tensor, heads: list[int] | None = None, *, last: bool = False
    ) -> torch.Tensor:
        """Process a prompt (or continue after earlier tokens); logits ``[B, S, n, V]``, or at
        its last position only (``last``: ``[B, 1, n, V]``)."""
        at_1 = _last_index(tokens_BS) if last else None
        with planless_attention(tokens_BS.device):
            return self._advance(tokens_BS, heads, at_1)

    @torch.no_grad()
    def step(self, tokens_BS: torch.Tensor, heads: list[int] | None = None) -> torch.Tensor:
        """Append ``tokens_BS`` (usually one per row) and return their logits ``[B, S, n, V]``."""
        with planless_attention(tokens_BS.device):
            return self._advance(tokens_BS, heads)

    def rewind(self, length: int) -> None:
        """Forget every position from ``length`` on (rejected speculative tokens)."""
        assert 0 <= length <= self.length, f"rewind to {length}, cache holds {self.length}"
        self.length = length

    def _advance(
        self, tokens_BS: torch.Tensor, heads: list[int] | None, at_1: torch.Tensor | None = None
    ) -> torch.Tensor:
        start = self._check_room(tokens_BS.shape[1], heads)
        logits = self._forward(tokens_BS, heads, start, at_1)
        self.length = start + tokens_BS.shape[1]
        return logits

    def _forward(
        self,
        tokens_BS: torch.Tensor,
        heads: Sequence[int] | None,
        start: int,
        at_1: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """The blocks over new positions ``start..`` (``cached_block``): logits ``[B, S, n, V]``,
        or at position ``at_1`` only (``[B, 1, n, V]``: one position unembedded, not S)."""
        B, S = tokens_BS.shape
        positions_BS = torch.arange(start, start + S, device=tokens_BS.device).expand(B, S)
        rope = rope_tables(self.inv_freq_F, positions_BS)
        return self._run_blocks(
            tokens_BS,
            heads,
            lambda block, x, cache: cached_block(block, x, rope, cache, start),
            at_1,
        )

    def _check_room(self, S: int, heads: Sequence[int] | None, start: int | None = None) -> int:
        """The start position of ``S`` new tokens (``length`` unless given), after checking the
        heads and the cache's room."""
        if heads is not None:
            assert set(heads) <= set(self.kept_heads), (
                f"heads {heads}: this decoder keeps {self.kept_heads}"
            )
        start = self.length if start is None else start
        if start + S > self.max_len:
            raise RunError(
                f"decoding to position {start + S} exceeds the cache length {self.max_len}"
            )
        return start

    def _run_blocks(
        self,
        tokens_BS: torch.Tensor,
        heads: Sequence[int] | None,
        run_block: BlockStep,
        at_1: torch.Tensor | None = None,
        run_heads: Callable[[torch.Tensor], torch.Tensor] | None = None,
    ) -> torch.Tensor:
        """Embed, run the trunk and every kept head's layer through ``run_block`` (or the heads'
        layers at once through ``run_heads``: trunk output -> ``[n_kept, B, S, D]``); the
        logits of ``heads`` (default: the kept ones) as ``[B, S, n, V]``, or at position
        ``at_1`` only. The heads' hidden states share one final norm and one unembedding matmul
        (not one per head)."""
        model = self.model
        h_BSD = model.tok_embeddings(tokens_BS)
        for layer, cache in zip(model.layers[:-1], self.trunk_caches, strict=True):
            h_BSD = run_block(layer, h_BSD, cache)
        # every kept head's cache advances, asked for or not
        if run_heads is not None:
            hidden = dict(zip(self.kept_heads, run_heads(h_BSD).unbind(0), strict=True))
        else:
            hidden = {
                k: run_block(model.head_layer(k), h_BSD, self.head_caches[k])
                for k in self.kept_heads
            }
        ks = heads if heads is not None else self.kept_heads
        hidden_BSnD = torch.stack([hidden[k] for k in ks], dim=2)  # n x [B, S, D] -> [B, S, n, D]
        if at_1 is not None:
            hidden_BSnD = hidden_BSnD.index_select(1, at_1)
        return model.output(model.norm(hidden_BSnD))


BlockStep = Callable[[TransformerBlock, torch.Tensor, KVCache], torch.Tensor]
"""One block on the new positions: ``(block, x_BSD, cache) -> x_BSD``."""


KV_BLOCK = 128
"""Cached positions per block of the compiled step's attention; cache lengths are multiples."""

PREFILL_MULTIPLE = 64
"""A ``StaticDecoder``'s prompt forward pads the prompt to a multiple of this many tokens: one
captured prefill per padded length."""

RowAttention = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]
"""``(q_BHSD, k_BKLD, v_BKLD) -> out_BHSD``: the new queries over the whole cache, each row
seeing its own positions up to each query's."""


def row_attention(
    starts_B: torch.Tensor, S: int, keys_L: torch.Tensor, *, skip_blocks: bool
) -> RowAttention:
    """The attention of a fixed-shape step whose row b's ``S`` queries sit at positions
    ``starts_B[b]`` on (a device tensor) in a cache of ``len(keys_L)`` positions: causal per
    row, every position past a query's masked (not yet, or no longer, filled).

    ``skip_blocks``: FlexAttention with a block mask built on the device, so each row reads only
    its ``KV_BLOCK``-position blocks up to its last query. A batch of rows far apart (continuous
    batching, whose cache spans the longest prompt) then reads what its rows hold, not the
    whole cache of every row. For compiled steps on a GPU (one fused kernel there; run eagerly
    it computes every score). Otherwise sdpa with a boolean mask over every cached position."""
    if not skip_blocks:
        positions_BS = starts_B[:, None] + torch.arange(S, device=starts_B.device)
        mask_B1SL = (keys_L <= positions_BS[:, :, None])[:, None]  # every head of a row alike
        return lambda q, k, v: F.scaled_dot_product_attention(
            q, k, v, attn_mask=mask_B1SL, enable_gqa=True
        )
    from torch.nn.attention.flex_attention import BlockMask, flex_attention

    B, L = len(starts_B), len(keys_L)
    assert L % KV_BLOCK == 0, (L, KV_BLOCK)
    last_block_B = ((starts_B + S - 1) // KV_BLOCK).clamp(max=L // KV_BLOCK - 1)
    order = torch.arange(L // KV_BLOCK, dtype=torch.int32, device=starts_B.device)
    mask = BlockMask.from_kv_blocks(
        (last_block_B + 1).to(torch.int32)[:, None, None], order.expand(B, 1, 1, -1),
        BLOCK_SIZE=KV_BLOCK, seq_lengths=(S, L), compute_q_blocks=False,
        mask_mod=lambda b, h, q, kv: kv <= starts_B[b] + q,  # reads the input buffer only
    )  # fmt: skip
    processors = 0  # FlexAttention's decoding kernel (under 128 queries, on a GPU) is split
    if starts_B.is_cuda and S < 128:
        processors = torch.cuda.get_device_properties(starts_B.device).multi_processor_count

    def attend(q, k, v):
        options = None
        if processors:
            options = {"SPLIT_KV": kv_splits(k.shape[0] * k.shape[1], processors)}
        return flex_attention(q, k, v, block_mask=mask, enable_gqa=True, kernel_options=options)

    return attend


def kv_splits(row_heads: int, processors: int) -> int:
    """How many parts FlexAttention's decoding kernel splits each row's keys of each key head
    into (its ``SPLIT_KV``): enough for two programs per multiprocessor. torch's own choice
    (2.11) is ``processors // row_heads * 2``, which falls to one part, a program per row and
    head, once the rows' heads outnumber the multiprocessors: at 20 rows x 8 key heads on an
    H200's 132, 1.2 waves of programs that each walk the whole context alone (batch-20 sampled
    decoding of ``llama-1b-bench``: 15,909 tokens/s; two parts: 17,319; one H200, 2026-12-04)."""
    return max(1, -(-2 * processors // row_heads))


def masked_block(
    block: TransformerBlock, x_BSD, rope: Rope, cache: KVCache, positions_BS, attend: RowAttention
):
    """``cached_block`` with fixed shapes: each row's keys written at its ``positions_BS`` (a
    device tensor), and attention over the cache by ``attend`` (``row_attention``). Nothing
    depends on a position on the host, so a CUDA graph can replay it. With ``cache.fused``,
    q/k/v and w1/w3 run as one matmul each."""
    attention = block.attention
    q_BSHD, k_BSKD, v_BSKD = _project_qkv(block, block.attention_norm(x_BSD), rope, cache.fused)
    rows_B1 = torch.arange(len(positions_BS), device=positions_BS.device)[:, None]
    cache.k_BSKD[rows_B1, positions_BS] = k_BSKD  # index_put_: Inductor writes it in place
    cache.v_BSKD[rows_B1, positions_BS] = v_BSKD
    q, k, v = (t.transpose(1, 2) for t in (q_BSHD, cache.k_BSKD, cache.v_BSKD))  # -> [B, H, S, D]
    out_BHSD = attend(q, k, v)
    h_BSD = x_BSD + attention.wo(out_BHSD.transpose(1, 2).flatten(2))
    return h_BSD + _feed_forward(block, block.ffn_norm(h_BSD), cache.fused)


def stacked_block(
    layers: StackedLayers, x_BSD, rope: Rope, cache: KVCache, positions_BS, attend: RowAttention
) -> torch.Tensor:
    """``masked_block`` of n layers on one input at once (a self-speculative step's head
    layers, all reading the trunk's output): ``[n, B, S, D]``. Row block i of ``cache`` (``n
    B`` rows) is layer i's; ``rope`` and ``attend`` are the ``B`` rows' (``positions_BS``).
    Each projection is one batched matmul over the stacked weights."""
    n, (B, S, D) = layers.n, x_BSD.shape
    H, K = layers.q_size // cache.k_BSKD.shape[-1], layers.kv_size // cache.k_BSKD.shape[-1]
    x_nBSD = x_BSD.expand(n, B, S, D)

    def linear(x_nBSI: torch.Tensor, w_nOI: torch.Tensor) -> torch.Tensor:  # [n, B, S, O]
        return torch.bmm(x_nBSI.reshape(n, B * S, -1), w_nOI.transpose(1, 2)).view(n, B, S, -1)

    normed = rms_norm(x_nBSD, layers.attention_norm[:, None, None], layers.eps)
    sizes = (layers.q_size, layers.kv_size, layers.kv_size)
    q, k, v = linear(normed, layers.wqkv).flatten(0, 1).split(sizes, dim=-1)  # [nB, S, .]
    rope_n = tuple(t.repeat(n, 1, 1) for t in rope)
    q_BSHD, k_BSKD = (
        apply_rope(q.unflatten(-1, (H, -1)), rope_n),
        apply_rope(k.unflatten(-1, (K, -1)), rope_n),
    )
    rows_B1 = torch.arange(n * B, device=positions_BS.device)[:, None]
    positions_nBS = positions_BS.repeat(n, 1)
    cache.k_BSKD[rows_B1, positions_nBS] = k_BSKD
    cache.v_BSKD[rows_B1, positions_nBS] = v.unflatten(-1, (K, -1))
    q, k, v = (t.transpose(1, 2) for t in (q_BSHD, cache.k_BSKD, cache.v_BSKD))
    out_nBSQ = attend(q, k, v).transpose(1, 2).flatten(2).view(n, B, S, -1)
    h_nBSD = x_nBSD + linear(out_nBSQ, layers.wo)
    gate, up = linear(
        rms_norm(h_nBSD, layers.ffn_norm[:, None, None], layers.eps), layers.w13
    ).split(layers.hidden, dim=-1)
    return h_nBSD + linear(F.silu(gate) * up, layers.w2)


def _project_qkv(block: TransformerBlock, x_BSD, rope: Rope, fused: FusedBlock | None):
    """``Attention.project_qkv``, from one matmul with ``fused``."""
    attention = block.attention
    if fused is None:
        return attention.project_qkv(x_BSD, rope)
    B, S, _ = x_BSD.shape
    sizes = (fused.q_size, fused.kv_size, fused.kv_size)
    q, k, v = F.linear(x_BSD, fused.wqkv).split(sizes, dim=-1)
    q_BSHD = q.view(B, S, attention.n_heads, attention.head_dim)
    k_BSKD = k.view(B, S, attention.n_kv_heads, attention.head_dim)
    v_BSKD = v.view(B, S, attention.n_kv_heads, attention.head_dim)
    return apply_rope(q_BSHD, rope), apply_rope(k_BSKD, rope), v_BSKD


def _feed_forward(block: TransformerBlock, x_BSD, fused: FusedBlock | None):
    """``FeedForward``, w1 and w3 from one matmul with ``fused``."""
    if fused is None:
        return block.feed_forward(x_BSD)
    gate, up = F.linear(x_BSD, fused.w13).split(fused.hidden, dim=-1)
    return block.feed_forward.w2(F.silu(gate) * up)


StepTail = Callable[..., "Chained"]
"""What a chained step (``StaticDecoder.chain_rows``) computes from its logits, in the same
compiled code and CUDA graph: ``tail(tokens_BS, logits_BSnV, room_B, *inputs)`` -> ``Chained``
(the next tokens, a speculative verification), so that choosing tokens and moving the rows add
no eager kernels and no host launches after the step. A frozen dataclass (or a module-level
function): its value keys the step's compiled variant and graph. It must not read the host: it
is captured."""


class Chained(NamedTuple):
    """What the tail of a chained step (``StaticDecoder.chain_rows``) returns: the tokens the next
    step feeds (``[B, S]``, this step's shape), how far each row's position moves (``[B]``; the
    rows' budgets, ``StaticDecoder.room``, fall by as much) and the outputs the caller reads."""

    fed_BS: torch.Tensor
    advance_B: torch.Tensor
    outputs: tuple[torch.Tensor, ...]


_EAGER_TAILS: set = set()
"""Tails this torch failed to compile into a step: they run eagerly after it (said once)."""


@dataclass(frozen=True)
class _Step:
    """What a fixed-shape step runs besides its length: the heads whose logits it makes, its
    tail (a chained step's, ``chain_rows``; or none: the logits) and whether it is compiled.
    With the length, a step's key."""

    heads: tuple[int, ...]
    tail: StepTail | None = None
    compiled: bool = False
    prompt: bool = False
    """A prompt's forward from position 0 (``StaticDecoder.prefill``): causal over its own keys,
    uncompiled; its one input, the position whose logits it keeps (if any)."""


@dataclass
class _Captured:
    """One captured step: its graph, the tensors it reads (the tokens, the tail's inputs) and
    what it writes (the logits, or the tail's outputs)."""

    graph: torch.cuda.CUDAGraph
    tokens_BS: torch.Tensor
    inputs: tuple[torch.Tensor, ...]
    outputs: torch.Tensor | tuple[torch.Tensor, ...]


@dataclass
class StepState:
    """What the fixed-shape steps of one model read and write, for one batch size, cache length,
    set of kept heads and kind of step: the caches, each row's start position (a ``[B]`` device
    tensor), the RoPE frequencies, and the steps prepared so far (``(S, _Step)`` -> its CUDA
    graph, or None uncaptured). Kept per model and reused by every ``StaticDecoder`` of that
    shape, so a graph is captured once and replayed for every later prompt and call. A graph
    holds the addresses of every tensor its step read: each of them must be the state's or the
    model's, never a decoder's own (freed with the decoder, its memory reused). One decoder uses
    the state at a time: the newest one to claim it."""

    caches: BlockCaches
    start: torch.Tensor
    room: torch.Tensor
    """Each row's budget ``[B]`` for chained steps: how many more tokens it may commit (0 once
    it has ended); the host sets it, every chained step lowers it by what its rows advance."""
    keys_L: torch.Tensor
    inv_freq_F: torch.Tensor
    pool: tuple | None
    prepared: dict[tuple[int, _Step], _Captured | None] = field(default_factory=dict)
    fed: dict[int, torch.Tensor] = field(default_factory=dict)
    """S -> the tokens the next chained S-token step feeds (``[B, S]``): its graph's input."""
    setup_s: float = 0.0
    """Seconds spent preparing steps (compiling, warming up, capturing), outside their timing."""
    owner: weakref.ref | None = None
    skip_blocks: bool = False
    """Whether compiled steps attend block by block (``row_attention``): on a GPU, until this
    torch fails to compile that kernel for one of the state's steps. Not on a CPU: Inductor's CPU
    kernel takes few of the steps' shapes, and the caches there are short."""
    pdl: bool = False
    """Whether the compiled steps launch early (:func:`launches_early`: on a GPU, a small model)."""


_STATES: weakref.WeakKeyDictionary[LlamaMTP, dict[tuple, StepState]] = weakref.WeakKeyDictionary()
"""Each model's step states, by (batch, cache length, kept heads, graphs, compiled, fused, dtype,
device); they live as long as the model."""


def cache_length(max_len: int, max_seq_len: int) -> int:
    """The cache length of a step state: ``max_len`` rounded up to a power of two (at least 256,
    at most the model's ``max_seq_len`` unless ``max_len`` is longer), in whole ``KV_BLOCK``s.
    Prompts of nearby lengths then share one state, its compiled steps and graphs. An eager step
    reads every cached position, masked or not: at most twice ``max_len`` (or 256); a compiled
    step only each row's blocks up to its position (``row_attention``)."""
    bucket = 1 << (max(max_len, 256) - 1).bit_length()
    return _blocks_of(max(max_len, min(bucket, max_seq_len)))


def _blocks_of(length: int) -> int:
    """``length`` rounded up to whole ``KV_BLOCK``s."""
    return -(-length // KV_BLOCK) * KV_BLOCK


def step_state(model: LlamaMTP, batch_size: int, max_len: int, kept_heads: tuple[int, ...],
               kind: tuple[bool, bool, bool]) -> StepState:  # fmt: skip
    """The model's state for this shape and ``kind`` (``(cuda_graphs, compiled, fused)``), made
    on first use."""
    param = next(model.parameters())
    length = cache_length(max_len, model.args.max_seq_len)
    key = (batch_size, length, kept_heads, *kind, param.dtype, param.device)
    states = _STATES.setdefault(model, {})
    if key not in states:
        states[key] = _new_state(model, batch_size, length, kept_heads, cuda_graphs=kind[0])
    return states[key]


@torch.inference_mode(False)
def _new_state(model: LlamaMTP, batch_size: int, length: int, kept_heads: tuple[int, ...],
               *, cuda_graphs: bool) -> StepState:  # fmt: skip
    """Empty caches and positions: ordinary tensors even when made under inference mode
    (``generate``), so that a later decoder outside it may still write them."""
    device = next(model.parameters()).device
    pool = None
    if cuda_graphs:
        with torch.cuda.device(device):  # the model's GPU, not the current one
            pool = torch.cuda.graph_pool_handle()
    return StepState(
        caches=block_caches(model, batch_size, length, kept_heads),
        start=torch.zeros(batch_size, dtype=torch.long, device=device),
        room=torch.zeros(batch_size, dtype=torch.long, device=device),
        keys_L=torch.arange(length, device=device),
        inv_freq_F=rope_frequencies(model.args, device),
        pool=pool,
        skip_blocks=device.type == "cuda",
        pdl=device.type == "cuda" and launches_early(model),
    )


def setup_figures(model: LlamaMTP) -> dict[str, float | int]:
    """What fixed-shape decoding of ``model`` has prepared: step states, step shapes prepared
    (compiled and/or captured), the seconds spent preparing them, and the memory of its fused
    projections (0 where there are none) and how many head layers of it are stacked into one
    batched block (``stacked_block``)."""
    states = list(_STATES.get(model, {}).values())
    return {
        "step_states": len(states),
        "prepared_steps": sum(len(s.prepared) for s in states),
        "setup_s": round(sum(s.setup_s for s in states), 3),
        "fused_projections_gib": round(fused_bytes(model) / 2**30, 3),
        "stacked_head_layers": stacked_layers(model),
    }


_RECOMPILE_LIMIT = 64
"""Compiled variants of the one step function: one per (batch, cache length, S, heads).
Dynamo's default limit (8) would fall back to eager steps after a few shapes."""


def move_rows(
    fed_BS: torch.Tensor,
    start_B: torch.Tensor,
    room_B: torch.Tensor,
    next_BS: torch.Tensor,
    advance_B: torch.Tensor,
    last: int,
) -> None:
    """Rows after a chained step, in place: the next tokens fed, each position moved by its
    advance (at most to ``last``), each budget lowered by as much."""
    fed_BS.copy_(next_BS)
    start_B.add_(advance_B).clamp_(max=last)
    room_B.sub_(advance_B)


PDL_MAX_MODEL_BYTES = 4 * 10**9
"""Decoding steps of a model whose weights take at most this many bytes are compiled with
programmatic dependent launch (Inductor's ``triton.enable_pdl``, Hopper and later; Inductor
leaves it out on older GPUs and the CPU): each generated kernel starts while the previous one
drains and waits on the device only before its first dependent read. A small model's step is a
chain of short kernels whose launch gaps it hides: `llama-1b-bench` (1.8 GB with its four heads)
plain greedy 1,074 -> 1,101 tokens/s, +2.5%, and its verify step +3%. A large model's step is
its matrix products reading the weights, which the early-started kernels slow: `llama2-7b-mtp`
(13.5 GB) plain 191.6 -> 187.2 tokens/s, -2.3%, its verify step unchanged (each the mean of two
processes, alternating with the code without it; one H100, torch 2.11, 2026-12-07:
bench/results/h100_decode_pdl_20261207/). Where between the two it stops paying is not
measured. Training steps gained nothing from it (h100_full1b_inductor_options_20261207/)."""


def launches_early(model: torch.nn.Module) -> bool:
    """Whether ``model``'s decoding steps are compiled with programmatic dependent launch
    (:data:`PDL_MAX_MODEL_BYTES`)."""
    size = sum(p.numel() * p.element_size() for p in model.parameters())
    return size <= PDL_MAX_MODEL_BYTES


@functools.cache
def _compiled_move_rows(pdl: bool) -> Callable[..., None]:
    """``move_rows`` compiled (fewer kernels than four), made once per process and ``pdl``
    (programmatic dependent launch: :func:`launches_early`)."""
    options = {"triton.enable_pdl": pdl}
    return torch.compile(move_rows, fullgraph=True, dynamic=False, options=options)


@functools.cache
def _compiled_static_step(pdl: bool) -> Callable[..., torch.Tensor]:
    """``StaticDecoder._static_step`` compiled by Inductor (whole graph, static shapes), made
    once per process and ``pdl`` (programmatic dependent launch: :func:`launches_early`): a new
    decoder with a known shape finds its compiled variant.

    Matrix products stay cuBLAS calls, batch 1 included. Inductor's coordinate-descent tuning
    turns a one-row product into a reduction it generates and tunes; batch-1 decoding of
    ``llama-1b-bench`` ran at 1,070 to 1,342 tokens/s with it, depending on the compilation
    (the tuning times candidates, and each compilation fused and tuned the step's kernels
    anew), against a steady ~1,200 with cuBLAS; ``llama2-7b-mtp`` gained nothing (one H200,
    torch 2.11, 2026-12-04: ``bench/results/h200_decode.md``, eleventh session)."""
    options = {"triton.enable_pdl": pdl}
    return torch.compile(StaticDecoder._static_step, fullgraph=True, dynamic=False, options=options)


class StaticDecoder(Decoder):
    """A ``Decoder`` whose steps have fixed shapes: compiled, and replayed from CUDA graphs.

    Batch-1 decoding is launch-bound: a plain eager step of a 0.9B model is ~690 small kernels,
    1.75 ms of GPU time but 12.6 ms of host time on the H100 (bench/results/h100_decode.md).
    Here a step of ``S`` tokens attends over the whole cache with a mask of the filled positions
    and writes its keys at positions held in a device tensor, so its shapes never change.
    ``compiled``: the step is compiled by Inductor (its elementwise work fused into few kernels).
    ``cuda_graphs`` (on a GPU): each ``(S, heads)`` is captured once as a CUDA graph, its
    compiled kernels included, and every later step is one replay. Compiled code is made at a
    step's first use and graphs captured there (``StepState``): every later decoder of the same
    model and shape reuses them, so warming up once keeps compilation and capture out of timed
    regions (``setup_figures`` says what it cost). ``prefill`` runs a prompt padded to a
    multiple of ``PREFILL_MULTIPLE`` tokens, causal over its own keys, captured but never
    compiled (prompts come in many lengths: each would compile anew, where capturing costs one
    eager run); ``rewind`` works as before (the mask hides what lies past ``length``).
    ``step_rows`` puts each row at its own position (held on the device), in the same shapes;
    ``chain_rows`` chains such steps, each one's tail feeding the next and moving the rows.
    ``fused``: q/k/v and w1/w3 as one matmul each, from the model's fused copy of those weights
    (``wmtp.models.fused_projections``; ``None``: on a GPU where the copy fits, ``True``: on a CPU
    too). Neither graphs nor compilation (or a CPU model without ``compiled``) runs the same
    fixed-shape step eagerly: the reference the tests hold it to.

    Capture is manual rather than ``torch.compile(mode="reduce-overhead")``: the caches are
    written in place at every step, and reduce-overhead's graphs would copy mutated inputs that
    are not static (the whole cache) or skip the graph; here the graph owns the caches.
    """

    def __init__(self, model: LlamaMTP, batch_size: int, max_len: int,
                 kept_heads: Sequence[int] | None = None, *, cuda_graphs: bool = True,
                 compiled: bool = False, fused: bool | None = None,
                 prefix: bool = False):  # fmt: skip
        self.cuda_graphs = cuda_graphs and next(model.parameters()).device.type == "cuda"
        self.compiled = compiled
        self.prefix = prefix
        """A decoder that only forwards prompts, to be copied into another's rows (``load_rows``):
        its own step state, so it never takes over the caches of a decoder of the same shape."""
        self._fused = None if fused is False else fused_projections(model, force=bool(fused))
        super().__init__(model, batch_size, max_len, kept_heads)
        self._stacked = self._stacked_heads()
        self.inv_freq_F = self._state.inv_freq_F  # a graph reads the state's tensors only
        self._state.owner = weakref.ref(self)

    @property
    def fused(self) -> bool:
        """Whether the steps run the fused projections."""
        return self._fused is not None

    def _stacked_heads(self) -> StackedLayers | None:
        """The kept heads' layers stacked (``stacked_block``), with the fused projections and
        two or more heads kept; ``None`` where they cannot be stacked (``stackable``)."""
        if self._fused is None or len(self.kept_heads) < 2:
            return None
        return self._fused.stacked(tuple(self.model.head_layer(k) for k in self.kept_heads))

    def _caches(self, batch_size: int) -> BlockCaches:
        kind = (self.cuda_graphs, self.compiled, self.fused, self.prefix)
        self._state = step_state(self.model, batch_size, self.max_len, self.kept_heads, kind)
        trunk, heads = self._state.caches.trunk, self._state.caches.heads
        if self._fused is not None:
            for block, cache in zip(self.model.layers[:-1], trunk, strict=True):
                cache.fused = self._fused.of(block)
            for k, cache in heads.items():
                cache.fused = self._fused.of(self.model.head_layer(k))
        return self._state.caches

    def _advance(
        self, tokens_BS: torch.Tensor, heads: list[int] | None, at_1: torch.Tensor | None = None
    ) -> torch.Tensor:
        self._check_owner()
        return super()._advance(tokens_BS, heads, at_1)

    @torch.no_grad()
    def prefill(
        self, tokens_BS: torch.Tensor, heads: list[int] | None = None, *, last: bool = False
    ) -> torch.Tensor:
        """``Decoder.prefill``; a prompt from position 0 as one step over the prompt padded to a
        multiple of ``PREFILL_MULTIPLE`` tokens (the padding's keys land past ``length``, where
        the mask hides them until later steps write there): the model's causal attention over
        the prompt's own keys (flash on a GPU; not a mask over the whole cache), captured once
        per padded length, never compiled. ``last``: only the last position goes through the
        final norm and the unembedding. A prompt that continues earlier tokens, or whose
        padding would not fit the cache, runs eagerly.

        Not compiled: compiling it once with a dynamic length (tried) made the GPU decoding
        tests, a model each, run past 240 s where they took 90: a compilation per model and
        set of heads that costs more than an evaluation's 164 prompt forwards could save (the
        first token came 5 ms after a 256-token prompt on the H200, 10.6 ms after 650, with
        the whole-cache mask this step no longer has)."""
        S = tokens_BS.shape[1]
        start = self._check_room(S, heads)
        padded = -(-S // PREFILL_MULTIPLE) * PREFILL_MULTIPLE
        if start > 0 or padded > len(self._state.keys_L):
            return super().prefill(tokens_BS, heads, last=last)
        self._check_owner()
        padded_BS = F.pad(tokens_BS, (0, padded - S))
        at_1 = (_last_index(tokens_BS),) if last else ()
        kept = tuple(heads) if heads is not None else self.kept_heads
        step = _Step(kept, prompt=True)
        with planless_attention(tokens_BS.device):
            logits = self._replay(padded_BS, step, at_1)
        self.length = S
        return logits if last else logits[:, :S]

    @torch.no_grad()
    def step(self, tokens_BS: torch.Tensor, heads: list[int] | None = None) -> torch.Tensor:
        """``Decoder.step``: every row's tokens at ``length`` on (rows apart: ``step_rows``)."""
        start = self._check_room(tokens_BS.shape[1], heads)
        self._check_owner()
        self._state.start.fill_(start)
        logits_BSnV = self._replay(tokens_BS, self._step_of(heads))
        self.length = start + tokens_BS.shape[1]
        return logits_BSnV

    @property
    def positions(self) -> torch.Tensor:
        """Each row's next position, ``[B]`` on the device: where ``step_rows`` writes."""
        return self._state.start

    @torch.no_grad()
    def step_rows(self, tokens_BS: torch.Tensor, heads: list[int] | None = None) -> torch.Tensor:
        """``step`` with row b's tokens at ``positions[b]`` on, as the device holds them: no
        value from the host, no read; the logits. The caller advances ``positions`` and keeps
        every row's ``positions + S`` within ``max_len``; ``length`` is left alone. Decoding
        loops chain these steps instead (``chain_rows``), the tail choosing tokens and moving
        the rows inside the step."""
        self._check_owner()
        self._check_room(tokens_BS.shape[1], heads, start=0)
        return self._replay(tokens_BS, self._step_of(heads))

    @property
    def room(self) -> torch.Tensor:
        """Each row's budget ``[B]`` on the device (``StepState.room``), for chained steps' tails."""
        return self._state.room

    @torch.inference_mode(False)
    def fed(self, S: int) -> torch.Tensor:
        """The tokens the next chained ``S``-token step feeds, ``[B, S]`` on the device: write a
        row's first tokens into it; each chained step's tail writes the next ones. The state's
        own tensor (a graph reads it), kept per ``S``; an ordinary tensor even under inference
        mode, like the caches."""
        state = self._state
        if S not in state.fed:
            state.fed[S] = torch.zeros((len(state.start), S), dtype=torch.long,
                                       device=state.start.device)  # fmt: skip
        return state.fed[S]

    @torch.no_grad()
    def chain_rows(
        self,
        S: int,
        heads: list[int] | None = None,
        *,
        tail: StepTail,
        inputs: tuple[torch.Tensor, ...] = (),
    ) -> tuple[torch.Tensor, ...]:
        """The next step of a decoding loop: ``step_rows`` of the ``fed(S)`` tokens whose tail,
        ``tail(tokens_BS, logits_BSnV, room_B, *inputs)``, returns ``Chained``; inside the
        step's graph (``_move_rows``) the next tokens go into ``fed(S)``, each row's
        position moves by its advance (at most to the cache's last ``S`` positions: an ended
        row stays in the cache) and its budget (``room``) falls by as much. Nothing runs
        between two replays but what the caller adds. Returns the tail's outputs: the step's
        own buffers, overwritten by the next step: read them at once (``TokenReader``)."""
        self._check_owner()
        self._check_room(S, heads, start=0)
        return self._replay(self.fed(S), self._step_of(heads, tail), inputs)

    def load_rows(self, rows_G: torch.Tensor, prefix: StaticDecoder) -> None:
        """Rows ``rows_G`` (a device tensor of row indices) take their caches from the first
        ``prefix.length`` positions of ``prefix``'s only row (a prompt's forward, made once and
        copied into each row that continues it): one copy per stacked cache tensor (the
        trunk's keys and values, the heads'), every layer and row at once. Later positions keep
        what they held: the causal mask hides them until a step writes them."""
        self._check_owner()
        assert isinstance(prefix, StaticDecoder), type(prefix)
        assert prefix.kept_heads == self.kept_heads, (prefix.kept_heads, self.kept_heads)
        n, mine, theirs = prefix.length, self._state.caches, prefix._state.caches
        assert len(theirs.head_stack.k_BSKD) == len(self.kept_heads), "a one-row prefix"
        for to, source in (
            (mine.trunk_stack, theirs.trunk_stack),
            (mine.head_stack, theirs.head_stack),
        ):
            layers = len(source.k_BSKD)  # the prefix's one row of each layer
            for to_NSKD, source_NSKD in ((to.k_BSKD, source.k_BSKD), (to.v_BSKD, source.v_BSKD)):
                if layers:  # [layers, B, S, K, D], rows_G of every layer
                    to_NSKD.unflatten(0, (layers, -1))[:, rows_G, :n] = source_NSKD[:, None, :n]

    def _step_of(self, heads: list[int] | None, tail: StepTail | None = None) -> _Step:
        """The decoding step that makes ``heads``' logits (default: the kept heads'), or the
        chained step of ``tail`` (``chain_rows``)."""
        kept = tuple(heads) if heads is not None else self.kept_heads
        return _Step(kept, tail, self.compiled)

    def _replay(self, tokens_BS: torch.Tensor, step: _Step, inputs: tuple[torch.Tensor, ...] = ()):
        """``step`` at ``tokens_BS``' length: its graph replayed (captured at its first use), or
        run."""
        state = self._state
        key = (tokens_BS.shape[1], step)
        if key not in state.prepared:
            state.prepared[key] = self._prepare(tokens_BS, step, inputs)
        captured = state.prepared[key]
        if captured is None:
            return self._run_step(tokens_BS, step, inputs)
        if step.tail is None:  # a chained step's tokens are its graph's own input
            captured.tokens_BS.copy_(tokens_BS)
        for static, given in zip(captured.inputs, inputs, strict=True):
            static.copy_(given)
        captured.graph.replay()
        if step.tail is not None:  # read at once (chain_rows)
            return captured.outputs
        return _cloned(captured.outputs)  # the next replay overwrites them

    def _check_owner(self) -> None:
        owner = self._state.owner
        assert owner is not None and owner() is self, (
            "a newer decoder of this model and shape took over the caches: decode one at a time"
        )

    def _static_step(
        self,
        tokens_BS: torch.Tensor,
        heads: tuple[int, ...],
        tail: StepTail | None,
        skip_blocks: bool,
        *inputs,
    ):
        """The step at each row's position ``start`` (a device tensor): fixed shapes throughout;
        its logits, or its tail's ``Chained`` (``chain_rows``). ``skip_blocks``:
        ``row_attention``'s."""
        S = tokens_BS.shape[1]
        starts_B, keys_L = self._state.start, self._state.keys_L
        positions_BS = starts_B[:, None] + torch.arange(S, device=tokens_BS.device)
        rope = rope_tables(self._state.inv_freq_F, positions_BS)
        attend = row_attention(starts_B, S, keys_L, skip_blocks=skip_blocks)
        run_heads = None
        if self._stacked is not None:
            n = self._stacked.n
            attend_n = row_attention(starts_B.repeat(n), S, keys_L, skip_blocks=skip_blocks)
            stack = self._state.caches.head_stack
            run_heads = functools.partial(
                stacked_block, self._stacked, rope=rope, cache=stack, positions_BS=positions_BS,
                attend=attend_n,
            )  # fmt: skip
        logits_BSnV = self._run_blocks(
            tokens_BS,
            heads,
            lambda block, x, cache: masked_block(block, x, rope, cache, positions_BS, attend),
            run_heads=run_heads,
        )
        return logits_BSnV if tail is None else tail(tokens_BS, logits_BSnV, self.room, *inputs)

    def _run_step(self, tokens_BS: torch.Tensor, step: _Step, inputs: tuple[torch.Tensor, ...]):
        """The fixed-shape step with its tail, compiled or eager, and for a chained step the
        rows moved on (``_move_rows``); never for gradients (captured outside inference mode,
        so that any later decoder may replay it)."""
        if step.prompt:
            return self._run_prompt(tokens_BS, step, *inputs)
        with torch.no_grad():
            result = self._forward_step(tokens_BS, step, inputs)
            return result if step.tail is None else self._move_rows(tokens_BS, result, step)

    def _forward_step(self, tokens_BS: torch.Tensor, step: _Step, inputs: tuple):
        """The step's logits, or its tail's ``Chained``: compiled or eager."""
        heads, tail = step.heads, step.tail
        if not step.compiled:
            return self._static_step(tokens_BS, heads, tail, False, *inputs)
        if tail is not None and tail in _EAGER_TAILS:
            logits_BSnV = self._forward_step(tokens_BS, _Step(heads, None, True), ())
            return tail(tokens_BS, logits_BSnV, self.room, *inputs)
        skip_blocks = self._state.skip_blocks
        compiled = _compiled_static_step(self._state.pdl)
        with torch._dynamo.config.patch(recompile_limit=_RECOMPILE_LIMIT):
            try:
                return compiled(self, tokens_BS, heads, tail, skip_blocks, *inputs)
            except Exception as exc:  # Inductor's, whichever kind this torch raises
                if tail is not None:
                    self._tail_runs_eagerly(tail, exc)
                    return self._forward_step(tokens_BS, step, inputs)
                if not skip_blocks:
                    raise
                self._state.skip_blocks = False  # compiled again, with sdpa
                reason = str(exc).strip().splitlines()[0][:200]
                log.warning(
                    "decoding: this torch cannot compile block-skipping attention for a "
                    "%d-row step (%s); the decoder's steps read whole caches with sdpa",
                    len(tokens_BS), reason,
                )  # fmt: skip
                return compiled(self, tokens_BS, heads, None, False)

    def _move_rows(self, tokens_BS: torch.Tensor, chained: Chained, step: _Step):
        """A chained step's end (``chain_rows``): the tail's next tokens written over
        ``tokens_BS`` (the state's ``fed``), every row's position moved by its advance (within
        the cache's last S positions) and its budget lowered by as much; the tail's outputs.
        Inside the step's CUDA graph but outside its compiled code: inputs that the step's code
        mutated changed how Inductor fused it (FlexAttention's reductions ran twice as long)."""
        state = self._state
        last = len(state.keys_L) - tokens_BS.shape[1]
        move = move_rows
        if step.compiled and self.cuda_graphs:  # fewer kernels a replay (on a CPU: a compile)
            move = _compiled_move_rows(state.pdl)
        with torch._dynamo.config.patch(recompile_limit=_RECOMPILE_LIMIT):
            move(tokens_BS, state.start, state.room, chained.fed_BS, chained.advance_B, last)
        return chained.outputs

    def _run_prompt(self, tokens_BS: torch.Tensor, step: _Step, *at_1: torch.Tensor):
        """A prompt's forward from position 0 (``_Step.prompt``), never compiled (why:
        ``prefill``)."""
        with torch.no_grad():
            return self._forward(tokens_BS, step.heads, 0, at_1[0] if at_1 else None)

    @staticmethod
    def _tail_runs_eagerly(tail: StepTail, exc: Exception) -> None:
        """After a step with ``tail`` failed to compile: the tail runs eagerly from now on (the
        same results, more slowly), said once; the step is tried again without it, keeping its
        own fallback. An error that is not the compiler's is raised."""
        reason = compile_failure(exc)
        if reason is None:
            raise exc
        _EAGER_TAILS.add(tail)
        log.warning(
            "decoding: this torch cannot compile %s into the step (%s); it runs eagerly after "
            "the step, with the same results, more slowly", tail, reason[:200],
        )  # fmt: skip

    def _prepare(self, tokens_BS: torch.Tensor, step: _Step, inputs: tuple) -> _Captured | None:
        """A step shape's first use: compile it (run once) and capture it, timed into the state's
        ``setup_s``. The warm-up writes keys only at the positions this step is about to
        overwrite."""
        started = time.perf_counter()
        if self.cuda_graphs:
            captured = self._capture(tokens_BS, step, inputs)
            torch.cuda.synchronize(tokens_BS.device)
        else:
            captured = None
            if step.compiled:
                self._warm_up(tokens_BS, step, inputs)
        self._state.setup_s += time.perf_counter() - started
        return captured

    def _warm_up(self, tokens_BS: torch.Tensor, step: _Step, inputs: tuple) -> None:
        """One run of ``step`` that leaves the rows as they were: a chained step's tokens,
        positions and budgets are put back (the run that follows is the real step)."""
        rows = (tokens_BS, self._state.start, self._state.room) if step.tail is not None else ()
        kept = [t.clone() for t in rows]
        self._run_step(tokens_BS, step, inputs)
        for now, before in zip(rows, kept, strict=True):
            now.copy_(before)

    @torch.inference_mode(False)
    def _capture(self, tokens_BS: torch.Tensor, step: _Step, inputs: tuple) -> _Captured:
        """Warm up on a side stream (as capture requires; the first run compiles), then record
        one step. Its inputs and outputs are ordinary tensors, as the state's are."""
        # a chained step's tokens are the state's (``fed``): the graph reads and writes them
        static_tokens_BS = tokens_BS if step.tail is not None else tokens_BS.clone()
        static_inputs = tuple(x.clone() for x in inputs)
        with torch.cuda.device(static_tokens_BS.device):  # the model's GPU, not the current one
            side = torch.cuda.Stream()
            side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(side):
                for _ in range(2):
                    self._warm_up(static_tokens_BS, step, static_inputs)
            torch.cuda.current_stream().wait_stream(side)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph, pool=self._state.pool):
                outputs = self._run_step(static_tokens_BS, step, static_inputs)
        return _Captured(graph, static_tokens_BS, static_inputs, outputs)


def _cloned(outputs: torch.Tensor | tuple[torch.Tensor, ...]):
    """A copy of a step's output tensor, or of each of its outputs."""
    if isinstance(outputs, torch.Tensor):
        return outputs.clone()
    return tuple(x.clone() for x in outputs)


def make_decoder(
    model: LlamaMTP,
    batch_size: int,
    max_len: int,
    kept_heads: Sequence[int] | None = None,
    *,
    cuda_graphs: bool | None = None,
    compiled: bool | None = None,
    fused: bool | None = None,
    rows_apart: bool = False,
) -> Decoder:
    """The decoder for ``model``. ``cuda_graphs=None``: CUDA-graph steps whenever the model is on
    a GPU; ``compiled=None``: compiled steps where graphs are (``False`` captures eager
    kernels; ``True`` without graphs compiles the uncaptured fixed-shape step, on a CPU too);
    ``fused``: the fixed-shape steps' fused projections (``StaticDecoder``). With neither graphs
    nor compilation, the eager ``Decoder``, unless ``rows_apart``: rows that advance apart need
    the fixed-shape step (``StaticDecoder.step_rows``), run eagerly then."""
    on_gpu = next(model.parameters()).device.type == "cuda"
    graphs = on_gpu if cuda_graphs is None else cuda_graphs and on_gpu
    compiled = graphs if compiled is None else compiled
    if graphs or compiled or rows_apart:
        return StaticDecoder(
            model, batch_size, max_len, kept_heads, cuda_graphs=graphs, compiled=compiled,
            fused=fused,
        )  # fmt: skip
    return Decoder(model, batch_size, max_len, kept_heads)


__all__ = [
    "Decoder",
    "KVCache",
    "StaticDecoder",
    "StepState",
    "StepTail",
    "cache_length",
    "cached_block",
    "make_decoder",
    "masked_block",
    "on_device",
    "setup_figures",
]
