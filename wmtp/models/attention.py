"""Every attention kernel behind one signature, and the choice of one, made once.

The backends and when each can run are a table (:mod:`wmtp.models.backends`); this module holds
their kernels and :func:`resolve`, which turns a recipe's ``attention`` (``auto`` or a name) into a
:class:`ResolvedAttention` for a device, dtype and use (training or inference). That object is
handed to the model and to the checkpoint loader: no name is resolved twice or parsed back.

Each backend is a function ``attend(q_BSHD, k_BSKD, v_BSKD, seq) -> out_BSHD`` where ``H`` query
heads share ``K`` key/value heads (grouped-query attention, ``H % K == 0``; query head ``h`` reads
key/value head ``h // (H // K)``). Attention is causal. When keys are longer than queries
(``Sk > Sq``, the KV-cache path) the queries are the *last* ``Sq`` positions: query ``i`` sees keys
``j <= i + Sk - Sq`` (bottom-right alignment, as flash-attn does).

Batches come in three shapes, described by ``seq`` (:class:`SeqInfo`, from ``seq.py``):

* plain (``seq`` is ``None``): every row is one causal sequence;
* right-padded (``SeqInfo`` without documents): causal attention is exact for the real tokens,
  since they never look right; padding positions produce values nobody reads. Left padding is
  refused by :meth:`SeqInfo.from_batch`;
* packed (``cu_seqlens`` and/or ``document_ids``): several documents concatenated in a row,
  attention only within a document. ``flex``, ``varlen`` and ``flash_attn`` do this natively;
  ``eager`` masks its materialised scores; ``sdpa`` loops over documents (one causal SDPA call per
  document, exact but slow with many short documents: on CUDA prefer flex/varlen/flash_attn, and
  a warning says so once).

Training never passes a dense mask to SDPA (cuDNN with masks has given NaN gradients on H100).
"""

from __future__ import annotations

import inspect
import logging
import math
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cache
from itertools import pairwise

import torch
import torch.nn.functional as F

from wmtp.errors import ComponentError
from wmtp.models.backends import AUTO, BACKENDS, NAMES, backend
from wmtp.models.seq import SeqInfo

log = logging.getLogger(__name__)

ENV_OVERRIDE = "WMTP_ATTENTION"
"""An attention name in the environment overrides every recipe's (``auto`` included)."""

AttendFn = Callable[..., torch.Tensor]


# --------------------------------------------------------------------------------------------
# Backends
# --------------------------------------------------------------------------------------------


def _gqa_groups(q_BSHD: torch.Tensor, k_BSKD: torch.Tensor) -> int:
    H, K = q_BSHD.shape[2], k_BSKD.shape[2]
    assert H % K == 0, f"query heads {H} not a multiple of key/value heads {K}"
    return H // K


def _allowed_mask(seq: SeqInfo | None, B: int, Sq: int, Sk: int, device) -> torch.Tensor:
    """Boolean ``[B, Sq, Sk]`` (or ``[1, Sq, Sk]``): causal, bottom-right, within documents."""
    q_pos = torch.arange(Sq, device=device)[:, None] + (Sk - Sq)
    allowed = (torch.arange(Sk, device=device)[None, :] <= q_pos)[None]  # [1, Sq, Sk]
    if seq is not None and seq.is_packed:
        assert Sq == Sk, "packed batches have no KV-cache path"
        doc_BS = seq.document_ids_for(B, Sk, device)
        allowed = allowed & (doc_BS[:, :, None] == doc_BS[:, None, :])
    return allowed


