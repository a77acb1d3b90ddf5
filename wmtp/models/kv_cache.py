"""Inference with a key/value cache: prefill a prompt, then decode a few tokens at a time.

Kept apart from the training path: the model's modules are reused, but this file holds the
cached attention step. Every block (trunk layers and each head's layer) gets its own cache; a
head's layer attends over its own keys of the trunk output, as in the full forward. New queries
are the last positions of the cached keys, so every backend's bottom-right causal alignment
applies (sdpa: no mask for one token; a small mask only for multi-token chunks).

The rows of a batch share one position (replicated prompts, as for pass@k sampling); prompts of
different lengths are decoded in separate batches. On a GPU, ``make_decoder`` returns a
``StaticDecoder``, whose steps replay CUDA graphs.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from wmtp.errors import RunError
from wmtp.models.llama_mtp import LlamaMTP, Rope, TransformerBlock, rope_frequencies, rope_tables


class KVCache:
    """Keys and values of one block: ``[B, max_len, K, D]`` each, filled up to ``length``."""

    def __init__(self, batch: int, max_len: int, kv_heads: int, head_dim: int, *, dtype, device):
        shape = (batch, max_len, kv_heads, head_dim)
        self.k_BSKD = torch.zeros(shape, dtype=dtype, device=device)
        self.v_BSKD = torch.zeros(shape, dtype=dtype, device=device)

    def append(self, start: int, k_BSKD: torch.Tensor, v_BSKD: torch.Tensor):
        """Store new keys/values at ``start``; return every key/value up to them."""
        end = start + k_BSKD.shape[1]
        self.k_BSKD[:, start:end] = k_BSKD
        self.v_BSKD[:, start:end] = v_BSKD
        return self.k_BSKD[:, :end], self.v_BSKD[:, :end]


def cached_block(block: TransformerBlock, x_BSD, rope: Rope, cache: KVCache, start: int):
    """One block on new positions ``start..start+S-1``, attending to all cached ones."""
    attention = block.attention
    q_BSHD, k_BSKD, v_BSKD = attention.project_qkv(block.attention_norm(x_BSD), rope)
    k_all, v_all = cache.append(start, k_BSKD, v_BSKD)
    out_BSHD = attention.attend(q_BSHD, k_all, v_all, None)
    h_BSD = x_BSD + attention.wo(out_BSHD.flatten(2))  # [B, S, H, D] -> [B, S, H*D]
    return h_BSD + block.feed_forward(block.ffn_norm(h_BSD))


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
        param = next(model.parameters())
        a = model.args
        self.caches = [
            KVCache(
                batch_size, max_len, a.kv_heads, a.head_dim, dtype=param.dtype, device=param.device
            )
            for _ in model.blocks()
        ]
        self.inv_freq_F = rope_frequencies(a, param.device)
        self.length = 0

    @torch.no_grad()
    def prefill(self, tokens_BS: torch.Tensor, heads: list[int] | None = None) -> torch.Tensor:
        """Process a prompt (or continue after earlier tokens); logits ``[B, S, n, V]``."""
        with planless_attention(tokens_BS.device):
            return self._advance(tokens_BS, heads)

    @torch.no_grad()
    def step(self, tokens_BS: torch.Tensor, heads: list[int] | None = None) -> torch.Tensor:
        """Append ``tokens_BS`` (usually one per row) and return their logits ``[B, S, n, V]``."""
        with planless_attention(tokens_BS.device):
            return self._advance(tokens_BS, heads)

    def rewind(self, length: int) -> None:
        """Forget every position from ``length`` on (rejected speculative tokens)."""
        assert 0 <= length <= self.length, f"rewind to {length}, cache holds {self.length}"
        self.length = length

    def _advance(self, tokens_BS: torch.Tensor, heads: list[int] | None) -> torch.Tensor:
        start = self._check_room(tokens_BS.shape[1], heads)
        B, S = tokens_BS.shape
        positions_BS = torch.arange(start, start + S, device=tokens_BS.device).expand(B, S)
        rope = rope_tables(self.inv_freq_F, positions_BS)
        logits_BSnV = self._run_blocks(
            tokens_BS, heads, lambda block, x, cache: cached_block(block, x, rope, cache, start)
        )
        self.length = start + S
        return logits_BSnV

    def _check_room(self, S: int, heads: list[int] | None) -> int:
        """The start position of ``S`` new tokens, after checking the heads and the cache's room."""
        if heads is not None:
            assert set(heads) <= set(self.kept_heads), (
                f"heads {heads}: this decoder keeps {self.kept_heads}"
            )
        if self.length + S > self.max_len:
            raise RunError(
                f"decoding to position {self.length + S} exceeds the cache length {self.max_len}"
            )
        return self.length

    def _run_blocks(
        self, tokens_BS: torch.Tensor, heads: list[int] | None, run_block: BlockStep
    ) -> torch.Tensor:
        """Embed, run the trunk and every kept head's layer through ``run_block``; the logits of
        ``heads`` (default: the kept ones) as ``[B, S, n, V]``."""
        model = self.model
        h_BSD = model.tok_embeddings(tokens_BS)
        n_trunk = len(model.layers) - 1
        for layer, cache in zip(model.layers[:-1], self.caches[:n_trunk], strict=True):
            h_BSD = run_block(layer, h_BSD, cache)
        head_caches = self.caches[n_trunk:]  # head 1, then extra heads: model.blocks() order
        ks = heads if heads is not None else self.kept_heads
        logits = {}
        for k in self.kept_heads:  # every kept head's cache advances, asked for or not
            hk_BSD = run_block(model.head_layer(k), h_BSD, head_caches[k - 1])
            if k in ks:
                logits[k] = model.output(model.norm(hk_BSD))
        return torch.stack([logits[k] for k in ks], dim=2)  # n x [B, S, V] -> [B, S, n, V]


