"""Growing a batch of sequences through the model: the one place generation touches the model.

A ``DecodeState`` holds the sequences of a batch (one row per prompt). ``feed`` appends tokens to
each row and returns, for the new positions only, the normed hidden states of the heads asked
for; ``rollback`` forgets the last tokens of a row (rejected drafts of speculative decoding).
Callers apply ``model.output`` where they need logits, so unused heads and positions never pay
for the unembedding.

``RecomputeState`` runs the model's plain forward over each row's whole sequence at every call:
exact for any model and any attention backend (rows are right-padded; causal attention never
lets a real token see the padding), at O(length^2) cost. ``open_state`` picks the KV-cache state
when the model provides one (see ``wmtp.eval.kv_state``) and falls back to recomputation.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

import torch


class DecodeState(Protocol):
    lengths: list[int]

    def feed(self, new_tokens: list[list[int]], heads: Sequence[int]) -> list[torch.Tensor]:
        """Append ``new_tokens[b]`` to row ``b``; per row, hidden ``[n_new_b, len(heads), D]``."""
        ...

    def rollback(self, row: int, length: int) -> None:
        """Keep only the first ``length`` tokens of ``row``."""
        ...


class RecomputeState:
    """Sequences kept as token lists; every ``feed`` runs the full forward (no cache)."""

    def __init__(self, model: torch.nn.Module, batch_size: int):
        self.model = model
        self.rows: list[list[int]] = [[] for _ in range(batch_size)]
        self.device = next(model.parameters()).device

    @property
    def lengths(self) -> list[int]:
        return [len(row) for row in self.rows]

    @torch.inference_mode()
    def feed(self, new_tokens: list[list[int]], heads: Sequence[int]) -> list[torch.Tensor]:
        assert len(new_tokens) == len(self.rows), (len(new_tokens), len(self.rows))
        starts = self.lengths
        for row, tokens in zip(self.rows, new_tokens, strict=True):
            row.extend(tokens)
        active = [b for b, tokens in enumerate(new_tokens) if tokens]
        S = max(len(self.rows[b]) for b in active)
        tokens_BS = torch.zeros(len(active), S, dtype=torch.long)
        for i, b in enumerate(active):  # right-padded: real tokens never attend to the padding
            tokens_BS[i, : len(self.rows[b])] = torch.tensor(self.rows[b])
        tokens_BS = tokens_BS.to(self.device)
        h_BSD = self.model.trunk(tokens_BS)
        hidden_BSnD = torch.stack([self.model.head_hidden(h_BSD, k) for k in heads], dim=2)
        out = [hidden_BSnD.new_zeros(0, len(heads), hidden_BSnD.shape[-1])] * len(self.rows)
        for i, b in enumerate(active):
            out[b] = hidden_BSnD[i, starts[b] : len(self.rows[b])]
        return out

    def rollback(self, row: int, length: int) -> None:
        assert 0 <= length <= len(self.rows[row]), (length, len(self.rows[row]))
        del self.rows[row][length:]


def open_state(model: torch.nn.Module, batch_size: int, *, max_length: int) -> DecodeState:
    """A decode state for ``batch_size`` rows of at most ``max_length`` tokens.

    The model's KV cache when it has one, else ``RecomputeState``.
    """
    from wmtp.eval import kv_state

    if kv_state.supports_kv_cache(model):
        return kv_state.KVCacheState(model, batch_size, max_length=max_length)
    return RecomputeState(model, batch_size)


__all__ = ["DecodeState", "RecomputeState", "open_state"]