def eager_attend(q_BSHD, k_BSKD, v_BSKD, seq: SeqInfo | None = None) -> torch.Tensor:
    """Reference: materialised scores, fp32 softmax, explicit causal and document masks."""
    B, Sq, _, D = q_BSHD.shape
    Sk = k_BSKD.shape[1]
    groups = _gqa_groups(q_BSHD, k_BSKD)
    k_BSHD = k_BSKD.repeat_interleave(groups, dim=2)
    v_BSHD = v_BSKD.repeat_interleave(groups, dim=2)
    allowed = _allowed_mask(seq, B, Sq, Sk, q_BSHD.device)[:, None]  # [B|1, 1, Sq, Sk]
    # fp32 throughout, autocast or not: this is the reference the other backends are held to
    with torch.autocast(q_BSHD.device.type, enabled=False):
        # [B, Sq, H, D] x [B, Sk, H, D] -> [B, H, Sq, Sk]
        scores_BHQK = torch.einsum("bqhd,bkhd->bhqk", q_BSHD.float(), k_BSHD.float())
        scores_BHQK = (scores_BHQK / math.sqrt(D)).masked_fill(~allowed, float("-inf"))
        probs_BHQK = torch.softmax(scores_BHQK, dim=-1)
        out_BSHD = torch.einsum("bhqk,bkhd->bqhd", probs_BHQK, v_BSHD.float())
    return out_BSHD.to(q_BSHD.dtype)


def _sdpa_causal(q_BSHD, k_BSKD, v_BSKD) -> torch.Tensor:
    """One SDPA call, causal with bottom-right alignment; a mask only for chunked decoding."""
    Sq, Sk = q_BSHD.shape[1], k_BSKD.shape[1]
    q, k, v = (t.transpose(1, 2) for t in (q_BSHD, k_BSKD, v_BSKD))  # [B, S, H, D] -> [B, H, S, D]
    if Sq == Sk:
        out = F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True)
    elif Sq == 1:  # one new token sees the whole cache
        out = F.scaled_dot_product_attention(q, k, v, is_causal=False, enable_gqa=True)
    else:  # inference only: a chunk of queries against a longer cache
        mask = _allowed_mask(None, 1, Sq, Sk, q.device)[None]
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, enable_gqa=True)
    return out.transpose(1, 2)  # [B, H, S, D] -> [B, S, H, D]


def sdpa_attend(q_BSHD, k_BSKD, v_BSKD, seq: SeqInfo | None = None) -> torch.Tensor:
    """``F.scaled_dot_product_attention(is_causal=True, enable_gqa=True)``; packed: per document."""
    if seq is None or not seq.is_packed:
        return _sdpa_causal(q_BSHD, k_BSKD, v_BSKD)
    if q_BSHD.is_cuda:
        _warn_once("sdpa on packed batches loops over documents; flex/varlen/flash_attn are faster")
    return _per_document(_sdpa_causal, q_BSHD, k_BSKD, v_BSKD, seq)


def _per_document(fn, q_BSHD, k_BSKD, v_BSKD, seq: SeqInfo) -> torch.Tensor:
    """Apply ``fn`` to each document of a packed batch on its own, then stitch them back."""
    B, S, H, D = q_BSHD.shape
    cu, _ = seq.cu_seqlens_for(B, S, q_BSHD.device)
    flat = [t.reshape(B * S, 1, *t.shape[2:]) for t in (q_BSHD, k_BSKD, v_BSKD)]  # [T, 1, H, D]
    bounds = cu.tolist()
    pieces = [
        fn(*(t[a:b].transpose(0, 1) for t in flat))  # [1, doc_len, H, D]
        for a, b in pairwise(bounds)
    ]
    return torch.cat(pieces, dim=1).view(B, S, H, D)  # [1, T, H, D] -> [B, S, H, D]


# flash-attn ---------------------------------------------------------------------------------


@cache
def _flash_attn_module():
    try:
        import flash_attn
    except Exception as exc:  # ImportError, or a build that fails to load its CUDA library
        return None, f"flash_attn not importable ({type(exc).__name__}: {exc})"
    return flash_attn, f"flash_attn {getattr(flash_attn, '__version__', '?')}"


def flash_attn_missing() -> str | None:
    """Why flash-attn cannot be used here (not installed, or broken); ``None`` when it can."""
    fa, why = _flash_attn_module()
    return why if fa is None else None