BlockStep = Callable[[TransformerBlock, torch.Tensor, KVCache], torch.Tensor]
"""One block on the new positions: ``(block, x_BSD, cache) -> x_BSD``."""


def masked_block(
    block: TransformerBlock, x_BSD, rope: Rope, cache: KVCache, positions_S, allowed_SL
):
    """``cached_block`` with fixed shapes: keys written at ``positions_S`` (a device tensor), and
    attention over the whole cache, ``allowed_SL`` masking the positions not yet (or no longer)
    filled. Nothing depends on the position on the host, so a CUDA graph can replay it."""
    attention = block.attention
    q_BSHD, k_BSKD, v_BSKD = attention.project_qkv(block.attention_norm(x_BSD), rope)
    cache.k_BSKD.index_copy_(1, positions_S, k_BSKD)
    cache.v_BSKD.index_copy_(1, positions_S, v_BSKD)
    q, k, v = (t.transpose(1, 2) for t in (q_BSHD, cache.k_BSKD, cache.v_BSKD))  # -> [B, H, S, D]
    out_BHSD = F.scaled_dot_product_attention(
        q, k, v, attn_mask=allowed_SL[None, None], enable_gqa=True
    )
    h_BSD = x_BSD + attention.wo(out_BHSD.transpose(1, 2).flatten(2))
    return h_BSD + block.feed_forward(block.ffn_norm(h_BSD))


@dataclass
class _Captured:
    """One captured step: its graph and the tensors it reads and writes."""

    graph: torch.cuda.CUDAGraph
    tokens_BS: torch.Tensor
    logits_BSnV: torch.Tensor


