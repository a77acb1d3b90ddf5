"""Cross-entropy of ``hidden @ weight.T`` computed in blocks of tokens: the logits never exist whole.

``linear_cross_entropy(hidden_ND, weight_VD, targets_N, coef_N)`` returns
``(sum_n coef[n] * CE(hidden[n] @ weight.T, target[n]), ce_N, correct_N)``. It walks the tokens in
chunks so that only one ``[chunk, V]`` block of logits is alive, with two ways to get gradients:

- ``grad_in_forward=True`` (the default when gradients are needed and the call is not recomputed
  by activation checkpointing): each chunk's gradient is computed while its logits are at hand,
  the way fused linear-cross-entropy kernels do (Liger-Kernel, Apple's Cut Cross-Entropy). Per
  chunk: 1 matmul for the logits, 2 for the gradients; nothing is recomputed and nothing but the
  ``[N, D]`` and ``[V, D]`` gradients is kept until the backward, which only scales them.
- ``grad_in_forward=False``: the forward keeps hidden states and log-sum-exps; the backward
  recomputes each chunk's logits (4 matmuls per chunk in all). The right choice inside
  activation checkpointing, which discards the forward's results and runs it again.

Per chunk, the softmax statistics and the gradient ``(softmax - onehot) * coef`` read the bf16
logits and write the bf16 gradient in fused kernels (``torch.compile`` on CUDA; the same
functions run eagerly elsewhere). Softmax math is fp32 in both. The ``[V, D]`` weight gradient sums
the chunks in fp32 inside the matmul on CUDA (:func:`accumulate_matmul`); a gradient autograd does
not ask for (a frozen unembedding) is never computed.
"""

from __future__ import annotations

from functools import cache
from typing import Any

import torch

LOGITS_BLOCK_BYTES = 1 << 30
"""fp32-equivalent logits held at once when no chunk size is given (1 GiB)."""