def flash_attn_attend(q_BSHD, k_BSKD, v_BSKD, seq: SeqInfo | None = None) -> torch.Tensor:
    """flash-attn's ``flash_attn_func`` (native BSHD and GQA), varlen for packed batches."""
    fa, why = _flash_attn_module()
    if fa is None:
        raise ComponentError(f"attention 'flash_attn' unavailable: {why}")
    if seq is None or not seq.is_packed:
        return fa.flash_attn_func(q_BSHD, k_BSKD, v_BSKD, causal=True)
    B, S, H, D = q_BSHD.shape
    cu, max_len = seq.cu_seqlens_for(B, S, q_BSHD.device)
    q_THD, k_TKD, v_TKD = (t.reshape(B * S, *t.shape[2:]) for t in (q_BSHD, k_BSKD, v_BSKD))
    out_THD = fa.flash_attn_varlen_func(q_THD, k_TKD, v_TKD, cu, cu, max_len, max_len, causal=True)
    return out_THD.view(B, S, H, D)  # [B*S, H, D] -> [B, S, H, D]


# flex ---------------------------------------------------------------------------------------


@cache
def _compiled_flex():
    from torch.nn.attention.flex_attention import flex_attention

    return torch.compile(flex_attention)


def flex_attend(q_BSHD, k_BSKD, v_BSKD, seq: SeqInfo | None = None) -> torch.Tensor:
    """FlexAttention with a causal (and, packed, same-document) block mask.

    Compiled on CUDA (uncompiled for KV-cache steps). On CPU it runs uncompiled, forward only: torch has no flex backward on CPU,
    and compiling it there takes tens of seconds; asking for gradients is a ComponentError.
    """
    from torch.nn.attention.flex_attention import flex_attention

    B, Sq = q_BSHD.shape[:2]
    Sk = k_BSKD.shape[1]
    if not q_BSHD.is_cuda and torch.is_grad_enabled() and q_BSHD.requires_grad:
        raise ComponentError(
            f"attention 'flex' has no backward on {q_BSHD.device.type} in torch {torch.__version__}"
            "; use eager or sdpa there"
        )
    block_mask = _flex_block_mask(
        seq if seq is not None and seq.is_packed else None, B, Sq, Sk, q_BSHD.device
    )
    # compiled for training shapes; decoding steps (Sq != Sk) change shape each call: uncompiled
    kernel = _compiled_flex() if q_BSHD.is_cuda and Sq == Sk else flex_attention
    q, k, v = (t.transpose(1, 2) for t in (q_BSHD, k_BSKD, v_BSKD))  # -> [B, H, S, D]
    out = kernel(q, k, v, block_mask=block_mask, enable_gqa=True)
    return out.transpose(1, 2)  # [B, H, S, D] -> [B, S, H, D]


_LAST_BLOCK_MASK: list = []  # [(seq, shape, mask)]: every layer of a step reuses its batch's mask


def _flex_block_mask(seq: SeqInfo | None, B: int, Sq: int, Sk: int, device):
    """The causal (and same-document) BlockMask, built once per batch layout, not per layer."""
    from torch.nn.attention.flex_attention import create_block_mask

    shape = (B, Sq, Sk, str(device))
    if _LAST_BLOCK_MASK:
        last_seq, last_shape, last_mask = _LAST_BLOCK_MASK[0]
        if last_seq is seq and last_shape == shape:  # the same SeqInfo object: the same batch
            return last_mask
    offset = Sk - Sq
    doc_BS = seq.document_ids_for(B, Sq, device) if seq is not None else None

    def allowed(b, h, q_idx, kv_idx):
        causal = q_idx + offset >= kv_idx
        if doc_BS is None:
            return causal
        return causal & (doc_BS[b, q_idx] == doc_BS[b, kv_idx])

    mask = create_block_mask(
        allowed, B if doc_BS is not None else None, None, Sq, Sk, device=device
    )
    _LAST_BLOCK_MASK[:] = [(seq, shape, mask)]
    return mask


# varlen -------------------------------------------------------------------------------------


