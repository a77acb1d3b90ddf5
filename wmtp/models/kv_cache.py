"""Inference with a key/value cache: prefill a prompt, then decode a few tokens at a time.

Kept apart from the training path: the model's modules are reused, but this file holds the
cached attention step. Every block (trunk layers and each head's layer) gets its own cache; a
head's layer attends over its own keys of the trunk output, as in the full forward. New queries
are the last positions of the cached keys, so every backend's bottom-right causal alignment
applies (sdpa: no mask for one token; a small mask only for multi-token chunks).

The rows of a batch share one position (replicated prompts, as for pass@k sampling); prompts of
different lengths are decoded in separate batches.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

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
    out_BSHD = attention._attend(q_BSHD, k_all, v_all, None)
    h_BSD = x_BSD + attention.wo(out_BSHD.flatten(2))  # [B, S, H, D] -> [B, S, H*D]
    return h_BSD + block.feed_forward(block.ffn_norm(h_BSD))


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
        return self._advance(tokens_BS, heads)

    @torch.no_grad()
    def step(self, tokens_BS: torch.Tensor, heads: list[int] | None = None) -> torch.Tensor:
        """Append ``tokens_BS`` (usually one per row) and return their logits ``[B, S, n, V]``."""
        return self._advance(tokens_BS, heads)

    def rewind(self, length: int) -> None:
        """Forget every position from ``length`` on (rejected speculative tokens)."""
        assert 0 <= length <= self.length, f"rewind to {length}, cache holds {self.length}"
        self.length = length

    def _advance(self, tokens_BS: torch.Tensor, heads: list[int] | None) -> torch.Tensor:
        if heads is not None:
            assert set(heads) <= set(self.kept_heads), (
                f"heads {heads}: this decoder keeps {self.kept_heads}"
            )
        B, S = tokens_BS.shape
        start = self.length
        if start + S > self.max_len:
            raise RunError(
                f"decoding to position {start + S} exceeds the cache length {self.max_len}"
            )
        positions_BS = torch.arange(start, start + S, device=tokens_BS.device).expand(B, S)
        rope = rope_tables(self.inv_freq_F, positions_BS)
        model = self.model
        h_BSD = model.tok_embeddings(tokens_BS)
        n_trunk = len(model.layers) - 1
        for layer, cache in zip(model.layers[:-1], self.caches[:n_trunk], strict=True):
            h_BSD = cached_block(layer, h_BSD, rope, cache, start)
        head_caches = self.caches[n_trunk:]  # head 1, then extra heads: model.blocks() order
        ks = heads if heads is not None else self.kept_heads
        logits = {}
        for k in self.kept_heads:  # every kept head's cache advances, asked for or not
            hk_BSD = cached_block(model.head_layer(k), h_BSD, rope, head_caches[k - 1], start)
            if k in ks:
                logits[k] = model.output(model.norm(hk_BSD))
        self.length = start + S
        return torch.stack([logits[k] for k in ks], dim=2)  # n x [B, S, V] -> [B, S, n, V]


__all__ = ["Decoder", "KVCache", "cached_block"]
