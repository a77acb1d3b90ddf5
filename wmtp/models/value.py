"""The value model (critic): a LLaMA backbone with one value per token.

The backbone is a one-head LlamaMTP without unembedding; its normed final hidden state feeds a
value head: ``linear``, ``sigmoid`` (values in (0, 1); losses use the pre-sigmoid ``scores``), or
``mlp`` (hidden -> hidden/4 -> hidden/8 -> 1 unless widths are given). A backbone loads from any
checkpoint format (an MTP checkpoint gives its trunk and head 1; the unembedding is dropped);
a wmtp value checkpoint also restores its head.
"""

from __future__ import annotations

import dataclasses
import logging
from itertools import pairwise
from pathlib import Path

import torch
from torch import nn

from wmtp.errors import CheckpointError
from wmtp.models.args import ModelArgs
from wmtp.models.attention import ResolvedAttention, SeqInfo
from wmtp.models.descriptions import BACKBONE, hf_and_wmtp_name
from wmtp.models.llama_mtp import LlamaMTP, resolve_dtype
from wmtp.models.value_heads import head_config, head_spec

log = logging.getLogger(__name__)

ACTIVATIONS = {"gelu": nn.GELU, "relu": nn.ReLU, "silu": nn.SiLU}


def score_in_fp32(proj: nn.Linear, h_BSD: torch.Tensor) -> torch.Tensor:
    """``proj(h)`` to one score per token, ``[B, S]``, computed in fp32 whatever the model's
    dtype or autocast: TD errors are differences of neighbouring values, and a bf16 output would
    round a score near 0.5 to steps of 0.002 (a ``dim -> 1`` product: fp32 costs nothing)."""
    bias = None if proj.bias is None else proj.bias.float()
    with torch.autocast(h_BSD.device.type, enabled=False):
        return nn.functional.linear(h_BSD.float(), proj.weight.float(), bias).squeeze(-1)


class LinearValueHead(nn.Module):
    """``score = w . h + b``; the value is the score."""

    def __init__(self, dim: int):
        super().__init__()
        self.proj = nn.Linear(dim, 1)

    def score(self, h_BSD: torch.Tensor) -> torch.Tensor:
        return score_in_fp32(self.proj, h_BSD)

    def activate(self, score_BS: torch.Tensor) -> torch.Tensor:
        return score_BS