class StaticDecoder(Decoder):
    """A ``Decoder`` whose steps have fixed shapes, replayed from CUDA graphs on a GPU.

    Batch-1 decoding is launch-bound: a plain step of a 0.9B model is ~690 small kernels, 1.75 ms
    of GPU time but 12.6 ms of host time on the H100 (bench/results/h100_decode.md). Here a step of ``S`` tokens attends over the whole cache with a
    mask of the filled positions and writes its keys at positions held in a device tensor, so its
    shapes never change: each ``(S, heads)`` is captured once as a CUDA graph and every later step
    is one replay. ``prefill`` stays eager (its length changes once per prompt); ``rewind`` works
    as before (the mask hides what lies past ``length``). ``cuda_graphs=False`` (or a CPU model)
    runs the same fixed-shape step without capture: the reference the tests hold it to.
    """

    def __init__(self, model: LlamaMTP, batch_size: int, max_len: int,
                 kept_heads: Sequence[int] | None = None, *, cuda_graphs: bool = True):  # fmt: skip
        super().__init__(model, batch_size, max_len, kept_heads)
        device = self.inv_freq_F.device
        self.cuda_graphs = cuda_graphs and device.type == "cuda"
        self._start = torch.zeros((), dtype=torch.long, device=device)
        self._keys_L = torch.arange(max_len, device=device)
        self._captured: dict[tuple[int, tuple[int, ...]], _Captured] = {}
        self._pool = None
        if self.cuda_graphs:
            with torch.cuda.device(device):
                self._pool = torch.cuda.graph_pool_handle()

    @torch.no_grad()
    def step(self, tokens_BS: torch.Tensor, heads: list[int] | None = None) -> torch.Tensor:
        start = self._check_room(tokens_BS.shape[1], heads)
        self._start.fill_(start)
        if not self.cuda_graphs:
            logits_BSnV = self._static_step(tokens_BS, heads)
        else:
            key = (tokens_BS.shape[1], tuple(heads) if heads is not None else self.kept_heads)
            captured = self._captured.get(key) or self._capture(tokens_BS, key[1])
            self._captured[key] = captured
            captured.tokens_BS.copy_(tokens_BS)
            captured.graph.replay()
            logits_BSnV = captured.logits_BSnV.clone()  # the next replay overwrites it
        self.length = start + tokens_BS.shape[1]
        return logits_BSnV

    def _static_step(self, tokens_BS: torch.Tensor, heads: Sequence[int] | None) -> torch.Tensor:
        """The step at position ``self._start`` (a device tensor): fixed shapes throughout."""
        B, S = tokens_BS.shape
        positions_S = self._start + torch.arange(S, device=tokens_BS.device)
        rope = rope_tables(self.inv_freq_F, positions_S.expand(B, S))
        allowed_SL = self._keys_L[None, :] <= positions_S[:, None]  # causal, bottom-right
        return self._run_blocks(
            tokens_BS,
            list(heads) if heads is not None else None,
            lambda block, x, cache: masked_block(block, x, rope, cache, positions_S, allowed_SL),
        )

    def _capture(self, tokens_BS: torch.Tensor, heads: tuple[int, ...]) -> _Captured:
        """Warm up on a side stream (as capture requires), then record one step. The warm-up
        writes keys only at the positions this step is about to overwrite."""
        static_tokens_BS = tokens_BS.clone()
        with torch.cuda.device(static_tokens_BS.device):  # the model's GPU, not the current one
            side = torch.cuda.Stream()
            side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(side):
                for _ in range(2):
                    self._static_step(static_tokens_BS, heads)
            torch.cuda.current_stream().wait_stream(side)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph, pool=self._pool):
                logits_BSnV = self._static_step(static_tokens_BS, heads)
        return _Captured(graph, static_tokens_BS, logits_BSnV)


def make_decoder(
    model: LlamaMTP,
    batch_size: int,
    max_len: int,
    kept_heads: Sequence[int] | None = None,
    *,
    cuda_graphs: bool | None = None,
) -> Decoder:
    """The decoder for ``model``: CUDA-graph steps on a GPU (``cuda_graphs=None``: whenever the
    model is on one), the eager ``Decoder`` otherwise."""
    on_gpu = next(model.parameters()).device.type == "cuda"
    if cuda_graphs is None:
        cuda_graphs = on_gpu
    if cuda_graphs and on_gpu:
        return StaticDecoder(model, batch_size, max_len, kept_heads)
    return Decoder(model, batch_size, max_len, kept_heads)


__all__ = ["Decoder", "KVCache", "StaticDecoder", "cached_block", "make_decoder", "masked_block"]
