"""An independent reader of Meta's multi-token-prediction layout, to hold ``--to meta`` to.

Written from what Meta's release documents and its Llama code does, not from wmtp's model code:

- ``params.json`` becomes the model arguments the way Meta's ``Llama.build`` makes them,
  ``ModelArgs(max_seq_len=..., max_batch_size=..., **params)``: a key its ``ModelArgs`` lacks,
  or one the loader passes itself, is a ``TypeError`` there and here;
- the checkpoint loads into modules named as Meta names them (``tok_embeddings``,
  ``layers.N.attention.wq`` .. ``wo``, ``feed_forward.w1``/``w2``/``w3``, ``attention_norm``,
  ``ffn_norm``, ``norm``, ``output``; heads 2..n ``extra_heads.J``), strictly (Meta loads with
  ``strict=False`` only to skip a stored ``rope.freqs``): every name and shape is checked;
- the forward is Llama's: RoPE on consecutive pairs as complex products, keys and values repeated
  for grouped-query attention, an explicit fp32 softmax, SwiGLU; the trunk ``layers[:-1]``, head 1
  ``layers[-1]`` and every ``extra_heads`` layer reading the trunk's output, one shared ``norm``
  and ``output``.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn


@dataclass
class MetaModelArgs:
    """The fields of Meta's ``ModelArgs`` (Llama's, the MTP release's ``n_future_tokens``,
    Llama 3's ``rope_theta`` and Llama 3.1's ``use_scaled_rope``)."""

    dim: int = 4096
    n_layers: int = 32
    n_heads: int = 32
    n_kv_heads: int | None = None
    vocab_size: int = -1
    multiple_of: int = 256
    ffn_dim_multiplier: float | None = None
    norm_eps: float = 1e-5
    rope_theta: float = 10000.0
    use_scaled_rope: bool = False
    max_batch_size: int = 32
    max_seq_len: int = 2048
    n_future_tokens: int = 1


def build(directory: Path, *, max_seq_len: int = 512, max_batch_size: int = 1) -> MetaTransformer:
    """The model of a Meta directory, built and loaded as ``Llama.build`` does."""
    params = json.loads((directory / "params.json").read_text())
    args = MetaModelArgs(max_seq_len=max_seq_len, max_batch_size=max_batch_size, **params)
    (checkpoint,) = sorted(directory.glob("*.pth"))  # one model-parallel rank
    state = torch.load(checkpoint, map_location="cpu", weights_only=True)
    model = MetaTransformer(args)
    model.load_state_dict({k: v.float() for k, v in state.items()}, strict=True)
    return model.eval()


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.eps, self.weight = eps, nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x32 = x.float()
        return (x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + self.eps)) * self.weight


def ffn_width(args: MetaModelArgs) -> int:
    """Meta's SwiGLU width: two thirds of 4 * dim, scaled, rounded up to ``multiple_of``."""
    hidden = int(2 * 4 * args.dim / 3)
    if args.ffn_dim_multiplier is not None:
        hidden = int(args.ffn_dim_multiplier * hidden)
    return args.multiple_of * ((hidden + args.multiple_of - 1) // args.multiple_of)


def rotations(args: MetaModelArgs, length: int) -> torch.Tensor:
    """``[length, head_dim / 2]`` unit complex numbers, Llama 3.1's frequency scaling applied
    when ``use_scaled_rope`` (factor 8, low 1, high 4, original context 8192)."""
    head_dim = args.dim // args.n_heads
    freqs = 1.0 / args.rope_theta ** (torch.arange(0, head_dim, 2).double() / head_dim)
    if args.use_scaled_rope:
        freqs = torch.tensor([_llama31_scaled(f) for f in freqs.tolist()], dtype=torch.double)
    angles = torch.outer(torch.arange(length).double(), freqs)
    return torch.polar(torch.ones_like(angles), angles).to(torch.complex64)


def _llama31_scaled(freq: float, factor=8.0, low=1.0, high=4.0, original=8192) -> float:
    wavelength = 2 * math.pi / freq
    if wavelength < original / high:
        return freq
    if wavelength > original / low:
        return freq / factor
    smooth = (original / wavelength - low) / (high - low)
    return (1 - smooth) * freq / factor + smooth * freq


def rotate(x_BSHD: torch.Tensor, rot_SP: torch.Tensor) -> torch.Tensor:
    """Consecutive pairs of each head's features as complex numbers, turned by ``rot``."""
    B, S, H, D = x_BSHD.shape
    pairs_BSHP = torch.view_as_complex(x_BSHD.float().reshape(B, S, H, D // 2, 2))
    return torch.view_as_real(pairs_BSHP * rot_SP[None, :, None, :]).reshape(B, S, H, D)


class Attention(nn.Module):
    def __init__(self, args: MetaModelArgs):
        super().__init__()
        self.n_heads, self.n_kv = args.n_heads, args.n_kv_heads or args.n_heads
        self.head_dim = args.dim // args.n_heads
        self.wq = nn.Linear(args.dim, self.n_heads * self.head_dim, bias=False)
        self.wk = nn.Linear(args.dim, self.n_kv * self.head_dim, bias=False)
        self.wv = nn.Linear(args.dim, self.n_kv * self.head_dim, bias=False)
        self.wo = nn.Linear(self.n_heads * self.head_dim, args.dim, bias=False)

    def forward(self, x_BSE: torch.Tensor, rot_SP: torch.Tensor) -> torch.Tensor:
        B, S, _ = x_BSE.shape
        q_BSHD = rotate(self.wq(x_BSE).view(B, S, self.n_heads, self.head_dim), rot_SP)
        k_BSKD = rotate(self.wk(x_BSE).view(B, S, self.n_kv, self.head_dim), rot_SP)
        v_BSKD = self.wv(x_BSE).view(B, S, self.n_kv, self.head_dim)
        repeat = self.n_heads // self.n_kv  # each key/value head serves `repeat` query heads
        k_BSHD = k_BSKD.repeat_interleave(repeat, dim=2)
        v_BSHD = v_BSKD.repeat_interleave(repeat, dim=2)
        scores_BHSS = torch.einsum("bshd,bthd->bhst", q_BSHD, k_BSHD) / math.sqrt(self.head_dim)
        future_SS = torch.triu(torch.ones(S, S, dtype=torch.bool), diagonal=1)
        probs_BHSS = scores_BHSS.float().masked_fill(future_SS, float("-inf")).softmax(-1)
        out_BSHD = torch.einsum("bhst,bthd->bshd", probs_BHSS, v_BSHD)
        return self.wo(out_BSHD.reshape(B, S, -1))


class FeedForward(nn.Module):
    def __init__(self, args: MetaModelArgs):
        super().__init__()
        width = ffn_width(args)
        self.w1 = nn.Linear(args.dim, width, bias=False)
        self.w2 = nn.Linear(width, args.dim, bias=False)
        self.w3 = nn.Linear(args.dim, width, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.w2(nn.functional.silu(self.w1(x)) * self.w3(x))


class Block(nn.Module):
    def __init__(self, args: MetaModelArgs):
        super().__init__()
        self.attention, self.feed_forward = Attention(args), FeedForward(args)
        self.attention_norm = RMSNorm(args.dim, args.norm_eps)
        self.ffn_norm = RMSNorm(args.dim, args.norm_eps)

    def forward(self, x: torch.Tensor, rot_SP: torch.Tensor) -> torch.Tensor:
        h = x + self.attention(self.attention_norm(x), rot_SP)
        return h + self.feed_forward(self.ffn_norm(h))


class MetaTransformer(nn.Module):
    def __init__(self, args: MetaModelArgs):
        super().__init__()
        self.args = args
        n_layers, n_future = args.n_layers, args.n_future_tokens
        self.tok_embeddings = nn.Embedding(args.vocab_size, args.dim)
        self.layers = nn.ModuleList(Block(args) for _ in range(n_layers - n_future + 1))
        self.extra_heads = nn.ModuleList(Block(args) for _ in range(n_future - 1))
        self.norm = RMSNorm(args.dim, args.norm_eps)
        self.output = nn.Linear(args.dim, args.vocab_size, bias=False)

    @torch.no_grad()
    def forward(self, tokens_BS: torch.Tensor) -> torch.Tensor:
        """Logits ``[B, S, n_future_tokens, V]`` in fp32 (Meta's ``return_all_heads=True``)."""
        rot_SP = rotations(self.args, tokens_BS.shape[1])
        h_BSE = self.tok_embeddings(tokens_BS)
        for layer in self.layers[:-1]:
            h_BSE = layer(h_BSE, rot_SP)
        heads = [self.layers[-1], *self.extra_heads]
        latents_BSNE = torch.stack([head(h_BSE, rot_SP) for head in heads], dim=-2)
        return self.output(self.norm(latents_BSNE)).float()
