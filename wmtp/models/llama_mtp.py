"""The LLaMA multi-token-prediction transformer in Meta's layout.

A shared trunk (``layers[:-1]``) feeds ``n_future_tokens`` heads, each one transformer layer:
head 1 is ``layers[-1]``, heads 2..n are ``extra_heads[0..n-2]``. Every head reads the trunk
output; one final norm and one unembedding (``output``) are shared. Parameter names follow Meta's
checkpoints, so their state dicts load as they are.

Training computes heads one at a time (``trunk`` once, then ``head_hidden(h, k)`` and ``output``
per head), so the ``[B, S, n, V]`` logits never exist; ``forward`` builds them for inference and
checks. No parallelism lives here: ``blocks()`` hands every block to the sharding code.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from wmtp.models.args import ModelArgs
from wmtp.models.attention import ResolvedAttention, SeqInfo

Rope = tuple[torch.Tensor, torch.Tensor]
"""``(cos_BSF, sin_BSF)`` in fp32, ``F = head_dim // 2`` frequencies."""


class RMSNorm(nn.Module):
    """Root-mean-square norm, computed in fp32 (a bf16 mean of squares loses digits)."""

    def __init__(self, dim: int, eps: float = 1e-5):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return rms_norm(x, self.weight, self.eps)


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """``RMSNorm``'s computation with a given ``weight`` (broadcast over ``x``'s last dim)."""
    x32 = x.float()
    normed = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + eps)
    return normed.type_as(x) * weight


# RoPE ---------------------------------------------------------------------------------------


def rope_frequencies(args: ModelArgs, device: torch.device | str = "cpu") -> torch.Tensor:
    """Inverse frequencies ``[head_dim // 2]`` in fp32, with Llama-3 scaling when configured."""
    D = args.head_dim
    inv_freq_F = 1.0 / (args.rope_theta ** (torch.arange(0, D, 2, device=device).float() / D))
    scaling = args.rope_scaling
    if scaling is None:
        return inv_freq_F
    # Llama-3: keep high frequencies, divide low ones by `factor`, blend in between.
    old_len = scaling.original_max_position_embeddings
    low_freq_wavelen = old_len / scaling.low_freq_factor
    high_freq_wavelen = old_len / scaling.high_freq_factor
    wavelen_F = 2 * math.pi / inv_freq_F
    smooth_F = (old_len / wavelen_F - scaling.low_freq_factor) / (
        scaling.high_freq_factor - scaling.low_freq_factor
    )
    blended_F = (1 - smooth_F) * inv_freq_F / scaling.factor + smooth_F * inv_freq_F
    scaled_F = torch.where(wavelen_F > low_freq_wavelen, inv_freq_F / scaling.factor, blended_F)
    return torch.where(wavelen_F < high_freq_wavelen, inv_freq_F, scaled_F)


def rope_tables(inv_freq_F: torch.Tensor, position_ids_BS: torch.Tensor) -> Rope:
    """cos and sin ``[B, S, F]`` (fp32: angles of long positions need the mantissa)."""
    angles_BSF = position_ids_BS.float()[..., None] * inv_freq_F.float()
    return angles_BSF.cos(), angles_BSF.sin()


def apply_rope(x_BSHD: torch.Tensor, rope: Rope) -> torch.Tensor:
    """Rotate consecutive pairs ``(x[2i], x[2i+1])`` (Meta's convention, not HF's halves)."""
    cos_BSF, sin_BSF = (t[:, :, None, :] for t in rope)  # [B, S, F] -> [B, S, 1, F]
    x = x_BSHD.float().unflatten(-1, (-1, 2))  # [B, S, H, D] -> [B, S, H, F, 2]
    x_even, x_odd = x[..., 0], x[..., 1]
    rotated = torch.stack(
        (x_even * cos_BSF - x_odd * sin_BSF, x_even * sin_BSF + x_odd * cos_BSF), dim=-1
    )
    return rotated.flatten(-2).type_as(x_BSHD)  # [B, S, H, F, 2] -> [B, S, H, D]


# Layers -------------------------------------------------------------------------------------


