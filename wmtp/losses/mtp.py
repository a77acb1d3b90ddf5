"""Weighted multi-token-prediction cross-entropy whose ``[B, S, n, V]`` logits never exist.

Conventions (../shared/DESIGN.md): labels are *unshifted* (``labels[t] == input_ids[t]``, -100 =
ignore); head k (k = 1..n) at position t scores ``labels[t + k]``; a token weight belongs to the
target it scores, so head k uses ``w[t + k]``; each head's loss is ``sum(w * ce) / sum(w)`` over
valid targets; heads are averaged, optionally with per-depth weights.

Three strategies (``training.mtp_loss``, the same names here and in the logs) compute the same
gradients (tested to float32 rounding):

- ``"per_head"``: the MTP paper's method. The trunk output is detached; each head runs forward
  and backward in turn, accumulating its gradient at the trunk output; then one backward runs
  through the trunk. Only one head's activations are alive at a time. With ``one_backward``
  (which the trainer sets for a sharded model: FSDP2 wants one backward per micro-batch) it runs
  as one graph instead: the head layers stay in it (their activations live until the backward,
  or are checkpointed with the trunk's blocks), while each head's unembedding gradients are still
  computed in its forward and the heads share one fp32 ``[V, D]`` weight gradient
  (:class:`~wmtp.losses.linear_ce.SharedWeightGradient`). Nothing is recomputed.
- ``"chunked"``: one graph, one backward; every head (its layer, the final norm and the loss) is
  wrapped in activation checkpointing, so the forward keeps only the trunk output per head and
  the backward recomputes one head at a time. Same peak as ``per_head``, plus one recomputed head
  forward.
- ``"joint"``: every head kept in the graph with its whole logits; the reference, and the fastest
  when memory is ample.

All but ``joint`` score a head through :func:`linear_cross_entropy` (``linear_ce.py``), which
computes the logits in chunks of ``chunk_size`` target tokens (fp32 softmax), so only one
``[chunk, V]`` block exists at a time (``chunk_size = 0``: one chunk, the whole head).
``per_head`` computes each chunk's gradient in the forward (3 matmuls a chunk); ``chunked``,
whose head forward runs again in the backward, recomputes the logits there.

Because the memory-efficient paths run their own backward, the training step calls
:func:`loss_and_backward`; it never returns a graph to call ``.backward()`` on. Gradient
synchronisation across ranks is the trainer's (``wmtp.train.loop``): nothing here knows of FSDP.
"""

from __future__ import annotations

import contextlib
import typing
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from wmtp.losses.linear_ce import SharedWeightGradient, linear_cross_entropy

IGNORE_INDEX = -100
Strategy = Literal["per_head", "chunked", "joint"]

HeadWeightFn = Callable[[int, torch.Tensor, torch.Tensor], torch.Tensor]
"""Per-head weights: ``fn(k, ce_BT, targets_BT) -> w_BT`` with ``T = S - k``.

``ce_BT`` is head k's detached fp32 cross-entropy per target (0 where the target is ignored), so a
weighting such as Rho-1 can select tokens by the policy's own loss. Called once per head."""


@dataclass(frozen=True)
class MTPLossConfig:
    """How the MTP loss is computed (numerics: ``depth_weights``; memory/speed: the rest)."""

    strategy: Strategy = "per_head"
    one_backward: bool = False
    """``per_head`` only: one backward per micro-batch (a sharded model's) instead of one per head."""
    chunk_size: int | None = None
    """Target tokens per logits block; ``None`` sizes blocks to ``LOGITS_BLOCK_BYTES`` of fp32
    logits (fewer, larger blocks are faster on a GPU); 0 computes each head in one block."""
    depth_weights: tuple[float, ...] | None = None
    """Relative weight of heads 1..n in the average; ``None`` = equal."""

    def __post_init__(self) -> None:
        assert self.strategy in typing.get_args(Strategy), f"unknown strategy {self.strategy!r}"
        assert not self.one_backward or self.strategy == "per_head", "one_backward is per_head's"


