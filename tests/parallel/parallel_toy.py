"""A toy MTP model with LlamaMTP's surface (trunk / head_hidden / output / blocks) for the tests."""

from __future__ import annotations

import torch
import torch.nn as nn


class Block(nn.Module):
    def __init__(self, dim: int) -> None:
        super().__init__()
        self.lin = nn.Linear(dim, dim)

    def forward(self, x):
        return x + torch.tanh(self.lin(x))


class ToyMTP(nn.Module):
    def __init__(self, vocab: int = 61, dim: int = 16, n_trunk: int = 2, n_heads: int = 2) -> None:
        super().__init__()
        self.tok_embeddings = nn.Embedding(vocab, dim)
        self.layers = nn.ModuleList(Block(dim) for _ in range(n_trunk + 1))
        self.extra_heads = nn.ModuleList(Block(dim) for _ in range(n_heads - 1))
        self.norm = nn.LayerNorm(dim)
        self.output = nn.Linear(dim, vocab, bias=False)

    def trunk(self, tokens_BS, seq=None):
        h = self.tok_embeddings(tokens_BS)
        for layer in self.layers[:-1]:
            h = layer(h)
        return h

    def head_hidden(self, h_BSD, k, seq=None):
        layer = self.layers[-1] if k == 1 else self.extra_heads[k - 2]
        return self.norm(layer(h_BSD))

    def blocks(self):
        return [*self.layers, *self.extra_heads]