class Attention(nn.Module):
    """Grouped-query self-attention; its kernel is a :class:`ResolvedAttention`."""

    def __init__(self, args: ModelArgs, attention: ResolvedAttention):
        super().__init__()
        self.n_heads, self.n_kv_heads, self.head_dim = args.n_heads, args.kv_heads, args.head_dim
        self.wq = nn.Linear(args.dim, args.n_heads * args.head_dim, bias=False)
        self.wk = nn.Linear(args.dim, args.kv_heads * args.head_dim, bias=False)
        self.wv = nn.Linear(args.dim, args.kv_heads * args.head_dim, bias=False)
        self.wo = nn.Linear(args.n_heads * args.head_dim, args.dim, bias=False)
        self.resolved = attention

    def attend(self, q_BSHD, k_BSKD, v_BSKD, seq: SeqInfo | None = None) -> torch.Tensor:
        return self.resolved.attend(q_BSHD, k_BSKD, v_BSKD, seq)

    def project_qkv(self, x_BSD: torch.Tensor, rope: Rope):
        """Queries ``[B, S, H, D]`` and keys/values ``[B, S, K, D]``, RoPE applied to q and k."""
        B, S, _ = x_BSD.shape
        q_BSHD = self.wq(x_BSD).view(B, S, self.n_heads, self.head_dim)
        k_BSKD = self.wk(x_BSD).view(B, S, self.n_kv_heads, self.head_dim)
        v_BSKD = self.wv(x_BSD).view(B, S, self.n_kv_heads, self.head_dim)
        return apply_rope(q_BSHD, rope), apply_rope(k_BSKD, rope), v_BSKD

    def forward(self, x_BSD: torch.Tensor, rope: Rope, seq: SeqInfo | None = None) -> torch.Tensor:
        q_BSHD, k_BSKD, v_BSKD = self.project_qkv(x_BSD, rope)
        out_BSHD = self.attend(q_BSHD, k_BSKD, v_BSKD, seq)
        return self.wo(out_BSHD.flatten(2))  # [B, S, H, D] -> [B, S, H*D]