@dataclass
class MTPStats:
    """Detached fp32 per-head sums of one micro-batch; the loop sums them over micro-batches/ranks.

    The logged loss of head k is ``weighted_ce[k] / weight_sum[k]``, its accuracy
    ``n_correct[k] / n_tokens[k]``.
    """

    weighted_ce_K: torch.Tensor
    weight_sum_K: torch.Tensor
    ce_sum_K: torch.Tensor
    n_tokens_K: torch.Tensor
    n_correct_K: torch.Tensor

    def as_tensor(self) -> torch.Tensor:
        """``[5, K]``: one tensor to all-reduce."""
        return torch.stack(
            [
                self.weighted_ce_K,
                self.weight_sum_K,
                self.ce_sum_K,
                self.n_tokens_K,
                self.n_correct_K,
            ]
        )

    @classmethod
    def from_tensor(cls, stats_5K: torch.Tensor) -> MTPStats:
        return cls(*stats_5K.unbind(0))

    def __add__(self, other: MTPStats) -> MTPStats:
        return MTPStats.from_tensor(self.as_tensor() + other.as_tensor())

    def head_losses(self) -> torch.Tensor:
        """``[K]`` weighted mean cross-entropy of each head (NaN-free: 0 where no weight)."""
        return self.weighted_ce_K / self.weight_sum_K.clamp_min(1e-12)

    def head_accuracy(self) -> torch.Tensor:
        return self.n_correct_K / self.n_tokens_K.clamp_min(1)

    def total_loss(self, depth_weights: tuple[float, ...] | None = None) -> torch.Tensor:
        """The optimised objective: head losses averaged with the per-depth weights (numbers on
        the host: a list copied to a GPU would wait for it)."""
        d_K = _depth_weights(depth_weights, self.weighted_ce_K.numel(), torch.device("cpu"))
        losses_K = self.head_losses()
        return torch.stack([loss * d for loss, d in zip(losses_K, d_K.tolist(), strict=True)]).sum()


