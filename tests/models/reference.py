"""An independent, deliberately plain Meta-layout MTP forward pass (test reference only).

It reads a raw Meta state dict and shares no code with ``wmtp.models``: RoPE through complex
numbers (Meta's original formulation), GQA by repeating key/value heads, an explicit causal mask.
"""

from __future__ import annotations

import torch


def reference_mtp_logits(sd: dict, params: dict, tokens: torch.Tensor) -> torch.Tensor:
    """Logits [B, S, n_future_tokens, V] of a Meta MTP checkpoint ``sd`` with ``params``."""
    dim, n_heads = params["dim"], params["n_heads"]
    n_kv = params.get("n_kv_heads") or n_heads
    n_future, eps = params.get("n_future_tokens", 1), params["norm_eps"]
    hd, B, S = dim // n_heads, tokens.shape[0], tokens.shape[1]
    freqs = 1.0 / (params.get("rope_theta", 10000.0) ** (torch.arange(0, hd, 2).float() / hd))
    cis = torch.polar(torch.ones(S, hd // 2), torch.outer(torch.arange(S).float(), freqs))

    def norm(x, w):
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * w

    def rot(x):
        xc = torch.view_as_complex(x.reshape(*x.shape[:-1], -1, 2))
        return torch.view_as_real(xc * cis[None, :, None, :]).flatten(3)

    def layer(x, p):
        a = norm(x, sd[p + "attention_norm.weight"])
        q = rot((a @ sd[p + "attention.wq.weight"].T).view(B, S, n_heads, hd))
        k = rot((a @ sd[p + "attention.wk.weight"].T).view(B, S, n_kv, hd))
        v = (a @ sd[p + "attention.wv.weight"].T).view(B, S, n_kv, hd)
        k, v = (t.repeat_interleave(n_heads // n_kv, dim=2) for t in (k, v))
        scores = torch.einsum("bqhd,bkhd->bhqk", q, k) / hd**0.5
        scores = scores + torch.full((S, S), float("-inf")).triu(1)
        att = torch.einsum("bhqk,bkhd->bqhd", scores.softmax(-1), v).reshape(B, S, dim)
        x = x + att @ sd[p + "attention.wo.weight"].T
        f = norm(x, sd[p + "ffn_norm.weight"])
        gate = torch.nn.functional.silu(f @ sd[p + "feed_forward.w1.weight"].T)
        up = f @ sd[p + "feed_forward.w3.weight"].T
        return x + (gate * up) @ sd[p + "feed_forward.w2.weight"].T

    n_layers = params["n_layers"]
    h = sd["tok_embeddings.weight"][tokens]
    for i in range(n_layers - n_future):
        h = layer(h, f"layers.{i}.")
    heads = [f"layers.{n_layers - n_future}."] + [f"extra_heads.{j}." for j in range(n_future - 1)]
    outs = [norm(layer(h, p), sd["norm.weight"]) @ sd["output.weight"].T for p in heads]
    return torch.stack(outs, dim=2)