def auto_chunk_size(vocab_size: int) -> int:
    """Target tokens per block so that one ``[chunk, V]`` fp32 logits block is ~1 GiB."""
    return max(256, LOGITS_BLOCK_BYTES // (4 * vocab_size))


# --- per-chunk math (fused by torch.compile on CUDA) --------------------------------------------


def chunk_stats(logits_CV: torch.Tensor, targets_C: torch.Tensor):
    """``(lse_C, ce_C, correct_C)`` of one block of logits, softmax in fp32."""
    logits_CV = logits_CV.float()
    lse_C = torch.logsumexp(logits_CV, dim=-1)
    ce_C = lse_C - logits_CV.gather(1, targets_C[:, None]).squeeze(1)
    return lse_C, ce_C, logits_CV.argmax(dim=-1) == targets_C


def chunk_grad(logits_CV, lse_C, targets_C, scale_C) -> torch.Tensor:
    """``d(sum scale * ce) / d logits = (softmax - onehot(target)) * scale``, in the logits' dtype."""
    probs_CV = torch.exp(logits_CV.float() - lse_C[:, None])
    vocab_V = torch.arange(logits_CV.shape[1], device=logits_CV.device)
    onehot_CV = (vocab_V[None, :] == targets_C[:, None]).float()
    return ((probs_CV - onehot_CV) * scale_C[:, None]).to(logits_CV.dtype)


def chunk_stats_and_grad(logits_CV, targets_C, scale_C):
    """Both of the above from one read of the logits (when compiled)."""
    lse_C, ce_C, correct_C = chunk_stats(logits_CV, targets_C)
    return lse_C, ce_C, correct_C, chunk_grad(logits_CV, lse_C, targets_C, scale_C)


@cache
def _compiled(fn):
    # dynamic: the last chunk's length changes with every batch's count of valid targets
    return torch.compile(fn, dynamic=True)


def kernel(fn, device: torch.device):
    """``fn`` compiled into fused kernels on CUDA; as written elsewhere."""
    return _compiled(fn) if device.type == "cuda" else fn


# --- the autograd function ------------------------------------------------------------------------


def _chunks(n: int, chunk_size: int):
    step = chunk_size or max(n, 1)
    for start in range(0, n, step):
        yield start, min(start + step, n)


class _LinearCrossEntropy(torch.autograd.Function):
    """``sum_n coef[n] * CE(hidden[n] @ weight.T, target[n])`` chunk by chunk (module docstring).

    Only the gradients that autograd asks for are computed: a frozen unembedding (LoRA) skips
    the ``[V, D]`` weight gradient, a third of the head's matmuls.
    """

    @staticmethod
    def forward(
        ctx: Any,
        hidden_ND,
        weight_VD,
        targets_N,
        coef_N,
        chunk_size,
        grad_in_forward,
        weight_grad_into=None,
    ):
        N = hidden_ND.shape[0]
        want_hidden, want_weight = ctx.needs_input_grad[:2]
        fused = (want_hidden or want_weight or weight_grad_into is not None) and grad_in_forward
        ce_N = hidden_ND.new_zeros(N, dtype=torch.float32)
        correct_N = torch.zeros(N, dtype=torch.bool, device=hidden_ND.device)
        lse_N = hidden_ND.new_empty(N, dtype=torch.float32)
        grads = None
        if fused:
            grads = _Grads(hidden_ND, weight_VD, want_hidden, want_weight, weight_grad_into)
        stats = kernel(chunk_stats_and_grad if fused else chunk_stats, hidden_ND.device)
        for s, e in _chunks(N, chunk_size):
            logits_CV = hidden_ND[s:e] @ weight_VD.T
            if fused:
                lse_N[s:e], ce_N[s:e], correct_N[s:e], grad_CV = stats(
                    logits_CV, targets_N[s:e], coef_N[s:e]
                )
                grads.add_chunk(s, e, grad_CV)
            else:
                lse_N[s:e], ce_N[s:e], correct_N[s:e] = stats(logits_CV, targets_N[s:e])
        loss = (coef_N * ce_N).sum()
        ctx.fused, ctx.chunk_size, ctx.weight_dtype = fused, chunk_size, weight_VD.dtype
        if fused:  # only the gradients wait for the backward (a shared weight gradient: not here)
            ctx.save_for_backward(grads.hidden, grads.weight if want_weight else None)
        elif want_hidden or want_weight:
            ctx.save_for_backward(hidden_ND, weight_VD, targets_N, coef_N, lse_N)
        ctx.mark_non_differentiable(ce_N, correct_N)
        return loss, ce_N, correct_N

    @staticmethod
    def backward(ctx: Any, grad_loss, _grad_ce, _grad_correct):
        if ctx.fused:
            d_hidden, d_weight = ctx.saved_tensors
            d_hidden = d_hidden * grad_loss.to(d_hidden.dtype) if d_hidden is not None else None
            d_weight = d_weight * grad_loss if d_weight is not None else None
        else:  # recompute each chunk's logits; grad_loss goes into the per-token scale
            hidden_ND, weight_VD, targets_N, coef_N, lse_N = ctx.saved_tensors
            grads = _Grads(hidden_ND, weight_VD, *ctx.needs_input_grad[:2])
            scale_N = coef_N * grad_loss
            grad_of = kernel(chunk_grad, hidden_ND.device)
            for s, e in _chunks(hidden_ND.shape[0], ctx.chunk_size):
                logits_CV = hidden_ND[s:e] @ weight_VD.T
                grads.add_chunk(s, e, grad_of(logits_CV, lse_N[s:e], targets_N[s:e], scale_N[s:e]))
            d_hidden, d_weight = grads.hidden, grads.weight
        d_weight = d_weight.to(ctx.weight_dtype) if d_weight is not None else None
        return d_hidden, d_weight, None, None, None, None, None


class _Grads:
    """The hidden and weight gradients (only those wanted), accumulated chunk by chunk."""

    def __init__(self, hidden_ND, weight_VD, want_hidden: bool, want_weight: bool, into=None):
        """``into``: an fp32 ``[V, D]`` buffer the weight gradient is added to (shared by calls)."""
        self._hidden_ND, self._weight_VD = hidden_ND, weight_VD
        self.hidden = torch.empty_like(hidden_ND) if want_hidden else None
        self.weight = into
        if want_weight and into is None:
            self.weight = torch.zeros(weight_VD.shape, dtype=torch.float32, device=weight_VD.device)

    def add_chunk(self, s: int, e: int, grad_CV: torch.Tensor) -> None:
        """Add ``d loss / d logits`` of rows ``s:e``."""
        if self.hidden is not None:
            self.hidden[s:e] = grad_CV @ self._weight_VD
        if self.weight is not None:
            accumulate_matmul(self.weight, grad_CV.T, self._hidden_ND[s:e])


def accumulate_matmul(acc_fp32: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> None:
    """``acc_fp32 += a @ b`` with the bf16/fp16 product accumulated in fp32 inside the matmul on
    CUDA (``out_dtype``): half the time of rounding the product to bf16 and adding it after
    (1.6 vs 3.2 ms for a [128k, 2048] gradient block on the H100), and no bf16 rounding."""
    if a.dtype == torch.float32:
        acc_fp32.addmm_(a, b)
    elif a.is_cuda:
        torch.addmm(acc_fp32, a, b, out_dtype=torch.float32, out=acc_fp32)
    else:  # CPU has no addmm with out_dtype
        acc_fp32 += (a @ b).float()


def linear_cross_entropy(
    hidden_ND: torch.Tensor,
    weight_VD: torch.Tensor,
    targets_N: torch.Tensor,
    coef_N: torch.Tensor,
    chunk_size: int | None = None,
    *,
    grad_in_forward: bool = True,
    weight_grad_into: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(sum(coef * ce), ce_N, correct_N)`` for valid targets only (no -100 here).

    ``ce_N`` (fp32) and ``correct_N`` (argmax == target) are detached statistics. ``chunk_size``
    ``None`` picks :func:`auto_chunk_size`, 0 one block; the same block size serves one head or n,
    so the peak memory of n heads stays that of one. ``grad_in_forward``: see the module
    docstring (pass False where activation checkpointing recomputes this call).

    ``weight_grad_into``: an fp32 ``[V, D]`` buffer (see :class:`SharedWeightGradient`) that the
    weight gradient is added to in the forward instead of reaching ``weight_VD`` through this
    call's backward; pass a detached weight then. Several heads in one graph share one buffer.
    """
    if weight_grad_into is not None:
        assert grad_in_forward, "a shared weight gradient is computed in the forward"
        assert not weight_VD.requires_grad, "pass a detached weight with weight_grad_into"
    if chunk_size is None:
        chunk_size = auto_chunk_size(weight_VD.shape[0])
    device_type = hidden_ND.device.type
    if torch.is_autocast_enabled(device_type):
        # Under autocast the unembedding matmuls run in the compute dtype (bf16): the final norm
        # hands over fp32 (its weight is an fp32 master), and an fp32 [N, D] x [D, V] product
        # would cost several times the bf16 one. Logits are still upcast before the softmax.
        compute = torch.get_autocast_dtype(device_type)
        hidden_ND, weight_VD = hidden_ND.to(compute), weight_VD.to(compute)
    weight_VD = weight_VD.to(hidden_ND.dtype)
    with torch.autocast(device_type, enabled=False):
        return _LinearCrossEntropy.apply(
            hidden_ND, weight_VD, targets_N, coef_N, chunk_size, grad_in_forward, weight_grad_into
        )


class SharedWeightGradient:
    """One fp32 weight gradient for several :func:`linear_cross_entropy` calls in one graph.

    Every head's forward adds its ``[V, D]`` unembedding gradient into :attr:`buffer`; the loss
    then adds :meth:`hand_over`'s zero scalar, whose backward gives ``buffer`` to the weight.
    Several heads in one backward thus hold one fp32 ``[V, D]`` gradient, not one each. Valid
    when every head's loss reaches the backward with the same incoming gradient as the scalar
    (their plain sum does).
    """

    def __init__(self, weight_VD: torch.Tensor) -> None:
        self.weight = weight_VD
        self.buffer = torch.zeros(weight_VD.shape, dtype=torch.float32, device=weight_VD.device)

    def hand_over(self) -> torch.Tensor:
        """A zero scalar to add to the loss; its backward sets the weight's gradient."""
        return _HandOver.apply(self.weight, self.buffer)


class _HandOver(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, weight_VD, buffer_VD):
        ctx.buffer, ctx.weight_dtype = buffer_VD, weight_VD.dtype  # filled after this call
        return weight_VD.new_zeros((), dtype=torch.float32)

    @staticmethod
    def backward(ctx: Any, grad):
        return ctx.buffer.mul_(grad).to(ctx.weight_dtype), None  # the buffer is done with