def plain_cross_entropy(
    hidden_ND: torch.Tensor, weight_VD: torch.Tensor, targets_N: torch.Tensor, coef_N: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The same quantities through autograd with the whole ``[N, V]`` logits (the reference)."""
    logits_NV = (hidden_ND @ weight_VD.to(hidden_ND.dtype).T).float()
    ce_N = F.cross_entropy(logits_NV, targets_N, reduction="none")
    correct_N = logits_NV.detach().argmax(dim=-1) == targets_N
    return (coef_N * ce_N).sum(), ce_N.detach(), correct_N


# --- per-head targets and weights ---------------------------------------------------------------


def _depth_weights(depth: tuple[float, ...] | None, n: int, device: torch.device) -> torch.Tensor:
    if depth is None:
        return torch.full((n,), 1.0 / n, device=device)
    assert len(depth) == n, f"depth_weights has {len(depth)} entries for {n} heads"
    d_K = torch.tensor(depth, dtype=torch.float32, device=device)
    return d_K / d_K.sum()


def head_targets(
    labels_BS: torch.Tensor, k: int, document_ids_BS: torch.Tensor | None = None
) -> torch.Tensor:
    """``[B, S-k]`` targets of head k: ``labels[:, t + k]`` for positions t = 0..S-k-1.

    In a packed batch (``document_ids_BS`` given) a target in another document than position t
    is ignored: head k never predicts across a document boundary.
    """
    targets_BT = labels_BS[:, k:]
    if document_ids_BS is None:
        return targets_BT
    same_doc_BT = document_ids_BS[:, k:] == document_ids_BS[:, :-k]
    return torch.where(same_doc_BT, targets_BT, IGNORE_INDEX)


def head_weights(weights_BS: torch.Tensor | None, targets_BT: torch.Tensor, k: int) -> torch.Tensor:
    """``[B, S-k]`` fp32 weights of head k's targets (``w[t + k]``), 0 where ignored."""
    valid_BT = targets_BT != IGNORE_INDEX
    if weights_BS is None:
        return valid_BT.float()
    return torch.where(valid_BT, weights_BS[:, k:].float(), 0.0)


def weight_sums(
    labels_BS: torch.Tensor,
    n_heads: int,
    weights_BS: torch.Tensor | None = None,
    document_ids_BS: torch.Tensor | None = None,
) -> torch.Tensor:
    """``[K]`` sum of weights per head: the loss denominators (sum them over a global batch)."""
    sums = [
        head_weights(weights_BS, head_targets(labels_BS, k, document_ids_BS), k).sum()
        for k in range(1, n_heads + 1)
    ]
    return torch.stack(sums)


def valid_target_index(
    labels_BS: torch.Tensor, n_heads: int, document_ids_BS: torch.Tensor | None = None
) -> list[torch.Tensor]:
    """Per head k, the flat indices into ``[B * (S-k)]`` of its valid targets (``head_targets``
    not ignored). Their count decides the loss's shapes, so computing them on a GPU makes the host
    wait for the device: the training pipeline computes them from the batch on the host before it
    is copied (:func:`wmtp.train.pipeline.host_target_index`); on the device this is the fallback."""
    return [
        (head_targets(labels_BS, k, document_ids_BS) != IGNORE_INDEX)
        .reshape(-1)
        .nonzero()
        .squeeze(1)
        for k in range(1, n_heads + 1)
    ]


def document_ids(seq, labels_BS: torch.Tensor) -> torch.Tensor | None:
    """The document of every token of a packed batch (``None`` for plain or padded batches)."""
    if seq is None or not seq.is_packed:
        return None
    B, S = labels_BS.shape
    return seq.document_ids_for(B, S, labels_BS.device)


# --- the loss -----------------------------------------------------------------------------------


@dataclass
class _HeadJob:
    """What one head needs: its flat valid targets, their positions and loss coefficients."""

    k: int
    index_N: torch.Tensor  # flat indices into [B*(S-k)] of valid targets
    targets_N: torch.Tensor
    weights_N: torch.Tensor
    coef_N: torch.Tensor


def _head_hidden_valid(model, h_BSD, k: int, seq, index_N: torch.Tensor) -> torch.Tensor:
    """Head k's normed hidden states at the positions of its valid targets: ``[N, D]``."""
    hk_BSD = model.head_hidden(h_BSD, k, seq=seq)
    B, S, D = hk_BSD.shape
    hk_BTD = hk_BSD[:, : S - k]
    return hk_BTD.reshape(B * (S - k), D).index_select(0, index_N)  # [B*T, D] -> [N, D]


def _score_head(
    model, h_BSD, job: _HeadJob, seq, cfg: MTPLossConfig, shared: SharedWeightGradient | None = None
):
    hidden_ND = _head_hidden_valid(model, h_BSD, job.k, seq, job.index_N)
    weight_VD = model.output.weight
    if cfg.strategy == "joint":
        return plain_cross_entropy(hidden_ND, weight_VD, job.targets_N, job.coef_N)
    if shared is not None:  # per_head in one backward: the weight's gradient goes through `shared`
        return linear_cross_entropy(
            hidden_ND,
            weight_VD.detach(),
            job.targets_N,
            job.coef_N,
            cfg.chunk_size,
            weight_grad_into=shared.buffer,
        )
    # chunked: this call runs again in the backward, so gradients wait for that run
    return linear_cross_entropy(
        hidden_ND,
        weight_VD,
        job.targets_N,
        job.coef_N,
        cfg.chunk_size,
        grad_in_forward=cfg.strategy != "chunked",
    )


def _plan_heads(
    labels_BS,
    n_heads,
    weights,
    denominators_K,
    depth_K,
    loss_scale,
    ce_of_head,
    document_ids_BS,
    index_K,
) -> list[_HeadJob]:
    """Per head: valid targets (at ``index_K``, the heads' :func:`valid_target_index`), weights
    (tensor or callable) and ``coef = w * d_k * scale / sum``."""
    jobs = []
    for k, index_N in zip(range(1, n_heads + 1), index_K, strict=True):
        targets_BT = head_targets(labels_BS, k, document_ids_BS)
        if callable(weights):
            ce_BT = ce_of_head(k, targets_BT, index_N)
            w_BT = torch.where(
                targets_BT != IGNORE_INDEX, weights(k, ce_BT, targets_BT).float(), 0.0
            )
        else:
            w_BT = head_weights(weights, targets_BT, k)
        weights_N = w_BT.reshape(-1).index_select(0, index_N)
        denom = denominators_K[k - 1] if denominators_K is not None else weights_N.sum()
        coef_N = weights_N * (depth_K[k - 1] * loss_scale / denom.clamp_min(1e-12))
        jobs.append(_HeadJob(k, index_N, targets_BT.reshape(-1)[index_N], weights_N, coef_N))
    return jobs


def _stats(jobs: list[_HeadJob], results) -> MTPStats:
    rows = []
    for job, (_, ce_N, correct_N) in zip(jobs, results, strict=True):
        rows.append(
            torch.stack(
                [
                    (job.weights_N * ce_N).sum(),
                    job.weights_N.sum(),
                    ce_N.sum(),
                    torch.full((), float(ce_N.numel()), device=ce_N.device),  # no copy: no wait
                    correct_N.sum().float(),
                ]
            )
        )
    return MTPStats.from_tensor(torch.stack(rows, dim=1).detach().float())


def loss_and_backward(
    model,
    input_ids_BS: torch.Tensor,
    labels_BS: torch.Tensor,
    *,
    n_heads: int,
    weights: torch.Tensor | HeadWeightFn | None = None,
    denominators_K: torch.Tensor | None = None,
    seq=None,
    config: MTPLossConfig = MTPLossConfig(),
    loss_scale: float = 1.0,
    backward: bool = True,
    valid_index_K: list[torch.Tensor] | None = None,
) -> MTPStats:
    """Compute the weighted MTP loss of one micro-batch and (unless ``backward=False``) its grads.

    ``model`` provides ``trunk``, ``head_hidden`` and ``output`` (LlamaMTP, possibly FSDP-wrapped).
    ``weights``: ``None`` (uniform), a ``weights_BS`` tensor of target-token weights, or a
    :data:`HeadWeightFn`. ``denominators_K``: per-head ``sum(w)`` over the *global* batch (all
    micro-batches and ranks, see :func:`weight_sums`); ``None`` normalises within this micro-batch.
    ``loss_scale`` multiplies the gradient (e.g. ``1 / grad_accum`` when normalising locally).
    ``valid_index_K``: the heads' :func:`valid_target_index`, already on the device (computed on
    the host, nothing here waits for the device); ``None`` computes them here.
    Returns the detached per-head sums; gradients accumulate into ``.grad`` as usual.
    """
    cfg = config
    sequential = cfg.strategy == "per_head" and not cfg.one_backward
    # on the host: its entries scale device tensors as scalars, and a copy to a GPU would wait
    depth_K = _depth_weights(cfg.depth_weights, n_heads, torch.device("cpu"))
    grad_ctx = contextlib.nullcontext() if backward else torch.no_grad()
    with grad_ctx:
        h_BSD = model.trunk(input_ids_BS, seq=seq)
        h_in = h_BSD.detach().requires_grad_(backward) if sequential else h_BSD

        def ce_of_head(k, targets_BT, index_N):
            with torch.no_grad():
                zero_N = torch.zeros(index_N.numel(), device=h_BSD.device)
                job = _HeadJob(k, index_N, targets_BT.reshape(-1)[index_N], zero_N, zero_N)
                _, ce_N, _ = _score_head(model, h_BSD, job, seq, cfg)
            ce_BT = torch.zeros(targets_BT.numel(), device=h_BSD.device)
            return ce_BT.index_copy(0, index_N, ce_N).view_as(targets_BT)

        doc_ids_BS = document_ids(seq, labels_BS)
        if valid_index_K is None:
            valid_index_K = valid_target_index(labels_BS, n_heads, doc_ids_BS)
        jobs = _plan_heads(
            labels_BS,
            n_heads,
            weights,
            denominators_K,
            depth_K,
            loss_scale,
            ce_of_head,
            doc_ids_BS,
            valid_index_K,
        )
        shared = None
        one_graph_per_head = cfg.strategy == "per_head" and cfg.one_backward
        if one_graph_per_head and backward and model.output.weight.requires_grad:
            shared = SharedWeightGradient(model.output.weight)
        results = []
        for job in jobs:
            if cfg.strategy == "chunked" and backward:
                out = checkpoint(_score_head, model, h_in, job, seq, cfg, use_reentrant=False)
            else:
                out = _score_head(model, h_in, job, seq, cfg, shared)
            if sequential and backward:
                out[0].backward()  # frees head k's graph; grad accumulates in h_in.grad
            results.append(out)
        if backward:
            _backward(sequential, h_BSD, h_in, [r[0] for r in results], shared)
    return _stats(jobs, results)


def _backward(sequential: bool, h_BSD, h_in, losses, shared: SharedWeightGradient | None):
    """The one backward of the single-graph strategies, or the trunk's after per-head ones."""
    if sequential:
        # Every rank runs the trunk backward, even when no head had a target here; none runs
        # it when the trunk trains nothing (LoRA on a model whose layers are all heads).
        grad_BSD = h_in.grad if h_in.grad is not None else torch.zeros_like(h_BSD)
        if h_BSD.requires_grad:
            h_BSD.backward(grad_BSD)
        return
    loss = torch.stack(losses).sum()
    if shared is not None:
        loss = loss + shared.hand_over()
    loss.backward()