class SigmoidValueHead(LinearValueHead):
    """A linear score squashed to (0, 1): the value is ``sigmoid(score)``."""

    def activate(self, score_BS: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(score_BS)


class MLPValueHead(nn.Module):
    """An MLP ``dim -> hidden... -> 1`` (the widths: ``MLPHeadSpec.hidden_widths``)."""

    def __init__(self, dim: int, hidden: list[int], activation: str = "gelu", dropout: float = 0.0):
        super().__init__()
        widths = [dim, *hidden]
        layers: list[nn.Module] = []
        for w_in, w_out in pairwise(widths):
            layers += [nn.Linear(w_in, w_out), ACTIVATIONS[activation]()]
            if dropout > 0:
                layers.append(nn.Dropout(dropout))
        layers.append(nn.Linear(widths[-1], 1))
        self.mlp = nn.Sequential(*layers)

    def score(self, h_BSD: torch.Tensor) -> torch.Tensor:
        return score_in_fp32(self.mlp[-1], self.mlp[:-1](h_BSD))

    def activate(self, score_BS: torch.Tensor) -> torch.Tensor:
        return score_BS


def build_value_head(head, dim: int) -> nn.Module:
    """The head module of ``head`` (kind name, dict or recipe spec), built by the registry's
    ``value_head`` builder of its kind."""
    from wmtp import registry

    spec = head_spec(head_config(head))
    return registry.get("value_head", spec.kind)(spec, dim)


class ValueModel(nn.Module):
    """Per-token values ``[B, S]``: V[t] is the value after token t."""

    def __init__(self, args: ModelArgs, head="linear", attention: ResolvedAttention | str = "sdpa"):
        super().__init__()
        self.args = dataclasses.replace(args, n_future_tokens=1)
        self.head_config = head_config(head)
        self.backbone = LlamaMTP(self.args, attention=attention, unembedding=False)
        self.head = build_value_head(self.head_config, self.args.dim)

    def blocks(self) -> list[nn.Module]:
        """Every TransformerBlock, for sharding and activation checkpointing."""
        return self.backbone.blocks()

    @property
    def attention(self) -> ResolvedAttention:
        """What the backbone's attention runs."""
        return self.backbone.attention

    def hidden(self, tokens_BS: torch.Tensor, seq: SeqInfo | None = None) -> torch.Tensor:
        """The backbone's normed final hidden state ``[B, S, D]``."""
        return self.backbone.head_hidden(self.backbone.trunk(tokens_BS, seq), 1, seq)

    def scores(self, tokens_BS: torch.Tensor, seq: SeqInfo | None = None) -> torch.Tensor:
        """Pre-activation scores ``[B, S]`` in fp32 (what the pairwise losses use)."""
        return self.head.score(self.hidden(tokens_BS, seq))

    def forward(self, tokens_BS: torch.Tensor, seq: SeqInfo | None = None) -> torch.Tensor:
        """Values ``[B, S]`` in fp32."""
        return self.head.activate(self.scores(tokens_BS, seq))

    def save(self, directory: str | Path, *, recipe_toml: str | None = None) -> Path:
        """wmtp safetensors with ``kind = value_model`` and the head config beside them."""
        from wmtp.models.checkpoint import save_wmtp

        info = {"kind": "value_model", "head": self.head_config}
        return save_wmtp(self, directory, args=self.args, info=info, recipe_toml=recipe_toml)

    @classmethod
    def from_pretrained(
        cls,
        path: str | Path,
        *,
        head=None,
        dtype: torch.dtype | str = "bfloat16",
        attention: ResolvedAttention | str = "auto",
        device: torch.device | str = "cpu",
        format: str = "auto",
    ) -> ValueModel:
        """A value model from a wmtp value checkpoint (head included) or a backbone from any
        format (Meta, HF, wmtp policy) with a freshly initialised ``head``. ``attention``: a
        :class:`ResolvedAttention`, or a name resolved here for inference."""
        from wmtp.models.attention import resolve
        from wmtp.models.checkpoint import check_shapes, read_checkpoint

        dtype = resolve_dtype(dtype)
        ckpt = read_checkpoint(path, format, dtype)
        if isinstance(attention, str):
            attention = resolve(attention, device, dtype, training=False)
        if ckpt.info.get("kind") == "value_model":
            saved = ckpt.info["head"]
            if head is not None and head_config(head) != saved:
                raise CheckpointError(
                    f"checkpoint {path}: value head {saved} differs from the requested {head_config(head)}"
                )
            head, sd, fresh_head = saved, ckpt.state_dict, False
        else:
            sd, fresh_head = _backbone_state_dict(ckpt), True
        with torch.device("meta"):
            model = cls(ckpt.args, head=head or "linear", attention=attention)
        expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
        if fresh_head:
            expected = {k: s for k, s in expected.items() if not k.startswith("head.")}
        check_shapes(expected, sd, str(path), hf_and_wmtp_name if ckpt.format == "hf" else repr)
        sd = {k: v.to(device=device, dtype=dtype) for k, v in sd.items()}
        model.load_state_dict(sd, strict=not fresh_head, assign=True)
        if fresh_head:
            model.head.to_empty(device=device)
            for module in model.head.modules():
                if isinstance(module, nn.Linear):
                    module.reset_parameters()
            model.head.to(dtype)
        return model


def _backbone_state_dict(ckpt) -> dict[str, torch.Tensor]:
    """Trunk + head-1 layer + final norm of any checkpoint, under ``backbone.``."""
    from wmtp.models.checkpoint import resize_heads

    log.info(
        "value backbone from %s: trunk + head 1 of %d heads, unembedding dropped",
        ckpt.path,
        ckpt.args.n_future_tokens,
    )
    ckpt.args, sd = resize_heads(ckpt.args, ckpt.state_dict, 1)
    return {f"{BACKBONE}{k}": v for k, v in sd.items() if k != "output.weight"}


__all__ = [
    "LinearValueHead",
    "MLPValueHead",
    "SigmoidValueHead",
    "ValueModel",
    "build_value_head",
    "head_config",
]
