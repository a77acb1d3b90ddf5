"""Decoding's fused projections: a block's matmuls that share an input, run as one.

A batch-1 decoding step is a chain of small matrix-vector products. Each block has seven (q, k,
v, o, w1, w2, w3); q/k/v read the same normalised input, and so do w1/w3. Concatenating their
weights turns the seven into four larger products per block: fewer kernels, each long enough to
stream its weights at the memory's rate (the k and v products of a GQA model are a quarter of q's
size). gpt-fast keeps its model's weights fused this way; wmtp keeps Meta's layout (checkpoints,
LoRA, FSDP and float8 see seven ``nn.Linear``), and decoding keeps a fused *copy* per model.

The copy costs the memory of those five weights again, so it is made only where it fits: plain
``nn.Linear`` layers (no LoRA wrapper, no float8, no sharded ``DTensor``) on a GPU with room to
spare (:data:`FREE_MEMORY_SHARE`). Captured CUDA graphs hold its addresses, so it is refreshed in
place, and only when a weight it copies has changed since (training between evaluations, a
loaded checkpoint): each decoder checks the weights' version counters when it starts.
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass

import torch
import torch.nn as nn

from wmtp.models.llama_mtp import LlamaMTP, TransformerBlock

FREE_MEMORY_SHARE = 0.25
"""The fused copy is made only if it takes at most this share of the GPU's free memory."""


@dataclass
class FusedBlock:
    """One block's fused weights: ``wqkv`` (q, k and v rows stacked, ``[q + 2 kv, dim]``) and
    ``w13`` (w1 then w3, ``[2 hidden, dim]``), with the sizes to split their outputs."""

    wqkv: torch.Tensor
    w13: torch.Tensor
    q_size: int
    kv_size: int
    hidden: int


def _sources(block: TransformerBlock) -> tuple[list[nn.Module], list[nn.Module]]:
    attention, ffn = block.attention, block.feed_forward
    return [attention.wq, attention.wk, attention.wv], [ffn.w1, ffn.w3]


def fusable(block: TransformerBlock) -> bool:
    """Whether ``block``'s q/k/v and w1/w3 are plain linear layers with ordinary weights of one
    dtype and device (a LoRA wrapper, a float8 linear or a sharded weight is left alone)."""
    qkv, w13 = _sources(block)
    layers = [*qkv, *w13]
    if any(type(layer) is not nn.Linear or layer.bias is not None for layer in layers):
        return False
    weights = [layer.weight for layer in layers]
    if any(type(w) not in (torch.Tensor, nn.Parameter) for w in weights):
        return False
    return len({(w.dtype, w.device) for w in weights}) == 1


class FusedProjections:
    """The fused copies of every fusable block of one model, kept with the model."""

    def __init__(self, blocks: list[TransformerBlock]):
        self._blocks = {id(block): (block, self._empty(block)) for block in blocks}
        self._versions: dict[int, tuple[int, ...]] = {}
        self.nbytes = sum(f.wqkv.nbytes + f.w13.nbytes for _, f in self._blocks.values())
        self.refresh()

    @staticmethod
    @torch.inference_mode(False)
    def _empty(block: TransformerBlock) -> FusedBlock:
        qkv, w13 = _sources(block)
        like = qkv[0].weight
        rows = sum(layer.out_features for layer in qkv)
        dim = like.shape[1]
        return FusedBlock(
            wqkv=torch.empty(rows, dim, dtype=like.dtype, device=like.device),
            w13=torch.empty(2 * w13[0].out_features, dim, dtype=like.dtype, device=like.device),
            q_size=qkv[0].out_features,
            kv_size=qkv[1].out_features,
            hidden=w13[0].out_features,
        )

    def of(self, block: TransformerBlock) -> FusedBlock | None:
        """``block``'s fused weights, or ``None`` when it is not fused."""
        found = self._blocks.get(id(block))
        return found[1] if found is not None and found[0] is block else None

    @torch.inference_mode(False)
    def refresh(self) -> int:
        """Copy every block whose weights changed since the last copy; how many were copied."""
        with torch.no_grad():
            return self._copy_changed()

    def _copy_changed(self) -> int:
        copied = 0
        for key, (block, fused) in self._blocks.items():
            qkv, w13 = _sources(block)
            weights = [layer.weight for layer in (*qkv, *w13)]
            versions = tuple(v for w in weights for v in (w.data_ptr(), w._version))
            if self._versions.get(key) == versions:
                continue
            torch.cat([layer.weight for layer in qkv], out=fused.wqkv)
            torch.cat([layer.weight for layer in w13], out=fused.w13)
            self._versions[key] = versions
            copied += 1
        return copied


_FUSED: weakref.WeakKeyDictionary[LlamaMTP, dict[tuple, FusedProjections | None]] = (
    weakref.WeakKeyDictionary()
)
"""Each model's fused copies by (device, dtype, force), or ``None`` where none are made."""


def fused_projections(model: LlamaMTP, *, force: bool = False) -> FusedProjections | None:
    """``model``'s fused copies, made on first use and refreshed; ``None`` where they are not
    made: on a CPU (unless ``force``: the tests' reference), with no fusable block, or where the
    copy would take more than :data:`FREE_MEMORY_SHARE` of the GPU's free memory."""
    param = next(model.parameters())
    key = (param.device, param.dtype, force)
    made = _FUSED.setdefault(model, {})
    if key in made:
        fused = made[key]
        if fused is not None:
            fused.refresh()
        return fused
    blocks = [b for b in (*model.layers, *model.extra_heads) if fusable(b)]
    fused = None
    if blocks and (force or param.device.type == "cuda") and _fits(blocks, param.device):
        fused = FusedProjections(blocks)
    made[key] = fused
    return fused


def fused_bytes(model: LlamaMTP) -> int:
    """Bytes of ``model``'s fused copies, over every device and dtype it was decoded in."""
    return sum(f.nbytes for f in _FUSED.get(model, {}).values() if f is not None)


def _fits(blocks: list[TransformerBlock], device: torch.device) -> bool:
    if device.type != "cuda":
        return True
    needed = sum(
        layer.weight.nbytes for block in blocks for group in _sources(block) for layer in group
    )
    free, _ = torch.cuda.mem_get_info(device)
    return needed <= FREE_MEMORY_SHARE * free


__all__ = [
    "FREE_MEMORY_SHARE",
    "FusedBlock",
    "FusedProjections",
    "fusable",
    "fused_bytes",
    "fused_projections",
]