@cache
def _varlen_fn():
    """``(varlen_attn, its keyword style, why)``; the signature changed across torch releases."""
    try:
        from torch.nn.attention.varlen import varlen_attn
    except Exception as exc:
        return None, None, f"torch {torch.__version__} has no torch.nn.attention.varlen ({exc})"
    params = inspect.signature(varlen_attn).parameters
    if "is_causal" in params:
        style = "is_causal"
    elif "window_size" in params:
        style = "window_size"
    else:
        return None, None, f"unknown varlen_attn signature {list(params)}"
    return varlen_attn, style, f"varlen_attn ({style}, enable_gqa={'enable_gqa' in params})"


def varlen_missing() -> str | None:
    """Why torch's varlen_attn cannot be used here; ``None`` when this torch has it."""
    fn, _, why = _varlen_fn()
    return why if fn is None else None


def compute_capability() -> int:
    """Major CUDA compute capability of the current GPU (0 without one)."""
    if not torch.cuda.is_available():
        return 0
    return torch.cuda.get_device_capability()[0]


def varlen_attend(q_BSHD, k_BSKD, v_BSKD, seq: SeqInfo | None = None) -> torch.Tensor:
    """``torch.nn.attention.varlen.varlen_attn`` over the flattened batch (rows or documents)."""
    fn, style, why = _varlen_fn()
    if fn is None:
        raise ComponentError(f"attention 'varlen' unavailable: {why}")
    B, Sq, H, D = q_BSHD.shape
    Sk = k_BSKD.shape[1]
    groups = _gqa_groups(q_BSHD, k_BSKD)
    kwargs = {"is_causal": True} if style == "is_causal" else {"window_size": (-1, 0)}
    if "enable_gqa" in inspect.signature(fn).parameters:
        kwargs["enable_gqa"] = True
    elif groups > 1:
        k_BSKD, v_BSKD = (t.repeat_interleave(groups, dim=2) for t in (k_BSKD, v_BSKD))
    if seq is not None and seq.is_packed:
        cu_q, max_q = seq.cu_seqlens_for(B, Sq, q_BSHD.device)
        cu_k, max_k = cu_q, max_q
    else:
        cu_q = torch.arange(0, (B + 1) * Sq, Sq, device=q_BSHD.device, dtype=torch.int32)
        cu_k = torch.arange(0, (B + 1) * Sk, Sk, device=q_BSHD.device, dtype=torch.int32)
        max_q, max_k = Sq, Sk
    q_T, k_T, v_T = (t.reshape(-1, *t.shape[2:]) for t in (q_BSHD, k_BSKD, v_BSKD))  # [B*S, H, D]
    out_THD = fn(q_T, k_T, v_T, cu_q, cu_k, max_q, max_k, **kwargs)
    return out_THD.view(B, Sq, H, D)


# --------------------------------------------------------------------------------------------
# Choosing the backends, once: a ResolvedAttention handed to the model
# --------------------------------------------------------------------------------------------


def kernel(name: str) -> AttendFn:
    """The function of backend ``name`` (an entry of :data:`wmtp.models.backends.BACKENDS`)."""
    return globals()[backend(name).kernel]


@dataclass(frozen=True)
class ResolvedAttention:
    """What a model's attention runs: a backend for plain (and right-padded) batches, one for
    packed batches, and why. Made once by :func:`resolve` (or :meth:`fixed`) and handed to the
    model and the checkpoint loader; nothing resolves it again."""

    plain: str
    packed: str
    reason: str
    _plain_fn: AttendFn = field(init=False, repr=False, compare=False)
    _packed_fn: AttendFn = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_plain_fn", kernel(self.plain))
        object.__setattr__(self, "_packed_fn", kernel(self.packed))

    @classmethod
    def fixed(cls, name: str) -> ResolvedAttention:
        """Backend ``name`` for every layout, unchecked (tests, references, benchmarks)."""
        return cls(name, name, "fixed")

    @property
    def name(self) -> str:
        """For logs: ``sdpa``, or ``sdpa (flex for packed batches)``."""
        if self.plain == self.packed:
            return self.plain
        return f"{self.plain} ({self.packed} for packed batches)"

    def layout(self, seq: SeqInfo | None) -> SeqInfo | None:
        """``seq`` as this attention's blocks get it: the document ids alone where the packed
        backend reads nothing else (``Backend.reads``; ``SeqInfo.by_document_ids``)."""
        if seq is not None and backend(self.packed).reads == "document_ids":
            return seq.by_document_ids()
        return seq

    def attend(self, q_BSHD, k_BSKD, v_BSKD, seq: SeqInfo | None = None) -> torch.Tensor:
        fn = self._packed_fn if seq is not None and seq.is_packed else self._plain_fn
        return fn(q_BSHD, k_BSKD, v_BSKD, seq)