class FeedForward(nn.Module):
    """SwiGLU: ``w2(silu(w1 x) * w3 x)``."""

    def __init__(self, dim: int, hidden_dim: int):
        super().__init__()
        self.w1 = nn.Linear(dim, hidden_dim, bias=False)
        self.w2 = nn.Linear(hidden_dim, dim, bias=False)
        self.w3 = nn.Linear(dim, hidden_dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.w2(F.silu(self.w1(x)) * self.w3(x))


class TransformerBlock(nn.Module):
    """Pre-norm block: ``x + attention(norm(x))``, then ``+ feed_forward(norm(.))``."""

    def __init__(self, args: ModelArgs, attention: ResolvedAttention):
        super().__init__()
        self.attention = Attention(args, attention)
        self.feed_forward = FeedForward(args.dim, args.hidden_dim)
        self.attention_norm = RMSNorm(args.dim, args.norm_eps)
        self.ffn_norm = RMSNorm(args.dim, args.norm_eps)

    def forward(self, x_BSD: torch.Tensor, rope: Rope, seq: SeqInfo | None = None) -> torch.Tensor:
        h_BSD = x_BSD + self.attention(self.attention_norm(x_BSD), rope, seq)
        return h_BSD + self.feed_forward(self.ffn_norm(h_BSD))


# The model ----------------------------------------------------------------------------------


class LlamaMTP(nn.Module):
    """LLaMA with ``n_future_tokens`` prediction heads (n = 1: a plain LLaMA).

    ``attention`` is what :func:`wmtp.models.attention.resolve` chose (or a backend name of the
    table, :meth:`ResolvedAttention.fixed`, for tests and references).
    ``unembedding=False`` leaves out ``output`` (the value model's backbone).
    """

    def __init__(
        self,
        args: ModelArgs,
        attention: ResolvedAttention | str = "sdpa",
        *,
        unembedding: bool = True,
    ):
        super().__init__()
        assert args.vocab_size > 0, f"resolve vocab_size first (got {args.vocab_size})"
        if isinstance(attention, str):
            attention = ResolvedAttention.fixed(attention)
        self.args = args
        self.tok_embeddings = nn.Embedding(args.vocab_size, args.dim)
        # trunk layers, then head 1
        self.layers = nn.ModuleList(
            TransformerBlock(args, attention)
            for _ in range(args.n_layers - args.n_future_tokens + 1)
        )
        self.extra_heads = nn.ModuleList(
            TransformerBlock(args, attention) for _ in range(args.n_future_tokens - 1)
        )
        self.norm = RMSNorm(args.dim, args.norm_eps)
        self.output = nn.Linear(args.dim, args.vocab_size, bias=False) if unembedding else None
        self.reset_parameters()

    @property
    def n_heads(self) -> int:
        return self.args.n_future_tokens

    @property
    def attention(self) -> ResolvedAttention:
        """What every block's attention runs."""
        return self.layers[0].attention.resolved

    def set_attention(self, attention: ResolvedAttention | str) -> None:
        """Switch every block to another attention (weights untouched)."""
        if isinstance(attention, str):
            attention = ResolvedAttention.fixed(attention)
        for block in self.blocks():
            block.attention.resolved = attention

    def set_heads(self, n: int) -> None:
        """Keep heads 1..n; heads beyond the current ones start as copies of head 1 (its adapters
        included). The trunk is untouched."""
        import copy

        old = self.n_heads
        if n == old:
            return
        assert n >= 1, n
        heads = list(self.extra_heads)[: n - 1]
        heads += [copy.deepcopy(self.layers[-1]) for _ in range(n - old)]
        self.extra_heads = nn.ModuleList(heads)
        self.args = self.args.with_heads(n)

    def reset_parameters(self, std: float = 0.02) -> None:
        """Fresh weights: normal(0, std) for matrices, ones for norms (for training from scratch)."""
        for module in self.modules():
            if isinstance(module, (nn.Linear, nn.Embedding)):
                nn.init.normal_(module.weight, mean=0.0, std=std)
            elif isinstance(module, RMSNorm):
                nn.init.ones_(module.weight)

    def blocks(self) -> list[TransformerBlock]:
        """Every TransformerBlock (trunk, head 1, extra heads), for sharding and checkpointing."""
        return [*self.layers, *self.extra_heads]

    def head_layer(self, k: int) -> TransformerBlock:
        """The transformer layer of head ``k`` (1-based)."""
        assert 1 <= k <= self.n_heads, f"head {k} of {self.n_heads}"
        return self.layers[-1] if k == 1 else self.extra_heads[k - 2]

    def rope(self, shape_BS: tuple[int, int], seq: SeqInfo | None, device) -> Rope:
        """RoPE tables for a batch: from ``seq.position_ids``, else positions 0..S-1."""
        if seq is not None and seq.position_ids is not None:
            position_ids_BS = seq.position_ids.to(device)
        else:
            position_ids_BS = torch.arange(shape_BS[1], device=device).expand(shape_BS)
        return rope_tables(rope_frequencies(self.args, device), position_ids_BS)

    def trunk(self, tokens_BS: torch.Tensor, seq: SeqInfo | None = None) -> torch.Tensor:
        """Embeddings through the shared trunk ``layers[:-1]``: ``h_BSD`` (not normed)."""
        h_BSD = self.tok_embeddings(tokens_BS)
        rope = self.rope(tokens_BS.shape, seq, tokens_BS.device)
        for layer in self.layers[:-1]:
            h_BSD = layer(h_BSD, rope, seq)
        return h_BSD

    def head_hidden(self, h_BSD: torch.Tensor, k: int, seq: SeqInfo | None = None) -> torch.Tensor:
        """Head ``k``'s layer on the trunk output, then the shared final norm: ``[B, S, D]``."""
        rope = self.rope(h_BSD.shape[:2], seq, h_BSD.device)
        return self.norm(self.head_layer(k)(h_BSD, rope, seq))

    def forward(
        self,
        tokens_BS: torch.Tensor,
        seq: SeqInfo | None = None,
        heads: list[int] | None = None,
    ) -> torch.Tensor:
        """Logits ``[B, S, n, V]`` of ``heads`` (default: all, in order). Inference and checks only."""
        assert self.output is not None, "this model has no unembedding (a value backbone)"
        h_BSD = self.trunk(tokens_BS, seq)
        ks = heads if heads is not None else range(1, self.n_heads + 1)
        logits = [self.output(self.head_hidden(h_BSD, k, seq)) for k in ks]
        return torch.stack(logits, dim=2)  # n x [B, S, V] -> [B, S, n, V]


def resolve_dtype(dtype: torch.dtype | str) -> torch.dtype:
    """``"bfloat16"``/``"float32"``/... or a torch dtype -> torch dtype."""
    if isinstance(dtype, torch.dtype):
        return dtype
    from wmtp.errors import ComponentError

    known = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}
    if dtype not in known:
        raise ComponentError(f"unknown dtype {dtype!r} (known: {', '.join(known)})")
    return known[dtype]


__all__ = [
    "Attention",
    "FeedForward",
    "LlamaMTP",
    "RMSNorm",
    "TransformerBlock",
    "apply_rope",
    "resolve_dtype",
    "rms_norm",
    "rope_frequencies",
    "rope_tables",
]
