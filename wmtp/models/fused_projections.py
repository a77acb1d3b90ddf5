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

The heads' layers get one more copy, ``StackedLayers``: a self-speculative step runs every kept
head's layer on the same trunk output, so their weights stacked ``[n, ...]`` run as one batched
block. One batched product per projection reads the n layers' weights in one kernel (the H200
runs a batch-1 product of one 1B layer's 8-17 MB at 1.4-2.3 TB/s, well under its 4.2), and the
heads' norms, RoPE, attention and SwiGLU run as one kernel each instead of n.
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


@dataclass
class StackedLayers:
    """n layers' weights stacked in order along a first dim, each as ``nn.Linear`` keeps it
    (``[out, in]``): ``wqkv`` ``[n, q + 2 kv, dim]``, ``wo`` ``[n, dim, q]``, ``w13`` ``[n, 2
    hidden, dim]``, ``w2`` ``[n, dim, hidden]``, and the two norms' weights ``[n, dim]``."""

    wqkv: torch.Tensor
    wo: torch.Tensor
    w13: torch.Tensor
    w2: torch.Tensor
    attention_norm: torch.Tensor
    ffn_norm: torch.Tensor
    q_size: int
    kv_size: int
    hidden: int
    eps: float

    @property
    def n(self) -> int:
        return len(self.wqkv)

    @property
    def nbytes(self) -> int:
        tensors = (self.wqkv, self.wo, self.w13, self.w2, self.attention_norm, self.ffn_norm)
        return sum(t.nbytes for t in tensors)

    @staticmethod
    @torch.inference_mode(False)
    def empty_like(blocks: tuple[TransformerBlock, ...]) -> StackedLayers:
        block, n = blocks[0], len(blocks)
        (wq, wk, _), (w1, _) = _sources(block)
        like = wq.weight

        def stack(*shape: int) -> torch.Tensor:
            return torch.empty(n, *shape, dtype=like.dtype, device=like.device)

        dim, q, kv, hidden = like.shape[1], wq.out_features, wk.out_features, w1.out_features
        return StackedLayers(
            wqkv=stack(q + 2 * kv, dim), wo=stack(*block.attention.wo.weight.shape),
            w13=stack(2 * hidden, dim), w2=stack(*block.feed_forward.w2.weight.shape),
            attention_norm=stack(dim), ffn_norm=stack(dim), q_size=q, kv_size=kv, hidden=hidden,
            eps=block.attention_norm.eps,
        )  # fmt: skip

    def copy_layer(self, i: int, block: TransformerBlock) -> None:
        """Layer ``i`` of the stack from ``block``'s weights."""
        qkv, w13 = _sources(block)
        torch.cat(_weights(qkv), out=self.wqkv[i])
        torch.cat(_weights(w13), out=self.w13[i])
        self.wo[i].copy_(block.attention.wo.weight)
        self.w2[i].copy_(block.feed_forward.w2.weight)
        self.attention_norm[i].copy_(block.attention_norm.weight)
        self.ffn_norm[i].copy_(block.ffn_norm.weight)


def _stacked_weights(block: TransformerBlock) -> list[torch.Tensor]:
    """Every weight ``StackedLayers.copy_layer`` reads from ``block``."""
    qkv, w13 = _sources(block)
    others = [block.attention.wo, block.feed_forward.w2, block.attention_norm, block.ffn_norm]
    return _weights([*qkv, *w13, *others])


def stackable(blocks: tuple[TransformerBlock, ...]) -> bool:
    """Whether ``blocks`` can run as one batched block: two or more fusable blocks with plain
    ``wo`` and ``w2`` too, every weight (norms included) of one dtype and device, one epsilon."""
    if len(blocks) < 2 or not all(fusable(b) for b in blocks):
        return False
    outputs = [m for b in blocks for m in (b.attention.wo, b.feed_forward.w2)]
    weights = [w for b in blocks for w in _stacked_weights(b)]
    eps = {b.attention_norm.eps for b in blocks} | {b.ffn_norm.eps for b in blocks}
    return _plain_linears(outputs) and _plain_weights(weights) and len(eps) == 1


def _sources(block: TransformerBlock) -> tuple[list[nn.Module], list[nn.Module]]:
    attention, ffn = block.attention, block.feed_forward
    return [attention.wq, attention.wk, attention.wv], [ffn.w1, ffn.w3]


def fusable(block: TransformerBlock) -> bool:
    """Whether ``block``'s q/k/v and w1/w3 are plain linear layers with ordinary weights of one
    dtype and device (a LoRA wrapper, a float8 linear or a sharded weight is left alone)."""
    qkv, w13 = _sources(block)
    layers = [*qkv, *w13]
    return _plain_linears(layers) and _plain_weights(_weights(layers))