def resolve(
    name: str, device: torch.device | str, dtype: torch.dtype | str, *, training: bool
) -> ResolvedAttention:
    """What ``model.*.attention = name`` runs on ``device`` in ``dtype``, decided once.

    ``WMTP_ATTENTION`` in the environment overrides ``name``. ``auto``: see :func:`auto`. An
    explicit backend that cannot run here (:meth:`Backend.why_not`) is a ComponentError saying
    why; nothing falls back silently. ``training``: gradients flow through attention.
    """
    device_type = torch.device(device).type
    dtype_name = _dtype_name(dtype)
    override = os.environ.get(ENV_OVERRIDE)
    source = f"{ENV_OVERRIDE}={override}" if override else "the recipe"
    name = override or name
    if name == AUTO:
        return auto(device_type, dtype_name, training=training, source=source)
    why_not = backend(name).why_not(device_type, dtype_name, training=training)
    if why_not is not None:
        raise ComponentError(f"attention {name!r} ({source}) cannot run here: {why_not}")
    return ResolvedAttention(name, name, f"requested by {source}")


def runnable(device_type: str, dtype: str, *, training: bool) -> list[str]:
    """Backends of the table that can run here, in table order."""
    return [n for n in NAMES if BACKENDS[n].why_not(device_type, dtype, training=training) is None]


def auto(
    device_type: str, dtype: str, *, training: bool, source: str = "the recipe"
) -> ResolvedAttention:
    """What ``auto`` runs: sdpa off CUDA (flash_attn and varlen need CUDA, flex cannot train on
    the CPU); on CUDA, per layout, :func:`choose_by_layout` from the ranking recorded for this
    GPU by ``wmtp bench attention --record`` (:mod:`wmtp.models.attention_table`)."""
    from wmtp.models.attention_table import find_ranking

    if device_type != "cuda":
        return ResolvedAttention("sdpa", "sdpa", f"auto ({source}): sdpa on {device_type}")
    try:
        ranking = find_ranking(torch.cuda.get_device_name(), dtype)
    except ValueError as exc:
        raise ComponentError(f"attention 'auto': {exc}") from exc
    here = set(runnable(device_type, dtype, training=training))
    plain, packed, why = choose_by_layout(ranking, here)
    return ResolvedAttention(plain, packed, f"auto ({source}): {why}")


def choose_by_layout(ranking, here: set[str]) -> tuple[str, str, str]:
    """``(plain, packed, why)``: per layout, the first backend of ``ranking`` in ``here`` (the
    runnable ones); without a ranking (or a runnable entry), sdpa for plain batches and
    flash_attn, else flex, for packed ones."""
    default = {"plain": "sdpa", "packed": "flash_attn" if "flash_attn" in here else "flex"}
    if ranking is None:
        return default["plain"], default["packed"], "no ranking recorded for this GPU: the default"
    chosen = {
        layout: ranking.first_runnable(layout, here) or default[layout]
        for layout in ("plain", "packed")
    }
    why = (
        f"the fastest runnable of the ranking for {ranking.device}/{ranking.dtype} "
        f"({ranking.source})"
    )
    return chosen["plain"], chosen["packed"], why


def _dtype_name(dtype: torch.dtype | str) -> str:
    return dtype if isinstance(dtype, str) else str(dtype).removeprefix("torch.")


@cache
def _warn_once(message: str) -> None:
    log.warning(message)


__all__ = [
    "ResolvedAttention",
    "SeqInfo",
    "auto",
    "choose_by_layout",
    "eager_attend",
    "flash_attn_attend",
    "flex_attend",
    "kernel",
    "resolve",
    "runnable",
    "sdpa_attend",
    "varlen_attend",
]