def _plain_linears(layers: list[nn.Module]) -> bool:
    """Every layer an ``nn.Linear`` without bias (no LoRA wrapper, no float8 linear)."""
    return all(type(layer) is nn.Linear and layer.bias is None for layer in layers)


def _plain_weights(weights: list[torch.Tensor]) -> bool:
    """Ordinary tensors (no sharded ``DTensor``) of one dtype and device."""
    if any(type(w) not in (torch.Tensor, nn.Parameter) for w in weights):
        return False
    return len({(w.dtype, w.device) for w in weights}) == 1


class FusedProjections:
    """The fused copies of every fusable block of one model, kept with the model."""

    def __init__(self, blocks: list[TransformerBlock]):
        self._blocks = {id(block): (block, self._empty(block)) for block in blocks}
        self._stacks: dict[tuple[int, ...], tuple[tuple[TransformerBlock, ...], StackedLayers]]
        self._stacks = {}
        self._versions: dict[object, tuple[int, ...]] = {}
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

    @property
    def stacked_layers(self) -> int:
        """Layers stacked so far, over every set of kept heads."""
        return sum(stack.n for _, stack in self._stacks.values())

    def stacked(self, blocks: tuple[TransformerBlock, ...]) -> StackedLayers | None:
        """``blocks`` (the kept heads' layers, in order) stacked, made on first use where they
        are ``stackable`` and fit (:data:`FREE_MEMORY_SHARE`); ``None`` otherwise."""
        key = tuple(id(b) for b in blocks)
        found = self._stacks.get(key)
        if found is not None and all(a is b for a, b in zip(found[0], blocks, strict=True)):
            return found[1]
        if not stackable(blocks) or not _fits(_stacked_bytes(blocks), blocks[0].ffn_norm.weight):
            return None
        stack = StackedLayers.empty_like(blocks)
        self._stacks[key] = (blocks, stack)
        self.nbytes += stack.nbytes
        self.refresh()
        return stack

    @torch.inference_mode(False)
    def refresh(self) -> int:
        """Copy every block whose weights changed since the last copy; how many were copied."""
        with torch.no_grad():
            return self._copy_changed()

    def _copy_changed(self) -> int:
        copied = 0
        for key, (block, fused) in self._blocks.items():
            qkv, w13 = _sources(block)
            if self._changed(key, _weights([*qkv, *w13])):
                torch.cat(_weights(qkv), out=fused.wqkv)
                torch.cat(_weights(w13), out=fused.w13)
                copied += 1
        for key, (blocks, stack) in self._stacks.items():
            for i, block in enumerate(blocks):
                if self._changed((key, i), _stacked_weights(block)):
                    stack.copy_layer(i, block)
                    copied += 1
        return copied

    def _changed(self, key: object, weights: list[torch.Tensor]) -> bool:
        """Whether ``weights`` changed since ``key``'s last copy (noted as copied now)."""
        versions = tuple(v for w in weights for v in (w.data_ptr(), w._version))
        if self._versions.get(key) == versions:
            return False
        self._versions[key] = versions
        return True


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
    needed = sum(w.nbytes for b in blocks for group in _sources(b) for w in _weights(group))
    if blocks and (force or param.device.type == "cuda") and _fits(needed, param):
        fused = FusedProjections(blocks)
    made[key] = fused
    return fused


def fused_bytes(model: LlamaMTP) -> int:
    """Bytes of ``model``'s fused copies, over every device and dtype it was decoded in."""
    return sum(f.nbytes for f in _FUSED.get(model, {}).values() if f is not None)


def stacked_layers(model: LlamaMTP) -> int:
    """Head layers of ``model`` stacked for batched steps (``StackedLayers``), over every set
    of kept heads, device and dtype it was decoded in."""
    return sum(f.stacked_layers for f in _FUSED.get(model, {}).values() if f is not None)


def _weights(layers: list[nn.Module]) -> list[torch.Tensor]:
    return [layer.weight for layer in layers]


def _stacked_bytes(blocks: tuple[TransformerBlock, ...]) -> int:
    return sum(w.nbytes for b in blocks for w in _stacked_weights(b))


def _fits(needed: int, like: torch.Tensor) -> bool:
    """Whether a copy of ``needed`` bytes on ``like``'s device fits (always on a CPU)."""
    if like.device.type != "cuda":
        return True
    free, _ = torch.cuda.mem_get_info(like.device)
    return needed <= FREE_MEMORY_SHARE * free


__all__ = [
    "FREE_MEMORY_SHARE",
    "FusedBlock",
    "FusedProjections",
    "StackedLayers",
    "fusable",
    "fused_bytes",
    "fused_projections",
    "stackable",
    "stacked_layers",
]
